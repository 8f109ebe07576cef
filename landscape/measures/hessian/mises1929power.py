"""Top algebraic eigenvalues by deflated power iteration (von Mises & Pollaczek-Geiringer 1929),
made correct for indefinite operators.

Plain power iteration finds the eigenvalue of largest *magnitude*, which may be negative (the
mistake behind PyHessian's "top eigenvalue"). So: (1) power on A gives λ_a; (2) if λ_a < 0 it is
λ_min, else power on A − λ_a·I gives λ_min; (3) with σ = min(λ_min, 0), A − σI is positive
semi-definite and its top-k by deflated power iteration are A's top-k algebraic eigenvalues plus −σ.
Every run stops on the residual ‖Av − θv‖ ≤ tol·|θ|.

Memory: k + 3 vectors. Check: on ``DenseOperator`` of an indefinite matrix whose largest-magnitude
eigenvalue is negative, λ_max is still the largest algebraic one (tests/test_hessian.py).
"""

from __future__ import annotations

import torch
from landscape.foundation.progress import tqdm

from landscape.measures.hessian.lanczos1950 import Spectrum
from landscape.measures.hessian.operator import Counted, dot, norm, random_unit, sharded


def _power(op, shift: float, deflate: list, g, max_iter: int, tol: float, history: list):
    """Power iteration on A − shift·I with deflation of found (λ, u); returns (θ of A, v, residual, it)."""
    v = random_unit(op, g)
    theta, res, it, split = 0.0, float("inf"), 0, sharded(op)
    for it in range(1, max_iter + 1):
        av = op.matvec(v) - shift * v
        for lam, u in deflate:
            av = av - (lam - shift) * dot(u, v, split) * u
        mu = dot(av, v, split)  # Rayleigh quotient of A − shift·I at the unit v
        theta = mu + shift
        res = norm(av - mu * v, split)  # ‖(A_defl − θ I) v‖
        history.append(theta)
        if res <= tol * max(abs(theta), 1e-12):
            break
        n = norm(av, split)
        if n == 0.0:
            break
        v = av / n
    return theta, v, res, it


def power_iteration(op, k: int = 1, max_iter: int = 200, tol: float = 1e-4, seed: int = 0,
                    want_min: bool = True, progress: bool = False) -> Spectrum:
    """Top-``k`` algebraic eigenvalues (and λ_min) of a symmetric operator; see the module docstring."""
    op = Counted(op)
    g = torch.Generator().manual_seed(seed)
    history: list[float] = []
    lam_a, _, res_a, iters = _power(op, 0.0, [], g, max_iter, tol, history)
    if lam_a < 0:  # the largest-magnitude eigenvalue is λ_min: converged only if its own run was
        lam_min, res_min = lam_a, res_a
    else:
        lam_min, _, res_min, it = _power(op, lam_a, [], g, max_iter, tol, history)
        iters += it
    converged = res_min <= tol * max(abs(lam_min), 1e-12)
    sigma = min(lam_min, 0.0)
    found: list = []
    residuals = []
    for _ in tqdm(range(k), desc="power", disable=not progress, leave=False):
        theta, v, res, it = _power(op, sigma, found, g, max_iter, tol, history)
        iters += it
        converged &= res <= tol * max(abs(theta), 1e-12)
        found.append((theta, v))
        residuals.append(res)
    eig = sorted((t for t, _ in found), reverse=True)
    return Spectrum(eigenvalues=eig, lambda_max=eig[0], lambda_min=lam_min if want_min else None,
                    residuals=residuals, residual_min=res_min, converged=converged, hvps=op.calls,
                    iterations=iters, method="power", history=history)
