"""Sharpness measures of the shared loss, and ``measure``: the `landscape sharpness` command's one call.

Every measure perturbs the weights inside :func:`landscape.params.perturbed`, which restores the
original bits on exit: the model is bit-identical after a measurement.

Definitions (w the selected parameters, L the token-weighted mean loss):

- ε-sharpness (Keskar et al. 2017, eq. 3), box C_ε = {z : |z_i| ≤ ε(|w_i| + 1)}:
      φ_ε = 100 · (max_{z ∈ C_ε} L(w + z) − L(w)) / (1 + L(w))
  maximised by projected sign-gradient ascent (the steepest-ascent step for a box). The
  random-subspace variant restricts z = A y to the span of p random Gaussian directions A ∈ R^{n×p},
  with the box |y_i| ≤ ε(|(A⁺w)_i| + 1) (Keskar et al., "full space" vs "random subspace").
- worst-case ρ-ball sharpness (the quantity SAM minimises, Foret et al. 2021):
      S_ρ = max_{‖δ‖₂ ≤ ρ} L(w + δ) − L(w)
  by normalised gradient ascent projected on the ball; one step is exactly SAM's ε = ρ·g/‖g‖.
  Adaptive (ASAM, Kwon et al. 2021): the ball is ‖δ / (|w| + η)‖₂ ≤ ρ; one step is
  δ = ρ·T²g/‖Tg‖ with T = |w| + η.
- average-case sharpness: E_{δ∼N(0, σ²I)} L(w + δ) − L(w), Monte Carlo with its standard error
  (adaptive: δ ∼ N(0, σ² diag(|w|²))). For a quadratic it equals ½σ²·tr(H).
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import torch
from tqdm.auto import tqdm

import landscape
from landscape import hessian
from landscape import params as P
from landscape.errors import UserError
from landscape.loss import Objective, gradient


def eps_sharpness(obj, eps: float = 1e-3, steps: int = 20, subspace: int | None = None, seed: int = 0,
                  progress: bool = False) -> dict:
    """Keskar et al.'s ε-sharpness (see module docstring); ``subspace=p`` for the random-subspace form."""
    ps = obj.params
    with P.perturbed(ps) as origin:
        L0 = obj.value()
        if subspace:
            g = torch.Generator().manual_seed(seed)
            A = [P.randn_like(ps, g, dtype=torch.float64) for _ in range(subspace)]
            G = np.array([[float(P.dot(a, b)) for b in A] for a in A])
            Atw = np.array([float(P.dot(a, origin)) for a in A])
            bound = eps * (np.abs(np.linalg.solve(G, Atw)) + 1.0)  # ε(|A⁺w| + 1)
            y = np.zeros(subspace)
        else:
            bound = [eps * (o.abs().to(torch.promote_types(o.dtype, torch.float32)) + 1.0) for o in origin]
            z = [torch.zeros_like(b) for b in bound]
        best = L0
        for t in tqdm(range(steps + 1), desc="eps-sharpness", disable=not progress, leave=False):
            if subspace:
                z = [sum(float(yj) * a[i] for yj, a in zip(y, A)) for i in range(len(ps))]
            P.set_offset(ps, origin, z)
            if t == steps:
                best = max(best, obj.value())
                break
            L, grad = gradient(obj)
            best = max(best, L)
            step = 2.0 / steps  # in units of the box half-width: reaches a vertex in steps/2
            if subspace:
                gy = np.array([float(P.dot(a, grad)) for a in A])
                y = np.clip(y + step * bound * np.sign(gy), -bound, bound)
            else:
                z = [torch.minimum(torch.maximum(zi + step * b * gi.sign().to(b.dtype), -b), b)
                     for zi, b, gi in zip(z, bound, grad)]
    return {"eps_sharpness": 100.0 * (best - L0) / (1.0 + L0), "max_loss": best, "loss": L0, "eps": eps,
            "steps": steps, "subspace": subspace}


