"""The trace by Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1).

With a budget of m products: s = ⌊m/3⌋ Rademacher vectors S give Q = orth(A S); the trace of the
low-rank part is computed exactly, the rest by Hutchinson on the deflated operator with the
remaining g = m − 2s Rademacher vectors G:

    tr(A) ≈ tr(Qᵀ A Q) + (1/g) Σᵢ gᵢᵀ (I − QQᵀ) A (I − QQᵀ) gᵢ.

Unbiased; exact when rank(A) ≤ s; variance O(1/m²) instead of Hutchinson's O(1/m) when the
spectrum decays fast, but no better (and with a third of the probes) on a flat spectrum. The
reported standard error is that of the Hutchinson part (sample sd / √g; Q's part is exact given Q).

Memory: Q, s weight-sized vectors, in a :class:`.basis.Basis` (in memory or on disk, see there).
Check: exact on a low-rank matrix, unbiased on a full one, exact for a tiny transformer's dense
Hessian once s ≥ n (tests/test_hessian.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from landscape.foundation.progress import tqdm

from landscape.measures.hessian.basis import Basis, BasisPolicy, choose_basis
from landscape.measures.hessian.hutchinson1989 import Trace
from landscape.measures.hessian.operator import Counted, dot, norm, rademacher, sharded


def sketch(op, vectors, policy: BasisPolicy | None, bar) -> tuple[Basis, np.ndarray]:
    """Q = orth(A·Ω) by Gram–Schmidt (twice) over the columns ω of ``vectors``, and R (Q R = A Ω):
    columns whose image is dependent on the earlier ones add no vector to Q."""
    vectors = list(vectors)
    s = len(vectors)
    cap, where = choose_basis(op, dataclasses.replace(policy or BasisPolicy(), max_basis=s), 0, s)
    Q = Basis(op.shape[0], cap, op.dtype, op.device, where, (policy or BasisPolicy()).directory, sharded(op))
    R = np.zeros((s, s))
    scale = 0.0
    for i, omega in enumerate(vectors):
        y = op.matvec(omega())
        bar.update(1)
        h = Q.orthogonalize(y)
        r = norm(y, sharded(op))
        R[:len(h), i] = h
        scale = max(scale, r)
        if r > 1e-10 * scale:
            R[len(Q), i] = r
            Q.append(y / r)
    return Q, R[:len(Q)]


def hutchpp_trace(op, hvps: int = 30, seed: int = 0, progress: bool = False,
                  basis: BasisPolicy | None = None) -> Trace:
    """tr(A) ± standard error from ``hvps`` products (see module docstring)."""
    if hvps < 3:
        raise ValueError(f"Hutch++ needs at least 3 products, got {hvps}")
    op = Counted(op)
    s = hvps // 3
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=hvps, desc="trace (hutch++)", disable=not progress, leave=False)
    Q, _ = sketch(op, [lambda: rademacher(op, g)] * s, basis, bar)
    try:
        low = 0.0
        for i in range(len(Q)):
            qi = Q.row(i)
            low += dot(qi, op.matvec(qi), sharded(op))
            bar.update(1)
        est = []
        while op.calls < hvps:
            z = rademacher(op, g)
            Q.orthogonalize(z)
            est.append(dot(z, op.matvec(z), sharded(op)))
            bar.update(1)
    finally:
        Q.close()
        bar.close()
    a = np.asarray(est)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return Trace(low + float(a.mean()), se, len(a), op.calls, [low + x for x in est], method="hutchpp")
