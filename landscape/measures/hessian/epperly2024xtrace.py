"""The trace by XTrace (Epperly, Tropp & Webber 2024, "XTrace: making the most of every sample in
stochastic trace estimation"), the basic exchangeable estimator without the paper's normalisation
refinement.

With a budget of m products and s = ⌊m/2⌋ Rademacher vectors ω₁…ω_s, Y = AΩ = QR. For each i, the
low-rank approximation is built from the *other* columns, Qᵢ = orth(A Ω₋ᵢ), and ωᵢ estimates the
rest:

    tᵢ = tr(Qᵢᵀ A Qᵢ) + ωᵢᵀ (I − QᵢQᵢᵀ) A (I − QᵢQᵢᵀ) ωᵢ,     tr(A) ≈ mean(tᵢ),

each tᵢ unbiased (ωᵢ is independent of Qᵢ), the error estimate sd(tᵢ)/√s. No product more than
Y and Z = AQ is needed: Qᵢ = Q Uᵢ with Uᵢ an orthonormal basis of range(R₋ᵢ) (s × s algebra), and
with H = QᵀAQ, wᵢ = Qᵀωᵢ, rᵢ = R eᵢ = QᵀAωᵢ and cᵢ = UᵢUᵢᵀwᵢ:

    tr(QᵢᵀAQᵢ) = tr(UᵢᵀHUᵢ),   ωᵢᵀ(I − QᵢQᵢᵀ)A(I − QᵢQᵢᵀ)ωᵢ = wᵢᵀrᵢ − 2cᵢᵀrᵢ + cᵢᵀHcᵢ.

(Our derivation of the paper's estimator; its Algorithm 1 computes the same with rank-one
downdates and normalised test vectors.) Exact when rank(A) < s. Memory: Q, s weight-sized vectors
(a :class:`.basis.Basis`); Ω is drawn again from its seed, never stored.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from landscape.foundation.progress import tqdm

from landscape.measures.hessian.basis import BasisPolicy
from landscape.measures.hessian.hutchinson1989 import Trace
from landscape.measures.hessian.meyer2021hutchpp import sketch
from landscape.measures.hessian.operator import Counted, rademacher


def xtrace(op, hvps: int = 30, seed: int = 0, progress: bool = False, basis: BasisPolicy | None = None) -> Trace:
    """tr(A) ± standard error from ``hvps`` products (see module docstring)."""
    if hvps < 4:
        raise ValueError(f"XTrace needs at least 4 products, got {hvps}")
    op = Counted(op)
    s = hvps // 2
    bar = tqdm(total=2 * s, desc="trace (xtrace)", disable=not progress, leave=False)
    g = torch.Generator().manual_seed(seed)
    Q, R = sketch(op, [lambda: rademacher(op, g)] * s, basis, bar)
    try:
        q = len(Q)
        H = np.zeros((q, q))
        for j in range(q):
            H[:, j] = Q.project(op.matvec(Q.row(j)))
            bar.update(1)
        H = (H + H.T) / 2
        g = torch.Generator().manual_seed(seed)  # Ω again, from its seed
        W = np.stack([Q.project(rademacher(op, g)) for _ in range(s)], axis=1)
    finally:
        Q.close()
        bar.close()
    est = [_leave_one_out(H, R, W, i) for i in range(s)]
    a = np.asarray(est)
    return Trace(float(a.mean()), float(a.std(ddof=1) / math.sqrt(s)), s, op.calls, est, method="xtrace")


def _leave_one_out(H, R, W, i) -> float:
    """tᵢ of the module docstring, from the small matrices alone."""
    rest = np.delete(R, i, axis=1)
    U, sv, _ = np.linalg.svd(rest, full_matrices=False)
    U = U[:, sv > 1e-12 * max(1.0, float(sv.max()) if sv.size else 1.0)]
    w, r = W[:, i], R[:, i]
    c = U @ (U.T @ w)
    return float(np.trace(U.T @ H @ U) + w @ r - 2 * c @ r + c @ H @ c)
