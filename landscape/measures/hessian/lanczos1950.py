"""Extreme eigenvalues by the Lanczos iteration (Lanczos 1950) with full reorthogonalisation
(Paige 1972) and, when the basis is bounded, thick restarts (Wu & Simon 2000).

From a seeded random unit q₁, each step applies the operator to the newest basis vector, removes the
three-term recurrence's components (α qⱼ + β qⱼ₋₁) and then, once more, every component on the basis
(a second pass when the first cancelled more than 1/√2 of the norm: Daniel–Gragg–Kaufman–Stewart).
T = QᵀAQ is kept as a small dense matrix. A Ritz pair (θᵢ, yᵢ = Q sᵢ) of T has the exact residual
‖A yᵢ − θᵢ yᵢ‖ = β·|sᵢ[last]|, so a wanted pair is accepted only when that residual is at most
tol·|θᵢ| — not merely when θ stops changing. ``lambda_max`` is the largest *algebraic* eigenvalue
(the sharpness), ``lambda_min`` the smallest; unlike PyHessian's "top eigenvalue" neither is chosen
by magnitude.

Memory: the basis, one vector of length n per step — 0.54 GB per step for a 135M-parameter model.
It is bounded (:mod:`.basis`): at most ``max_basis`` vectors, in memory or in a temporary file.
When it is full and the wanted pairs have not converged, the run *thick-restarts*: the basis is
replaced, in place, by the Ritz vectors nearest the wanted ends (the wanted ones and about a third
of the basis more) plus the current residual direction; T becomes diag(θ) bordered by the residual
couplings β·sᵢ[last], and the recurrence goes on. Nothing is thrown away that the wanted pairs
need, so a restarted run converges to the same values as an unbounded one (tested), in a few more
products. ``restarts`` says how often it happened, ``basis`` where the vectors lived.

When the whole run's basis does not fit the budget, a top-k with λ_min runs as two solves: the top
k with the smallest thick-restart basis (k + 3 vectors: the k wanted Ritz vectors and one more are
kept, two new Krylov vectors per cycle), then λ_min alone by the two-vector recurrence of
:mod:`.cullum1985plain` on −A (as safe as λ_max there: no copies to tell apart). On SmolLM2-135M,
top-5 then holds 8 vectors (4.3 GB) instead of 10–14, within twice the footprint of one HVP, for
more products (restarts every two steps).

Check: on ``DenseOperator(A)`` the values equal ``torch.linalg.eigvalsh(A)`` to the tolerance, with
and without restarts, in memory and on disk (tests/test_hessian.py); on a 4.2M-parameter model the
float32 values equal float64 ARPACK's to 1e-5 (tests/test_scale.py, slow tier).
"""

from __future__ import annotations

import numpy as np
import torch
from landscape.foundation.progress import tqdm

from landscape.measures.hessian.basis import Basis, BasisPolicy, OnDisk, choose_basis, resolve_reorth
from landscape.measures.hessian.cullum1985plain import linearity_defect, plain_lanczos
from landscape.measures.hessian.spectrum import Spectrum
from landscape.measures.hessian.operator import Counted, dot, norm, random_unit, sharded


def ritz(T: np.ndarray):
    """Eigen-decomposition of the small symmetric T: ascending θ, eigenvectors s as columns."""
    return np.linalg.eigh(T)


def tridiagonal(alphas, betas) -> np.ndarray:
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


def error_bounds(theta: np.ndarray, res: np.ndarray) -> np.ndarray:
    """Bounds on |θᵢ − λ| for each Ritz value: min(rᵢ, rᵢ²/gapᵢ) (Kato 1949, Temple 1929; Parlett,
    "The symmetric eigenvalue problem", §11-7), with gapᵢ = minⱼ≠ᵢ (|θᵢ − θⱼ| − rⱼ) the distance
    to the rest of the spectrum as the other Ritz values bracket it (each within its residual of
    an eigenvalue). Where that gap is not positive, the residual alone. The bound assumes no
    eigenvalue between θᵢ and its Ritz neighbours is still unfound — the same assumption the
    residual test makes about *which* eigenvalue θᵢ approximates."""
    out = res.astype(float).copy()
    if len(theta) < 2:
        return out
    for i in range(len(theta)):
        others = np.delete(np.arange(len(theta)), i)
        gap = float(np.min(np.abs(theta[i] - theta[others]) - res[others]))
        if gap > 0:
            out[i] = min(res[i], res[i] ** 2 / gap)
    return out


