"""Extreme eigenvalues by the plain Lanczos recurrence, without reorthogonalisation, with three
weight-sized vectors whatever the number of steps (Cullum & Willoughby 1985, "Lanczos algorithms for
large symmetric eigenvalue computations", vol. 1; Paige 1976/1980 for the theory).

Why it is right without a basis: in finite precision the Lanczos vectors lose orthogonality exactly
as Ritz values converge (Paige), and the effect on T = tridiag(β, α, β) is that converged
eigenvalues reappear as further Ritz values — "ghost" copies of the same eigenvalue — while every
Ritz value θ with a small residual estimate β·|s[last]| is within that estimate (plus O(ε‖A‖)) of an
eigenvalue of A. So eigenvalues are read off T as in exact arithmetic once copies are merged:

- a Ritz value is *converged* when β·|s[last]| ≤ tol·|θ| (the same test as with a basis);
- two converged values within their error bars (|θ − θ'| ≤ 2(r + r') + tol·|θ|) are one eigenvalue;
- the top-k answer is accepted only when every Ritz value above the k-th distinct converged one is
  itself converged (a copy still forming blocks acceptance until it has converged: this costs
  products, never a wrong answer); λ_min likewise at the bottom.

A genuine multiple eigenvalue shows once, as with any single-vector Lanczos. The three vectors are
kept in float64 (the products run in the operator's dtype): a float32 recurrence lets copies drift
by ~1e-5 relative. Cost: more products than with full reorthogonalisation (copies take steps), no
reorthogonalisation work, no basis: 3.2 GB of vectors for a 135M-parameter model instead of
0.54 GB per step. Check: equal to
``torch.linalg.eigvalsh`` on dense matrices and a tiny transformer's dense Hessian, and to the
full-basis run on a 4.2M float32 operator (tests/test_scale.py).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from tqdm.auto import tqdm

from landscape.measures.hessian.operator import dot, norm, random_unit


def plain_lanczos(op, k: int, max_iter: int, tol: float, seed: int, want_min: bool, progress: bool):
    """Spectrum of ``op`` (already :class:`~.operator.Counted`) by the three-vector recurrence."""
    from landscape.measures.hessian.lanczos1950 import Spectrum

    # The recurrence's three vectors are float64 whatever the operator's dtype: in float32 its
    # rounding makes converged copies disagree by ~1e-5 and lie above λ_max (measured on a 4.2M
    # diagonal: 10.00011 for 10); in float64 the error is the HVP's own (7e-8 there).
    wide = torch.promote_types(op.dtype, torch.float64)
    q = random_unit(op, torch.Generator().manual_seed(seed)).to(wide)
    q = q / norm(q)
    q_prev = None
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    bar = tqdm(total=max_iter, desc="lanczos (no basis)", disable=not progress, leave=False)
    found, converged = None, False
    try:
        while op.calls < max_iter:
            w = op.matvec(q.to(op.dtype)).to(wide)
            if q_prev is not None:
                w.sub_(q_prev, alpha=betas[-1])
            a = dot(w, q)
            w.sub_(q, alpha=a)
            a2 = dot(w, q)  # local reorthogonalisation against q only (one dot, one axpy)
            w.sub_(q, alpha=a2)
            alphas.append(a + a2)
            beta = norm(w)
            theta, last = _ritz(alphas, betas)
            res = np.abs(beta * last)
            history.append(float(theta[-1]))
            bar.update(1)
            found = _accept(theta, res, k, want_min, tol)
            if found[0] or beta < 1e-10 * max(1.0, float(np.abs(theta).max())):
                converged = True
                break
            betas.append(beta)
            q_prev, q = q, w / beta
    finally:
        bar.close()
    _, top, bottom = found
    return Spectrum(eigenvalues=[t for t, _ in top], lambda_max=top[0][0],
                    lambda_min=bottom[0] if want_min else None, residuals=[r for _, r in top],
                    residual_min=bottom[1] if want_min else None, converged=converged, hvps=op.calls,
                    iterations=op.calls, method="lanczos", history=history,
                    basis={"where": "none", "capacity": 3, "bytes": 3 * op.shape[0] * q.element_size()})


def _ritz(alphas, betas):
    """Ritz values (ascending) and the last components of T's eigenvectors."""
    if len(alphas) == 1:
        return np.array(alphas), np.ones(1)
    theta, s = eigh_tridiagonal(np.asarray(alphas), np.asarray(betas))
    return theta, s[-1, :]


def _accept(theta, res, k: int, want_min: bool, tol: float):
    """(done, top-k [(θ, r)] distinct, (θ_min, r_min)) by the rules of the module docstring."""
    conv = res <= tol * np.maximum(np.abs(theta), 1e-12)
    top: list[tuple[float, float]] = []
    done = True
    for i in range(len(theta) - 1, -1, -1):
        if len(top) == k:
            break
        if conv[i] and any(_same(t, (theta[i], res[i]), tol) for t in top):
            continue  # a converged copy ("ghost") of an eigenvalue already accepted
        done = done and bool(conv[i])
        top.append((float(theta[i]), float(res[i])))
    bottom = (float(theta[0]), float(res[0]))
    if want_min:
        done = done and bool(conv[0])
    return done and len(top) == k, top, bottom


def _same(a, b, tol: float) -> bool:
    return abs(a[0] - b[0]) <= 2 * (a[1] + b[1]) + tol * abs(a[0])
