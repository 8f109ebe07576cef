"""Hessian of the shared loss: exact Hessian-vector products, extreme eigenvalues, trace, density.

Conventions (unlike PyHessian, whose "top eigenvalue" is the largest in *magnitude*):
- ``lambda_max`` is the largest *algebraic* eigenvalue of H = ∇²L(w) — the sharpness;
- ``lambda_min`` is the smallest (negative when the point has directions of negative curvature).

Every estimator counts the Hessian-vector products (HVPs) it spends, and a Ritz/power pair (θ, y) is
accepted only when its residual ‖Hy − θy‖ ≤ tol·|θ| — not merely when θ stops changing.

Second-order autograd through fused scaled-dot-product-attention kernels is not implemented in
PyTorch, so every HVP runs under the math SDPA backend.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from landscape import params as P


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of distinct storages autograd saves inside the block (the graph's memory),
    leaving out the parameters' own storages."""

    def __init__(self, params):
        self.bytes = 0
        skip = {p.untyped_storage().data_ptr() for p in params}
        seen = set()

        def pack(t):
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in skip and key not in seen:
                seen.add(key)
                self.bytes += st.nbytes()
            return t

        super().__init__(pack, lambda t: t)


def math_attention():
    """Force the differentiable-twice math path of SDPA."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover - very old torch
        return contextlib.nullcontext()


class HVP:
    """v ↦ H v for an objective (see :class:`landscape.loss.Objective`), counting calls.

    ``method="reverse"`` (default): double backward, ∇(∇L·v). ``method="forward"``:
    forward-over-reverse with ``torch.func`` (jvp of the gradient). Both give the exact HVP;
    ``benchmarks/`` measures which is faster. Input/output vectors are in ``vector_dtype``
    (float32 for bf16/fp32 models so that Lanczos keeps its orthogonality; float64 stays float64).
    """

    def __init__(self, objective, method: str = "reverse", cache_graph: bool | str = "auto"):
        if method not in ("reverse", "forward"):
            raise ValueError(f"unknown HVP method {method!r}")
        if cache_graph not in (True, False, "auto"):
            raise ValueError(f"cache_graph must be True, False or 'auto', not {cache_graph!r}")
        self.obj = objective
        self.method = method
        # cache_graph: build ∇L (create_graph) once and keep its graph, so each HVP is one backward
        # instead of forward + two backwards. Memory: every batch's double-backward graph at once.
        # "auto": measure the first batch's graph and keep them all only if they fit in half of
        # the free memory. A cached graph is rebuilt when a parameter's version changes.
        self.cached = None if cache_graph == "auto" else bool(cache_graph) and method == "reverse"
        self.graph_bytes = None  # measured size of one term's saved graph ("auto")
        self._grads = None
        self._versions = None
        self.calls = 0
        self.seconds = 0.0
        pdtype = objective.params[0].dtype
        self.vector_dtype = torch.promote_types(pdtype, torch.float32)

    def __call__(self, v: P.Vector) -> P.Vector:
        t0 = time.perf_counter()
        out = self._reverse(v) if self.method == "reverse" else self._forward(v)
        if hasattr(self.obj, "reduce"):  # torch.distributed: each rank did its batches
            self.obj.reduce(out)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return [o.to(self.vector_dtype) for o in out]

    def release(self) -> None:
        """Drop the cached graphs (e.g. before the weights are moved for ε/SAM sharpness)."""
        self._grads = self._versions = None

    def _versions_now(self):
        model = getattr(self.obj, "model", None)  # the fixed parameters are in the graph too
        return [p._version for p in (model.parameters() if model is not None else self.obj.params)]

    def _first_order(self):
        """Per-term gradients with their graphs: rebuilt every call, or kept (see ``cache_graph``)."""
        ps = self.obj.params
        if self._grads is not None:
            if self._versions == self._versions_now():
                return self._grads
            self.release()  # the weights moved (in place): the kept graph is stale
        grad = lambda term: torch.autograd.grad(term, ps, create_graph=True, allow_unused=True)  # noqa: E731
        terms = iter(self.obj.terms())
        if self.cached is None:  # "auto": decide from the first term's graph
            first = None
            dev = ps[0].device
            cuda0 = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
            sb = _SavedBytes(ps)
            with sb:
                for term in terms:
                    first = grad(term)
                    break
            if first is None:
                return []
            self.graph_bytes = sb.bytes
            if dev.type == "cuda":  # the allocator's count is exact there (gradients included)
                self.graph_bytes = max(sb.bytes, torch.cuda.memory_allocated(dev) - cuda0)
            n_terms = len(getattr(self.obj, "local_batches", None) or [None])
            free = P.free_memory(dev)
            self.cached = free is not None and self.graph_bytes * n_terms <= free // 2
            if not self.cached:
                return itertools.chain([first], (grad(t) for t in terms))
            self._grads = [first] + [grad(t) for t in terms]
        elif self.cached:
            self._grads = [grad(t) for t in terms]
        else:
            return (grad(t) for t in terms)
        self._versions = self._versions_now()
        return self._grads

    def _reverse(self, v):
        ps = self.obj.params
        vv = [x.to(p.dtype) for x, p in zip(v, ps)]
        out = [torch.zeros_like(p, dtype=self.vector_dtype) for p in ps]
        with math_attention():
            for g in self._first_order():
                gv = sum((gi * vi).sum() for gi, vi in zip(g, vv) if gi is not None)
                if not torch.is_tensor(gv) or not gv.requires_grad:
                    continue  # this term does not depend on the parameters twice (e.g. linear)
                hv = torch.autograd.grad(gv, ps, allow_unused=True, retain_graph=bool(self.cached))
                for o, h in zip(out, hv):
                    if h is not None:
                        o.add_(h.to(o.dtype))
        return out

    def _forward(self, v):
        from torch.func import grad, jvp

        obj = self.obj
        model = getattr(obj, "model", None)
        if model is None:
            raise ValueError("method='forward' needs a model objective")
        names = obj.names
        base = dict(zip(names, [p.detach() for p in obj.params]))
        tangent = dict(zip(names, [x.to(p.dtype) for x, p in zip(v, obj.params)]))
        out = [torch.zeros_like(p, dtype=self.vector_dtype) for p in obj.params]
        from landscape.loss import batch_term, functional

        with math_attention():
            for b in getattr(obj, "local_batches", obj.batches):
                def f(pdict, b=b):
                    return batch_term(functional(model, pdict), b, obj.n_tokens)

                _, hv = jvp(grad(f), (base,), (tangent,))
                for o, n in zip(out, names):
                    o.add_(hv[n].to(o.dtype))
        return out

    def like(self) -> list[torch.Tensor]:
        return [torch.zeros_like(p, dtype=self.vector_dtype) for p in self.obj.params]


@dataclass
class Spectrum:
    """Extreme eigenvalues from one estimator."""

    eigenvalues: list[float]  # top-k, algebraically largest first
    lambda_max: float
    lambda_min: float | None
    residuals: list[float]  # ‖Hy − θy‖ for each of ``eigenvalues``
    residual_min: float | None
    converged: bool
    hvps: int
    iterations: int
    method: str
    history: list[float] = field(default_factory=list)  # λ_max estimate after each HVP

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("eigenvalues", "lambda_max", "lambda_min", "residuals",
                                              "residual_min", "converged", "hvps", "iterations", "method")}


def _random_unit(hvp: HVP, generator: torch.Generator) -> P.Vector:
    v = P.randn_like(hvp.obj.params, generator, dtype=hvp.vector_dtype)
    return P.scale(v, 1.0 / float(P.norm(v)))


def _lanczos_steps(hvp: HVP, seed: int, max_steps: int):
    """The Lanczos recurrence with full reorthogonalisation, from a seeded random unit vector.

    Yields ``(alphas, betas, beta)`` after each step: T = tridiag(betas, alphas, betas) is QᵀHQ for
    the basis built so far, and ``beta`` the norm of the next (unnormalised) residual vector.
    Stops early at an invariant subspace (beta ≈ 0). Memory: one vector per step.
    """
    g = torch.Generator().manual_seed(seed)
    like = hvp.obj.params
    # The basis lives as flat vectors: reorthogonalisation is then two kernel calls per basis vector
    # instead of two per basis vector *and parameter tensor* (the Python overhead that dominated
    # Lanczos on small models). Dots run in the vector dtype (float64 models: float64; float32 and
    # bf16 models: float32, relative error ~1e-7 on 1e6 terms, far below any stopping tolerance;
    # converting whole vectors to float64 for each dot cost more than the HVPs on small models).
    q = P.flatten(_random_unit(hvp, g))
    Q: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(max_steps):
        Q.append(q)
        w = P.flatten(hvp(P.unflatten(q, like)))
        alphas.append(float(torch.dot(w, q)))
        for _ in range(2):  # reorthogonalise twice ("twice is enough", Parlett)
            for qi in Q:
                w.add_(qi, alpha=-float(torch.dot(w, qi)))
        beta = float(w.norm())
        yield alphas, betas, beta
        if beta < 1e-10 * max(1.0, max(abs(x) for x in alphas)):
            return
        betas.append(beta)
        q = w / beta


def _ritz(alphas, betas):
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    return np.linalg.eigh(T)  # ascending θ, eigenvectors s as columns


def lanczos(hvp: HVP, k: int = 1, max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
            want_min: bool = True, progress: bool = False) -> Spectrum:
    """Top-``k`` (and smallest) eigenvalues of H by Lanczos with full reorthogonalisation.

    Builds an orthonormal Krylov basis Q = [q_1 … q_m], T = QᵀHQ tridiagonal (α on the diagonal,
    β off it). A Ritz pair (θ_i, y_i = Q s_i) of T has the exact residual
    ‖H y_i − θ_i y_i‖ = |β_m · s_i[m]|, so convergence is tested on the residual of every wanted
    pair. Memory: m vectors of the selected parameters' size.
    """
    history: list[float] = []
    converged = False
    bar = tqdm(total=max_iter, desc="lanczos", disable=not progress, leave=False)
    for alphas, betas, beta in _lanczos_steps(hvp, seed, max_iter):
        theta, s = _ritz(alphas, betas)
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
        converged=converged, hvps=hvp.calls, iterations=len(alphas), method="lanczos", history=history,
    )


def _power(hvp, shift: float, deflate: list[tuple[float, P.Vector]], g, max_iter, tol, history):
    """Power iteration on A = H − shift·I with deflation of found (λ, u); returns (θ of H, v, residual, it)."""
    v = _random_unit(hvp, g)
    theta = 0.0
    res = float("inf")
    it = 0
    for it in range(1, max_iter + 1):
        hv = hvp(v)
        av = [h - shift * x for h, x in zip(hv, v)]
        for lam, u in deflate:
            c = float(P.dot(u, v))
            av = [a - (lam - shift) * c * ui for a, ui in zip(av, u)]
        mu = float(P.dot(av, v))  # Rayleigh quotient of A at unit v
        theta = mu + shift
        r = [a - mu * x for a, x in zip(av, v)]  # = (H_defl − θ I) v
        res = float(P.norm(r))
        history.append(theta)
        if res <= tol * max(abs(theta), 1e-12):
            break
        n = float(P.norm(av))
        if n == 0.0:
            break
        v = P.scale(av, 1.0 / n)
    return theta, v, res, it


def power_iteration(hvp: HVP, k: int = 1, max_iter: int = 200, tol: float = 1e-4, seed: int = 0,
                    want_min: bool = True, progress: bool = False) -> Spectrum:
    """Top-``k`` algebraic eigenvalues by deflated power iteration, made correct for indefinite H.

    Plain power iteration finds the eigenvalue of largest *magnitude*, which may be negative. So:
    (1) power on H gives λ_a; (2) if λ_a < 0 it is λ_min, else power on H − λ_a·I gives λ_min;
    (3) with σ = min(λ_min, 0), A = H − σI is positive semi-definite and its top-k by deflated power
    iteration are H's top-k algebraic eigenvalues plus −σ. Convergence on the residual ‖Hv − θv‖.
    """
    g = torch.Generator().manual_seed(seed)
    history: list[float] = []
    iters = 0
    lam_a, _, _, it = _power(hvp, 0.0, [], g, max_iter, tol, history)
    iters += it
    if lam_a < 0:
        lam_min, res_min = lam_a, None
    else:
        lam_min, _, res_min, it = _power(hvp, lam_a, [], g, max_iter, tol, history)
        iters += it
    converged = res_min is None or res_min <= tol * max(abs(lam_min), 1e-12)
    sigma = min(lam_min, 0.0)
    found: list[tuple[float, P.Vector]] = []
    residuals = []
    for _ in tqdm(range(k), desc="power", disable=not progress, leave=False):
        theta, v, res, it = _power(hvp, sigma, found, g, max_iter, tol, history)
        iters += it
        converged &= res <= tol * max(abs(theta), 1e-12)
        found.append((theta, v))
        residuals.append(res)
    eig = sorted((t for t, _ in found), reverse=True)
    return Spectrum(eigenvalues=eig, lambda_max=eig[0], lambda_min=lam_min if want_min else None,
                    residuals=residuals, residual_min=res_min, converged=converged, hvps=hvp.calls,
                    iterations=iters, method="power", history=history)


@dataclass
class Trace:
    trace: float
    stderr: float
    samples: int
    hvps: int
    estimates: list[float]


def hutchinson_trace(hvp: HVP, samples: int = 50, seed: int = 0, progress: bool = False) -> Trace:
    """tr(H) ≈ (1/n) Σ_i z_iᵀ H z_i with Rademacher z_i (Hutchinson 1989); stderr = sd/√n."""
    g = torch.Generator().manual_seed(seed)
    est = []
    for _ in tqdm(range(samples), desc="trace", disable=not progress, leave=False):
        z = P.rademacher_like(hvp.obj.params, g, dtype=hvp.vector_dtype)
        est.append(float(P.dot(z, hvp(z))))
    a = np.asarray(est)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return Trace(float(a.mean()), se, len(a), hvp.calls, est)


def spectral_density(hvp: HVP, n_vectors: int = 4, steps: int = 40, seed: int = 0, grid: int = 400,
                     sigma: float | None = None, progress: bool = False) -> dict:
    """Eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019, PyHessian).

    For each random unit vector, ``steps`` Lanczos steps give nodes θ_j (Ritz values) and weights
    τ_j = s_j[0]² ; the density is φ(t) = (1/n_v) Σ_v Σ_j τ_j · N(t; θ_j, σ²). Returns the nodes and
    weights (for plotting exact spikes) and the smoothed density on a grid.
    """
    nodes, weights = [], []
    for i in tqdm(range(n_vectors), desc="density", disable=not progress, leave=False):
        for alphas, betas, _ in _lanczos_steps(hvp, seed + 1000 * (i + 1), steps):
            pass
        theta, s = _ritz(alphas, betas[: len(alphas) - 1])
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
            "hvps": hvp.calls}