def lanczos(op, k: int = 1, max_iter: int = 100, tol: float = 1e-4, seed: int = 0, want_min: bool = True,
            progress: bool = False, basis: BasisPolicy | None = None) -> Spectrum:
    """Top-``k`` (and, with ``want_min``, the smallest) eigenvalues of the operator, in at most
    ``max_iter`` products, with the basis bounded by ``basis`` (see :mod:`.basis`); without a
    basis (``basis.reorth`` "none", or "auto" when it would not fit in memory) the two-vector
    recurrence of :mod:`.cullum1985plain` — with ``basis.where`` "disk" there, its q vector on disk.

    A top-k (k > 1) with λ_min whose whole basis does not fit the budget (``reorth`` "auto") is
    split: the top k with a thick-restarted basis of k + 3 vectors, then λ_min alone, like λ_max,
    without a basis (two vectors) — the smallest footprint that gives correct top-k values.

    ``basis.stop``: "residual" accepts a wanted pair when its residual is ≤ tol·|θ|; "eigenvalue" when the
    bound on its eigenvalue's error (:func:`error_bounds`, ~r²/gap) is — the eigenvalue, not the
    eigenvector, is what was asked to ``tol``, and it converges twice as fast. Basis-free runs keep
    the residual test (their ghost copies leave no gap to measure)."""
    op = Counted(op)
    policy = basis or BasisPolicy()
    if policy.stop not in ("residual", "eigenvalue"):
        raise ValueError(f"stop must be residual or eigenvalue, not {policy.stop!r}")
    wanted = k + int(want_min)
    if resolve_reorth(op, policy, wanted, max_iter) == "none":
        # basis-free with where="disk": q on disk, one weight-sized vector in memory (same numbers)
        return plain_lanczos(op, k, max_iter, tol, seed, want_min, progress,
                             disk=OnDisk(policy.directory) if policy.where == "disk" else None)
    if want_min and k > 1 and _split(op, policy, wanted, max_iter):
        top = _thick(op, k, max_iter, tol, seed, False, progress, policy)
        neg = Counted(_Negated(op.op))
        low = plain_lanczos(neg, 1, max(1, max_iter - top.hvps), tol, seed, False, progress)
        return _joined(top, low)
    return _thick(op, k, max_iter, tol, seed, want_min, progress, policy)


def _thick(op, k, max_iter, tol, seed, want_min, progress, policy) -> Spectrum:
    # inexact products (finite differences): measure their own error first, and stop no later than a
    # residual at that level — as the basis-free recurrence does; below it a residual means nothing,
    # and an eigenvalue near 0 would never meet tol·|θ| (three products, before the basis exists)
    eta = linearity_defect(op, seed) if _inexact(op) else None
    run = _ThickRestart(op, k, want_min, tol, policy)
    run.eta, run.skip = eta, op.calls
    bar = tqdm(total=max_iter, desc="lanczos", disable=not progress, leave=False)
    try:
        converged = run.iterate(random_unit(op, torch.Generator().manual_seed(seed)), max_iter, bar)
    finally:
        run.close()
        bar.close()
    return run.spectrum(converged)


def _inexact(op) -> bool:
    """Products formed by finite differences (an operator's ``method``, through any wrappers)."""
    while op is not None:
        if getattr(op, "method", None) == "fd":
            return True
        op = getattr(op, "op", None)
    return False


