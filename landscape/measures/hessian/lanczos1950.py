"""Extreme eigenvalues by the Lanczos iteration (Lanczos 1950) with full reorthogonalisation (Paige 1972).

From a seeded random unit q₁, the recurrence builds an orthonormal Krylov basis Q = [q₁ … q_m] with
T = QᵀAQ tridiagonal (α on the diagonal, β off it). A Ritz pair (θᵢ, yᵢ = Q sᵢ) of T has the exact
residual ‖A yᵢ − θᵢ yᵢ‖ = |β_m · sᵢ[m]|, so a wanted pair is accepted only when that residual is at
most tol·|θᵢ| — not merely when θ stops changing. ``lambda_max`` is the largest *algebraic*
eigenvalue (the sharpness), ``lambda_min`` the smallest; unlike PyHessian's "top eigenvalue" neither
is chosen by magnitude.

Memory: the basis, one vector of length n per step — 0.54 GB per step for a 135M-parameter
model. It is bounded: at most ``max_basis`` vectors (default: as many as fit in half the free
memory of the operator's device, at least 4). A run that fills the basis without converging
restarts (explicit restart, as in Saad's "Numerical methods for large eigenvalue problems" §4.3)
from the normalised sum of the wanted Ritz vectors, so that the next Krylov space starts rich in
every wanted direction; the residual test stays the stopping rule, and ``restarts`` says how often
it happened. Check: on ``DenseOperator(A)`` the values equal ``torch.linalg.eigvalsh(A)`` to the
tolerance, with and without restarts (tests/test_hessian.py).
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
    restarts: int = 0  # Lanczos: times the bounded basis was full and the run restarted
    max_basis: int | None = None  # Lanczos: the most basis vectors held at once

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("eigenvalues", "lambda_max", "lambda_min", "residuals",
                                              "residual_min", "converged", "hvps", "iterations", "method",
                                              "restarts", "max_basis")}


def lanczos_steps(op, seed: int, max_steps: int, start: torch.Tensor | None = None):
    """The Lanczos recurrence with full reorthogonalisation, from ``start`` (a unit vector) or a
    seeded random unit vector.

    Yields ``(alphas, betas, beta, Q)`` after each step: T = tridiag(betas, alphas, betas) is QᵀAQ
    for the basis Q built so far, and ``beta`` the norm of the next (unnormalised) residual vector.
    Stops early at an invariant subspace (beta ≈ 0). Memory: one vector per step.
    """
    # Every dot and norm is accurate at any length (operator.dot): float32 reductions over
    # millions of entries would cost the basis its orthogonality and the residual test its meaning.
    q = start if start is not None else random_unit(op, torch.Generator().manual_seed(seed))
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
        yield alphas, betas, beta, Q
        if beta < 1e-10 * max(1.0, max(abs(x) for x in alphas)):
            return
        betas.append(beta)
        q = w / beta


def ritz(alphas, betas):
    """Eigen-decomposition of the tridiagonal T: ascending θ, eigenvectors s as columns."""
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    return np.linalg.eigh(T)


def basis_budget(op, fraction: float = 0.5) -> int | None:
    """How many basis vectors fit in ``fraction`` of the free memory of the operator's device."""
    from landscape.foundation.params import free_memory

    free = free_memory(op.device)
    if free is None:
        return None
    return int(fraction * free // (op.shape[0] * torch.empty((), dtype=op.dtype).element_size()))


def lanczos(op, k: int = 1, max_iter: int = 100, tol: float = 1e-4, seed: int = 0, want_min: bool = True,
            progress: bool = False, max_basis: int | None = None) -> Spectrum:
    """Top-``k`` (and, with ``want_min``, the smallest) eigenvalues of the operator, in at most
    ``max_iter`` products with at most ``max_basis`` basis vectors held at once."""
    op = Counted(op)
    if max_basis is None:
        max_basis = basis_budget(op) or max_iter
    max_basis = max(max_basis, k + 3)  # room for the wanted pairs and a little Krylov space
    history: list[float] = []
    bar = tqdm(total=max_iter, desc="lanczos", disable=not progress, leave=False)
    start, restarts, held = None, -1, 0
    while op.calls < max_iter:
        restarts += 1
        done, state = _lanczos_run(op, seed, min(max_basis, max_iter - op.calls), start, (k, want_min, tol),
                                   (history, bar))
        theta, res, n_steps, Q, s = state
        held = max(held, n_steps)
        if done:
            break
        start = _restart_vector(Q, s, k, want_min)
        del Q, state  # the old basis goes before the new one is built
    bar.close()
    top = list(range(len(theta) - 1, max(-1, len(theta) - 1 - k), -1))
    return Spectrum(
        eigenvalues=[float(theta[i]) for i in top], lambda_max=float(theta[-1]),
        lambda_min=float(theta[0]) if want_min else None,
        residuals=[float(res[i]) for i in top], residual_min=float(res[0]) if want_min else None,
        converged=bool(done), hvps=op.calls, iterations=op.calls, method="lanczos", history=history,
        restarts=restarts, max_basis=held,
    )


def _wanted(n: int, k: int, want_min: bool) -> list[int]:
    return list(range(n - min(k, n), n)) + ([0] if want_min else [])


def _lanczos_run(op, seed, steps, start, want, log):
    """One Lanczos run of at most ``steps`` steps; (converged, (θ, residuals, steps, Q, S))."""
    k, want_min, tol = want
    history, bar = log
    for alphas, betas, beta, Q in lanczos_steps(op, seed, steps, start):
        theta, s = ritz(alphas, betas)
        res = np.abs(beta * s[-1, :])
        history.append(float(theta[-1]))
        bar.update(1)
        wanted = _wanted(len(theta), k, want_min)
        if len(theta) >= k and np.all(res[wanted] <= tol * np.maximum(np.abs(theta[wanted]), 1e-12)):
            return True, (theta, res, len(alphas), Q, s)
    invariant = len(alphas) < steps  # stopped early at an invariant subspace: the Ritz values are exact
    return invariant, (theta, res, len(alphas), Q, s)


def _restart_vector(Q, s, k: int, want_min: bool) -> torch.Tensor:
    """The normalised sum of the wanted Ritz vectors y_i = Q s_i (built in place of one new vector)."""
    coef = s[:, _wanted(s.shape[1], k, want_min)].sum(axis=1)  # Σ_i s_i: one coefficient per basis vector
    v = torch.zeros_like(Q[0])
    for c, q in zip(coef, Q):
        v.add_(q, alpha=float(c))
    return v / norm(v)
