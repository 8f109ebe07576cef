"""Extreme eigenvalues by the Lanczos iteration (Lanczos 1950) with full reorthogonalisation (Paige 1972).

From a seeded random unit q₁, the recurrence builds an orthonormal Krylov basis Q = [q₁ … q_m] with
T = QᵀAQ tridiagonal (α on the diagonal, β off it). A Ritz pair (θᵢ, yᵢ = Q sᵢ) of T has the exact
residual ‖A yᵢ − θᵢ yᵢ‖ = |β_m · sᵢ[m]|, so a wanted pair is accepted only when that residual is at
most tol·|θᵢ| — not merely when θ stops changing. ``lambda_max`` is the largest *algebraic*
eigenvalue (the sharpness), ``lambda_min`` the smallest; unlike PyHessian's "top eigenvalue" neither
is chosen by magnitude.

Memory: m vectors of length n (the basis). Check: on ``DenseOperator(A)`` the values equal
``torch.linalg.eigvalsh(A)`` to the tolerance (tests/test_hessian.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from landscape.measures.hessian.operator import Counted, dot, norm, random_unit


@dataclass
class Spectrum:
    """Extreme eigenvalues from one estimator."""

    eigenvalues: list[float]  # top-k, algebraically largest first
    lambda_max: float
    lambda_min: float | None
    residuals: list[float]  # ‖Ay − θy‖ for each of ``eigenvalues``
    residual_min: float | None
    converged: bool
    hvps: int  # products this estimator spent
    iterations: int
    method: str
    history: list[float] = field(default_factory=list)  # λ_max estimate after each product

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("eigenvalues", "lambda_max", "lambda_min", "residuals",
                                              "residual_min", "converged", "hvps", "iterations", "method")}


def lanczos_steps(op, seed: int, max_steps: int):
    """The Lanczos recurrence with full reorthogonalisation, from a seeded random unit vector.

    Yields ``(alphas, betas, beta)`` after each step: T = tridiag(betas, alphas, betas) is QᵀAQ for
    the basis built so far, and ``beta`` the norm of the next (unnormalised) residual vector.
    Stops early at an invariant subspace (beta ≈ 0). Memory: one vector per step.
    """
    g = torch.Generator().manual_seed(seed)
    # Every dot and norm is accurate at any length (operator.dot): float32 reductions over
    # millions of entries would cost the basis its orthogonality and the residual test its meaning.
    q = random_unit(op, g)
    Q: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(max_steps):
        Q.append(q)
        w = op.matvec(q)
        alphas.append(dot(w, q))
        for _ in range(2):  # reorthogonalise twice ("twice is enough", Parlett)
            for qi in Q:
                w.add_(qi, alpha=-dot(w, qi))
        beta = norm(w)
        yield alphas, betas, beta
        if beta < 1e-10 * max(1.0, max(abs(x) for x in alphas)):
            return
        betas.append(beta)
        q = w / beta


def ritz(alphas, betas):
    """Eigen-decomposition of the tridiagonal T: ascending θ, eigenvectors s as columns."""
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    return np.linalg.eigh(T)


def lanczos(op, k: int = 1, max_iter: int = 100, tol: float = 1e-4, seed: int = 0, want_min: bool = True,
            progress: bool = False) -> Spectrum:
    """Top-``k`` (and, with ``want_min``, the smallest) eigenvalues of the operator."""
    op = Counted(op)
    history: list[float] = []
    converged = False
    bar = tqdm(total=max_iter, desc="lanczos", disable=not progress, leave=False)
    for alphas, betas, beta in lanczos_steps(op, seed, max_iter):
        theta, s = ritz(alphas, betas)
        res = np.abs(beta * s[-1, :])
        history.append(float(theta[-1]))
        bar.update(1)
        kk = min(k, len(theta))
        wanted = list(range(len(theta) - kk, len(theta))) + ([0] if want_min else [])
        if len(theta) >= k and np.all(res[wanted] <= tol * np.maximum(np.abs(theta[wanted]), 1e-12)):
            converged = True
            break
    bar.close()
    converged |= len(alphas) < max_iter  # stopped at an invariant subspace: the Ritz values are exact
    top = list(range(len(theta) - 1, max(-1, len(theta) - 1 - k), -1))
    return Spectrum(
        eigenvalues=[float(theta[i]) for i in top], lambda_max=float(theta[-1]),
        lambda_min=float(theta[0]) if want_min else None,
        residuals=[float(res[i]) for i in top], residual_min=float(res[0]) if want_min else None,
        converged=converged, hvps=op.calls, iterations=len(alphas), method="lanczos", history=history,
    )