def _split(op, policy: BasisPolicy, wanted: int, max_iter: int) -> bool:
    """Whether a top-k + λ_min solve runs as two (see :func:`lanczos`): only when nothing was asked
    explicitly and the whole run's basis would not fit the budget."""
    if policy.reorth != "auto" or policy.where != "auto" or policy.max_basis:
        return False
    return choose_basis(op, policy, wanted, max_iter)[0] < min(max_iter, op.shape[0] + 1)


class _Negated:
    """−A: its largest eigenvalue is −λ_min(A)."""

    def __init__(self, op):
        self.op = op
        self.shape, self.dtype, self.device, self.blocks = op.shape, op.dtype, op.device, op.blocks
        self.sharded = sharded(op)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.matvec(v).neg_()


def _joined(top: Spectrum, low: Spectrum) -> Spectrum:
    """The top-k solve's spectrum with λ_min from the basis-free solve on −A."""
    return Spectrum(
        eigenvalues=top.eigenvalues, lambda_max=top.lambda_max, lambda_min=-low.lambda_max,
        residuals=top.residuals, residual_min=low.residuals[0], converged=top.converged and low.converged,
        hvps=top.hvps + low.hvps, iterations=top.iterations + low.iterations, method="lanczos",
        history=top.history, restarts=top.restarts, max_basis=top.max_basis,
        basis={**(top.basis or {}), "lambda_min": "no basis (two vectors)"}, noise=low.noise, stop=top.stop,
        error_bounds=top.error_bounds)


def _wanted(n: int, k: int, want_min: bool) -> list[int]:
    return list(range(n - min(k, n), n)) + ([0] if want_min and n > k else [])