def ball_sharpness(obj, rho: float = 0.05, steps: int = 1, adaptive: bool = False, eta: float = 0.01,
                   seed: int = 0, progress: bool = False) -> dict:
    """max over the (adaptive) ρ-ball of L(w+δ) − L(w) by projected normalised gradient ascent.

    Ascent runs in u = δ/T coordinates (T = 1, or |w| + η when adaptive) where the constraint is
    ‖u‖ ≤ ρ; ∂L/∂u = T⊙g. Where the gradient vanishes (a minimum), the first step starts from a
    seeded random direction.
    """
    ps = obj.params
    with P.perturbed(ps) as origin:
        T = [(o.abs().to(torch.promote_types(o.dtype, torch.float32)) + eta) if adaptive
             else torch.ones_like(o, dtype=torch.promote_types(o.dtype, torch.float32)) for o in origin]
        u = [torch.zeros_like(t) for t in T]
        L0 = obj.value()
        best = L0
        for t in tqdm(range(steps), desc="sam-sharpness", disable=not progress, leave=False):
            P.set_offset(ps, origin, [ti * ui for ti, ui in zip(T, u)])
            L, grad = gradient(obj)
            best = max(best, L)
            gu = [ti * gi.to(ti.dtype) for ti, gi in zip(T, grad)]
            n = float(P.norm(gu))
            if n < 1e-12:
                gu = P.randn_like(T, torch.Generator().manual_seed(seed + t))
                n = float(P.norm(gu))
            u = P.axpy(rho / n, gu, u)  # a step of ρ, then back onto the ball
            un = float(P.norm(u))
            if un > rho:
                u = P.scale(u, rho / un)
        P.set_offset(ps, origin, [ti * ui for ti, ui in zip(T, u)])
        best = max(best, obj.value())
    return {"sharpness": best - L0, "max_loss": best, "loss": L0, "rho": rho, "steps": steps,
            "adaptive": adaptive, "eta": eta if adaptive else None}


def avg_sharpness(obj, sigma: float = 0.01, samples: int = 16, adaptive: bool = False, seed: int = 0,
                  progress: bool = False) -> dict:
    """E_δ L(w+δ) − L(w), δ ∼ N(0, σ²I) (adaptive: σ|w| per coordinate); mean ± standard error."""
    ps = obj.params
    g = torch.Generator().manual_seed(seed)
    with P.perturbed(ps) as origin:
        L0 = obj.value()
        inc = []
        for _ in tqdm(range(samples), desc="avg-sharpness", disable=not progress, leave=False):
            d = P.randn_like(ps, g, dtype=torch.float64)
            d = [di * sigma * (o.abs().double() if adaptive else 1.0) for di, o in zip(d, origin)]
            P.set_offset(ps, origin, d)
            inc.append(obj.value() - L0)
    a = np.asarray(inc)
    return {"avg_sharpness": float(a.mean()), "stderr": float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else None,
            "sigma": sigma, "samples": samples, "adaptive": adaptive, "loss": L0}


METRICS = ("lambda_max", "lambda_min", "trace", "density", "eps", "eps_subspace", "sam", "asam", "avg")
DEFAULT_METRICS = ("lambda_max", "lambda_min", "trace", "eps", "sam", "avg")


def parse_metrics(spec: str | list | tuple | None) -> list[str]:
    if spec is None:
        return list(DEFAULT_METRICS)
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return names


