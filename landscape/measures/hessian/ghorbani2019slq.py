"""Eigenvalue density by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; for neural-network
Hessians Ghorbani, Krishnan & Xiao 2019, as in PyHessian, and Papyan 2020 without reorthogonalisation).

For each of ``n_vectors`` random unit vectors v, ``steps`` Lanczos steps give nodes θⱼ (Ritz values)
and weights τⱼ = sⱼ[0]² (the squared first components of T's eigenvectors), a Gauss quadrature of
vᵀ f(A) v. The density is

    φ(t) = (1/n_v) Σ_v Σ_j τⱼ · N(t; θⱼ, σ²),

whose weights sum to one and whose nodes lie inside [λ_min, λ_max].

Two variants (``reorth``), and the result says which ran:

- ``"full"`` (Ghorbani et al., PyHessian): each step is reorthogonalised against the whole basis —
  ``steps`` weight-sized vectors in memory;
- ``"none"`` (Papyan 2020): the plain three-term recurrence, three vectors whatever ``steps`` is.
  Lost orthogonality makes converged Ritz values reappear as copies ("ghosts"), but the quadrature
  stays a valid Gauss rule of the same moments (Paige; Golub & Meurant), so the density is still
  right in the sense that matters for SLQ: its low moments and mass per interval.
- ``"auto"`` (``basis.reorth``): full when the ``steps`` vectors fit the basis budget in memory
  (see :mod:`.basis`), else none — the density of a 135M-parameter model then needs three vectors
  (1.6 GB) instead of forty (21.6 GB).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from landscape.foundation.progress import tqdm

from landscape.measures.hessian.basis import Basis, BasisPolicy, choose_basis, resolve_reorth
from landscape.measures.hessian.lanczos1950 import ritz, tridiagonal
from landscape.measures.hessian.operator import Counted, dot, norm, random_unit, sharded

@dataclasses.dataclass
class Density:
    """A spectral density estimate: the Ritz nodes and weights of every probe (the exact spikes), the
    Gaussian-smoothed density on a grid, and what it cost. Like :class:`~.spectrum.Spectrum` and
    :class:`~.hutchinson1989.Trace`, ``as_dict()`` is its JSON form."""

    nodes: list
    weights: list
    grid: list
    density: list
    sigma: float
    n_vectors: int
    steps: int
    reorth: str
    hvps: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def spectral_density(op, n_vectors: int = 4, steps: int = 40, seed: int = 0, grid: int = 400,
                     sigma: float | None = None, progress: bool = False, basis: BasisPolicy | None = None) -> Density:
    """Nodes and weights (for plotting exact spikes) and the smoothed density on a grid."""
    op = Counted(op)
    policy = dataclasses.replace(basis or BasisPolicy(), max_basis=steps)
    reorth = resolve_reorth(op, policy, 0, steps)
    where = choose_basis(op, policy, 0, steps)[1] if reorth == "full" else None
    nodes, weights = [], []
    for i in tqdm(range(n_vectors), desc="density", disable=not progress, leave=False):
        v = random_unit(op, torch.Generator().manual_seed(seed + 1000 * (i + 1)))
        basis = Basis(op.shape[0], steps, op.dtype, op.device, where, policy.directory, sharded(op)) if where else None
        try:
            alphas, betas = _tridiagonal(op, v, steps, basis)
        finally:
            if basis is not None:
                basis.close()
        theta, s = ritz(tridiagonal(alphas, betas))
        nodes.append(theta)
        weights.append(s[0, :] ** 2 / n_vectors)
    nodes_a, weights_a = np.concatenate(nodes), np.concatenate(weights)
    lo, hi = float(nodes_a.min()), float(nodes_a.max())
    span = max(hi - lo, 1e-12)
    sigma = sigma or 0.01 * span
    t = np.linspace(lo - 0.05 * span, hi + 0.05 * span, grid)
    dens = (weights_a[None, :] * np.exp(-((t[:, None] - nodes_a[None, :]) ** 2) / (2 * sigma**2))).sum(1)
    dens /= math.sqrt(2 * math.pi) * sigma
    return Density(nodes=nodes_a.tolist(), weights=weights_a.tolist(), grid=t.tolist(), density=dens.tolist(),
                   sigma=sigma, n_vectors=n_vectors, steps=steps, reorth=reorth, hvps=op.calls)


def _tridiagonal(op, v: torch.Tensor, steps: int, basis: Basis | None):
    """α, β of ``steps`` Lanczos steps from the unit v (reorthogonalised against ``basis`` if given)."""
    alphas: list[float] = []
    betas: list[float] = []
    q_prev, split = None, sharded(op)
    for j in range(steps):
        w = op.matvec(v)
        if q_prev is not None:
            w.sub_(q_prev, alpha=betas[-1])
        a = dot(w, v, split)
        w.sub_(v, alpha=a)
        alphas.append(a)
        if basis is not None:
            basis.append(v)
            basis.orthogonalize(w)
        beta = norm(w, split)
        if j == steps - 1 or beta < 1e-10 * max(1.0, max(abs(x) for x in alphas)):
            break
        betas.append(beta)
        q_prev, v = v, w / beta
    return alphas, betas