def _keep(n: int, k: int, want_min: bool, m: int) -> list[int]:
    """Ritz indices (ascending θ) a thick restart keeps: the wanted ends and ~a third of the basis more."""
    extra = max(1, (m - k - int(want_min) - 2) // 3)
    top = list(range(max(0, n - k - extra), n))
    bottom = list(range(0, min(n, 1 + extra // 2))) if want_min else []
    return sorted(set(bottom + top))


class _ThickRestart:
    """The state of one Lanczos solve: basis Q, projected T, newest vector q (see module docstring)."""

    def __init__(self, op, k, want_min, tol, policy: BasisPolicy):
        self.op, self.k, self.want_min, self.tol, self.policy = op, k, want_min, tol, policy
        self.split = sharded(op)  # the vectors are this rank's rows: dots sum over the ranks
        self.stop = policy.stop
        self.eta, self.skip = None, 0  # the products' measured error (fd), and the products spent on it
        self.last_ends = None  # the wanted Ritz values at the previous convergence check
        self.Q: Basis | None = None
        self.T = np.zeros((0, 0))
        self.q_prev = None
        self.arrow = False  # first step after a restart: T's new column is all couplings
        self.history: list[float] = []
        self.restarts, self.held = 0, 0
        self.theta = self.res = None

    def close(self):
        if self.Q is not None:
            self.Q.close()

    def iterate(self, q: torch.Tensor, max_iter: int, bar) -> bool:
        while self.op.calls - self.skip < max_iter:  # max_iter Lanczos steps after the noise's products
            w = self.op.matvec(q)
            if self.Q is None:  # sized after the first product, when the graph's memory is known
                cap, where = choose_basis(self.op, self.policy, self.k + int(self.want_min), max_iter)
                self.Q = Basis(self.op.shape[0], cap, self.op.dtype, self.op.device, where, self.policy.directory,
                               sharded(self.op))
            q = self._extend(q, w)
            beta = norm(w, self.split)
            self.theta, S = ritz(self.T)
            self.res = np.abs(beta * S[-1, :])
            self.history.append(float(self.theta[-1]))
            bar.update(1)
            j = len(self.Q)
            self.held = max(self.held, j)
            if self._converged() or beta < 1e-10 * max(1.0, float(np.abs(self.theta).max())):
                return True  # converged, or an invariant subspace: the Ritz values are exact
            if self.op.calls - self.skip >= max_iter:
                return False
            if j == self.Q.capacity or j == self.op.shape[0]:
                q = self._restart(S, w, beta)
            else:
                self.T = np.pad(self.T, ((0, 1), (0, 1)))
                self.T[j, j - 1] = self.T[j - 1, j] = beta
                self.q_prev, q = q, w / beta
        return False

    def _extend(self, q, w) -> torch.Tensor:
        """Put q into the basis and make w = Aq orthogonal to it; T's column for q. Returns q (as held)."""
        Q, T = self.Q, self.T
        Q.append(q)
        j = len(Q)
        if T.shape[0] < j:
            T = self.T = np.pad(T, ((0, j - T.shape[0]), (0, j - T.shape[0])))
        q = Q.row(j - 1) if Q.store is not None and Q.store.device == q.device else q
        if self.arrow:  # after a restart every earlier vector couples to q: let Gram–Schmidt find them
            T[:j, j - 1] = 0.0
            passes = 2
        else:
            if self.q_prev is not None:
                w.sub_(self.q_prev, alpha=float(T[j - 2, j - 1]))
            a = dot(w, q, self.split)
            w.sub_(q, alpha=a)
            T[j - 1, j - 1] = a
            passes = 1
        for p in range(3):
            before = norm(w, self.split) if p >= passes - 1 else None
            h = Q.project(w)
            Q.subtract(w, h)
            T[:j, j - 1] += h
            if p >= passes - 1 and norm(w, self.split) > 0.7071 * before:
                break
        T[j - 1, :j - 1] = T[:j - 1, j - 1]
        self.arrow = False
        return q

    def _converged(self) -> bool:
        n = len(self.theta)
        if n < self.k:
            return False
        w = _wanted(n, self.k, self.want_min)
        err = error_bounds(self.theta, self.res) if self.stop == "eigenvalue" else self.res
        floor = max(self.eta or 0.0, 1e-300)
        strict = self.tol * np.maximum(np.abs(self.theta[w]), 1e-12)
        ok = bool(np.all(err[w] <= np.maximum(strict, floor)))
        ends = self.theta[w].copy()
        moved = self.last_ends is None or len(self.last_ends) != len(ends) or \
            bool(np.any(np.abs(ends - self.last_ends) > strict + floor))
        self.last_ends = ends
        # a residual within the noise floor but not within tol: only once the values stopped moving
        # (see cullum1985plain._settled)
        return ok and (bool(np.all(err[w] <= strict)) or not moved)

    def _restart(self, S, w, beta) -> torch.Tensor:
        """Thick restart: keep the Ritz vectors near the wanted ends, border T with their couplings."""
        keep = _keep(len(self.theta), self.k, self.want_min, self.Q.capacity)
        self.Q.combine(S[:, keep])
        l = len(keep)
        T = np.zeros((l, l))
        T[np.arange(l), np.arange(l)] = self.theta[keep]
        self.T = T
        self.q_prev, self.arrow = None, True
        self.restarts += 1
        return w / beta

    def spectrum(self, converged: bool) -> Spectrum:
        theta, res, k = self.theta, self.res, self.k
        top = list(range(len(theta) - 1, max(-1, len(theta) - 1 - k), -1))
        Q = self.Q
        return Spectrum(
            eigenvalues=[float(theta[i]) for i in top], lambda_max=float(theta[-1]),
            lambda_min=float(theta[0]) if self.want_min else None,
            residuals=[float(res[i]) for i in top], residual_min=float(res[0]) if self.want_min else None,
            converged=bool(converged), hvps=self.op.calls, iterations=self.op.calls - self.skip, method="lanczos",
            history=self.history, restarts=self.restarts, max_basis=self.held, stop=self.stop,
            error_bounds=[float(b) for b in error_bounds(theta, res)[top]],
            basis={"where": Q.where, "capacity": Q.capacity, "bytes": Q.nbytes} if Q is not None else None,
            noise=self.eta,
        )
