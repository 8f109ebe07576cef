"""Eigenvalue density by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; for neural-network
Hessians Ghorbani, Krishnan & Xiao 2019, as in PyHessian).

For each of ``n_vectors`` random unit vectors v, ``steps`` Lanczos steps give nodes θⱼ (Ritz values)
and weights τⱼ = sⱼ[0]² (the squared first components of T's eigenvectors), a Gauss quadrature of
vᵀ f(A) v. The density is

    φ(t) = (1/n_v) Σ_v Σ_j τⱼ · N(t; θⱼ, σ²),

whose weights sum to one and whose nodes lie inside [λ_min, λ_max]. Memory: ``steps`` vectors
(the Lanczos basis, fully reorthogonalised).
"""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

from landscape.measures.hessian.lanczos1950 import lanczos_steps, ritz
from landscape.measures.hessian.operator import Counted


def spectral_density(op, n_vectors: int = 4, steps: int = 40, seed: int = 0, grid: int = 400,
                     sigma: float | None = None, progress: bool = False) -> dict:
    """Nodes and weights (for plotting exact spikes) and the smoothed density on a grid."""
    op = Counted(op)
    nodes, weights = [], []
    for i in tqdm(range(n_vectors), desc="density", disable=not progress, leave=False):
        for alphas, betas, _, _ in lanczos_steps(op, seed + 1000 * (i + 1), steps):
            pass
        theta, s = ritz(alphas, betas[: len(alphas) - 1])
        nodes.append(theta)
        weights.append(s[0, :] ** 2 / n_vectors)
    nodes_a, weights_a = np.concatenate(nodes), np.concatenate(weights)
    lo, hi = float(nodes_a.min()), float(nodes_a.max())
    span = max(hi - lo, 1e-12)
    sigma = sigma or 0.01 * span
    t = np.linspace(lo - 0.05 * span, hi + 0.05 * span, grid)
    dens = (weights_a[None, :] * np.exp(-((t[:, None] - nodes_a[None, :]) ** 2) / (2 * sigma**2))).sum(1)
    dens /= math.sqrt(2 * math.pi) * sigma
    return {"nodes": nodes_a.tolist(), "weights": weights_a.tolist(), "grid": t.tolist(),
            "density": dens.tolist(), "sigma": sigma, "n_vectors": n_vectors, "steps": steps,
            "hvps": op.calls}