def measure(model, batches, metrics=None, top_k: int = 1, params: str | None = None, per_layer: bool = False,
            method: str = "lanczos", max_iter: int = 100, tol: float = 1e-3, trace_samples: int = 30,
            eps: float = 1e-3, eps_steps: int = 10, subspace: int = 10, rho: float = 0.05, sam_steps: int = 1,
            sigma: float = 0.01, avg_samples: int = 16, hvp_method: str = "reverse", seed: int = 0,
            progress: bool = False, cache_graph: bool | str = "auto") -> dict:
    """Loss and the requested curvature/sharpness metrics of ``model`` on ``batches``.

    ``params`` restricts everything to parameters whose names match the regex; ``per_layer`` adds
    λ_max (and the trace, when asked) of each transformer block's own Hessian. The model's weights are
    bit-identical afterwards. ``cache_graph`` (True/False/"auto"): keep the gradient's graph across
    HVPs (see :class:`landscape.hessian.HVP`); it changes speed and memory, never the numbers.
    Returns the JSON-ready dict of `landscape sharpness --json`.
    """
    names = parse_metrics(metrics)
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    if method not in ("lanczos", "power"):
        raise UserError(f"unknown eigenvalue method {method!r}; choose lanczos or power")
    t0 = time.perf_counter()
    obj = Objective(model, batches, P.select(model, params))
    hvp = hessian.HVP(obj, hvp_method, cache_graph=cache_graph)
    out: dict = {}
    details: dict = {}
    L0 = obj.value()
    if not math.isfinite(L0):
        raise UserError(f"the loss at the checkpoint is {L0}: curvature is undefined (NaN/inf weights, or "
                        "an overflowing dtype: try --dtype float32)")
    eig_fn = hessian.lanczos if method == "lanczos" else hessian.power_iteration
    if "lambda_max" in names or "lambda_min" in names:
        sp = eig_fn(hvp, k=top_k, max_iter=max_iter, tol=tol, seed=seed, want_min="lambda_min" in names,
                    progress=progress)
        if "lambda_max" in names:
            out["lambda_max"] = sp.lambda_max
            out["eigenvalues"] = sp.eigenvalues
        if "lambda_min" in names:
            out["lambda_min"] = sp.lambda_min
        details["eigen"] = sp.as_dict()
    if "trace" in names:
        tr = hessian.hutchinson_trace(hvp, samples=trace_samples, seed=seed, progress=progress)
        out["hessian_trace"], out["hessian_trace_stderr"] = tr.trace, tr.stderr
    if "density" in names:
        out["density"] = hessian.spectral_density(hvp, seed=seed, progress=progress)
    graph_cached = hvp.cached
    hvp.release()  # the measures below move the weights; free the kept graph first
    if "eps" in names:
        r = eps_sharpness(obj, eps=eps, steps=eps_steps, seed=seed, progress=progress)
        out["eps_sharpness"] = r["eps_sharpness"]
        details["eps"] = r
    if "eps_subspace" in names:
        r = eps_sharpness(obj, eps=eps, steps=eps_steps, subspace=subspace, seed=seed, progress=progress)
        out["eps_subspace_sharpness"] = r["eps_sharpness"]
        details["eps_subspace"] = r
    for key, adaptive in (("sam", False), ("asam", True)):
        if key in names:
            r = ball_sharpness(obj, rho=rho, steps=sam_steps, adaptive=adaptive, seed=seed, progress=progress)
            out[f"{key}_sharpness"] = r["sharpness"]
            details[key] = r
    if "avg" in names:
        r = avg_sharpness(obj, sigma=sigma, samples=avg_samples, seed=seed, progress=progress)
        out["avg_sharpness"], out["avg_sharpness_stderr"] = r["avg_sharpness"], r["stderr"]
    if per_layer:
        layers = {}
        base_pat = re.compile(params) if params else None
        for group, regex in P.layer_groups(model).items():
            sel = {n: p for n, p in P.select(model, regex).items() if base_pat is None or base_pat.search(n)}
            if not sel:
                continue
            h = hessian.HVP(Objective(model, batches, sel), hvp_method, cache_graph=cache_graph)
            sp = eig_fn(h, k=1, max_iter=max_iter, tol=tol, seed=seed, want_min=False, progress=progress)
            row = {"lambda_max": sp.lambda_max, "converged": sp.converged, "n_params": P.numel(h.obj.params)}
            if "trace" in names:
                tr = hessian.hutchinson_trace(h, samples=trace_samples, seed=seed, progress=progress)
                row.update(hessian_trace=tr.trace, hessian_trace_stderr=tr.stderr)
            hvp.calls += h.calls
            h.release()
            layers[group] = row
        out["per_layer"] = layers
    out["details"] = details
    config = {"metrics": names, "top_k": top_k, "params": params, "per_layer": per_layer, "method": method,
              "max_iter": max_iter, "tol": tol, "trace_samples": trace_samples, "eps": eps, "eps_steps": eps_steps,
              "subspace": subspace, "rho": rho, "sam_steps": sam_steps, "sigma": sigma, "avg_samples": avg_samples,
              "hvp_method": hvp_method, "cache_graph": cache_graph, "seed": seed, "n_params": P.numel(obj.params),
              "dtype": str(obj.params[0].dtype).replace("torch.", ""), "version": landscape.__version__}
    return {"loss": L0, "tokens": obj.n_tokens, "metrics": out, "config": config,
            "cost": {"hvps": hvp.calls, "seconds": round(time.perf_counter() - t0, 3),
                     "graph_cached": graph_cached}}
