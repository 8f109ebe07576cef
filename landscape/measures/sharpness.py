"""Sharpness measures of the shared loss, and ``measure``: the `landscape sharpness` command's one call.

Every measure perturbs the weights inside :func:`landscape.foundation.params.perturbed`, which restores the
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

import contextlib
import math
from dataclasses import replace
import re
import time

import numpy as np
import torch
from landscape.foundation.progress import tqdm

import landscape
from landscape.foundation import checkpoint
from landscape.foundation import distributed as dist
from landscape.foundation import params as P
from landscape.foundation import plan as plans
from landscape.foundation.configs import SharpnessConfig
from landscape.foundation.errors import UserError
from landscape.foundation.objective import ModelObjective, gradient
from landscape.measures import hessian
from landscape.measures.hessian.cullum1985plain import linearity_defect


def matched_eps(params, rho: float, sharded: bool = False) -> float:
    """The ε whose box |z_i| ≤ ε(|w_i| + 1) has its corner at ℓ2 distance ρ: ε = ρ / ‖|w| + 1‖₂
    (the norm over the ranks when ``params`` are FSDP rows: ``sharded``).

    Keskar et al.'s ε = 1e-3 lets every weight move by at least 1e-3; for 134.5M weights that is a
    corner at distance ~12 and took SmolLM2's loss from 3.4 to 36 (ε-sharpness 976) — a measure of
    nothing. Matched to SAM's ρ (0.05) the box fits inside SAM's ball at any model size: ε ≈ 4.3e-6
    for SmolLM2-135M, 5.6e-5 for the 0.72M demo model.
    """
    sq = dist.sharded_sum(sum(float(((p.detach().abs().double() + 1.0) ** 2).sum()) for p in params), sharded)
    return rho / math.sqrt(sq)


def eps_sharpness(obj, eps: float | None = 1e-3, steps: int = 20, subspace: int | None = None, seed: int = 0,
                  progress: bool = False, rho: float = 0.05) -> dict:
    """Keskar et al.'s ε-sharpness (see module docstring); ``subspace=p`` for the random-subspace form;
    ``eps=None``: :func:`matched_eps` of ``rho``."""
    ps, split = obj.params, getattr(obj, "sharded", False)
    rule = "given" if eps is not None else f"matched to rho={rho:g}"
    eps = eps if eps is not None else matched_eps(ps, rho, split)
    with P.perturbed(ps, origin=getattr(obj, "origin", None)) as origin:
        L0 = obj.value()
        if subspace:
            g = torch.Generator().manual_seed(seed)
            A = [P.randn_like(obj.leaves, g, dtype=torch.float64) for _ in range(subspace)]
            G = np.array([[float(P.dot(a, b, split)) for b in A] for a in A])
            Atw = np.array([float(P.dot(a, origin, split)) for a in A])
            bound = eps * (np.abs(np.linalg.solve(G, Atw)) + 1.0)  # ε(|A⁺w| + 1)
            y = np.zeros(subspace)
        else:
            # z = ε(|w| + 1)·k/steps with k an integer in [−steps, steps] moved by ±2 a step: the box's
            # bound is recomputed from the saved weights, z held as k (int8) — a quarter of a float32
            # vector instead of two weight-sized vectors (bound and z)
            k = [torch.zeros_like(o, dtype=_count_dtype(steps)) for o in origin]
        best = L0
        for t in tqdm(range(steps + 1), desc="eps-sharpness", disable=not progress, leave=False):
            if subspace:
                z = [sum(float(yj) * a[i] for yj, a in zip(y, A)) for i in range(len(ps))]
            else:
                z = (_box(o, eps).mul_(ki).div_(steps) for o, ki in zip(origin, k))
            P.set_offset(ps, origin, z)
            if t == steps:
                best = max(best, obj.value())
                break
            L, grad = gradient(obj)
            best = max(best, L)
            step = 2.0 / steps  # in units of the box half-width: reaches a vertex in steps/2
            if subspace:
                gy = np.array([float(P.dot(a, grad, split)) for a in A])
                y = np.clip(y + step * bound * np.sign(gy), -bound, bound)
            else:
                for i, gi in enumerate(grad):
                    k[i].add_(gi.sign_().to(k[i].dtype), alpha=2).clamp_(-steps, steps)
                    grad[i] = None  # each parameter's gradient freed once used
    return {"eps_sharpness": 100.0 * (best - L0) / (1.0 + L0), "max_loss": best, "loss": L0, "eps": eps,
            "eps_rule": rule, "steps": steps, "subspace": subspace}


def _count_dtype(steps: int) -> torch.dtype:
    """The integer dtype of ε-sharpness's step counts k ∈ [−steps, steps]: a step adds ±2 before the
    clamp, so |k| reaches steps + 2 in between — int8 up to 125 steps."""
    return torch.int8 if steps + 2 <= 127 else torch.int16


def _box(origin: torch.Tensor, eps: float) -> torch.Tensor:
    """ε(|w| + 1), the half-width of ε-sharpness's box, in the wider of float32 and w's dtype."""
    return origin.abs().to(torch.promote_types(origin.dtype, torch.float32)).mul_(eps).add_(eps)


def ball_sharpness(obj, rho: float = 0.05, steps: int = 1, adaptive: bool = False, eta: float = 0.01,
                   seed: int = 0, progress: bool = False) -> dict:
    """max over the (adaptive) ρ-ball of L(w+δ) − L(w) by projected normalised gradient ascent.

    Ascent runs in u = δ/T coordinates (T = 1, or |w| + η when adaptive) where the constraint is
    ‖u‖ ≤ ρ; ∂L/∂u = T⊙g. Where the gradient vanishes (a minimum), the first step starts from a
    seeded random direction.

    Memory: the saved weights and one streamed gradient, which becomes u in place — three
    weight-sized tensors with the weights for SAM's one step (1.1B float32: 13.2 GB), one more (u
    beside the next gradient) for more steps, one more for ASAM's T.
    """
    ps, split = obj.params, getattr(obj, "sharded", False)
    with P.perturbed(ps, origin=getattr(obj, "origin", None)) as origin:
        wide = torch.promote_types(ps[0].dtype, torch.float32)
        # T = 1 is left implicit (a Python 1.0, not a vector of ones: one weight-sized vector less)
        T = [(o.abs().to(wide) + eta) for o in origin] if adaptive else [1.0] * len(origin)
        u = None  # zero until the first step
        L0 = obj.value()
        best = L0
        for t in tqdm(range(steps), desc="sam-sharpness", disable=not progress, leave=False):
            if u is not None:
                P.set_offset(ps, origin, (ti * ui for ti, ui in zip(T, u)))
            L, gu = gradient(obj, dtype=wide)
            best = max(best, L)
            if adaptive:
                for gi, ti in zip(gu, T):
                    gi.mul_(ti)  # ∂L/∂u = T⊙g, in place
            n = float(P.norm(gu, split))
            if n < 1e-12:
                gu = P.randn_like(obj.leaves, torch.Generator().manual_seed(seed + t), dtype=wide)
                n = float(P.norm(gu, split))
            if u is None:
                u = [gi.mul_(rho / n) for gi in gu]  # a step of ρ from 0: on the ball already
                continue
            for ui, gi in zip(u, gu):
                ui.add_(gi, alpha=rho / n)
            del gu
            un = float(P.norm(u, split))
            if un > rho:
                for ui in u:
                    ui.mul_(rho / un)  # back onto the ball
        P.set_offset(ps, origin, (ti * ui for ti, ui in zip(T, u)))
        best = max(best, obj.value())
    return {"sharpness": best - L0, "max_loss": best, "loss": L0, "rho": rho, "steps": steps,
            "adaptive": adaptive, "eta": eta if adaptive else None}


def avg_sharpness(obj, sigma: float = 0.01, samples: int = 16, adaptive: bool = False, seed: int = 0,
                  progress: bool = False) -> dict:
    """E_δ L(w+δ) − L(w), δ ∼ N(0, σ²I) (adaptive: σ|w| per coordinate); mean ± standard error."""
    ps = obj.params
    g = torch.Generator().manual_seed(seed)
    with P.perturbed(ps, origin=getattr(obj, "origin", None)) as origin:
        L0 = obj.value()
        inc = []
        for _ in tqdm(range(samples), desc="avg-sharpness", disable=not progress, leave=False):
            _set_noise(ps, origin, g, sigma, adaptive, obj.leaves)
            inc.append(obj.value() - L0)
    a = np.asarray(inc)
    return {"avg_sharpness": float(a.mean()), "stderr": float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else None,
            "sigma": sigma, "samples": samples, "adaptive": adaptive, "loss": L0}


@torch.no_grad()
def _set_noise(ps, origin, g: torch.Generator, sigma: float, adaptive: bool, leaves) -> None:
    """p ← w + δ, δ ∼ N(0, σ²) (adaptive: σ|w|), drawn parameter by parameter in float64 on the CPU:
    the numbers of a whole-vector draw, with one parameter's draw in memory instead of two
    weight-sized float64 vectors (2.2 GB for a 135M model); each drawn whole and cut to the local
    rows on a sharded model (``leaves``: the parameters whose layout ``ps`` hold)."""
    for p, o, leaf in zip(ps, origin, leaves):
        wide = torch.promote_types(p.dtype, torch.float32)
        dg = P.device_generator(g, p.device)  # a GPU draws where the weights are (params.device_generator)
        if dg is None:
            d = P.draw(leaf, lambda s: torch.randn(s, generator=g, dtype=torch.float64)).to(p.device) * sigma
        else:
            d = P.draw(leaf, lambda s: torch.randn(s, generator=dg, device=p.device, dtype=wide)).mul_(sigma)
        if adaptive:
            d *= o.abs().double()
        p.copy_((o.to(wide) + d.to(wide)).to(p.dtype))


# `landscape sharpness` metric name → key in the result's "metrics"
RESULT_KEYS = {"lambda_max": "lambda_max", "lambda_min": "lambda_min", "trace": "hessian_trace",
               "eps": "eps_sharpness", "eps_subspace": "eps_subspace_sharpness", "sam": "sam_sharpness",
               "asam": "asam_sharpness", "avg": "avg_sharpness"}


def measure(model, batches, config: SharpnessConfig | None = None, progress: bool = False) -> dict:
    """Loss and the requested curvature/sharpness metrics of ``model`` on ``batches``.

    ``config.params`` restricts everything to parameters whose names match the regex (the others
    stop requiring gradients meanwhile, so no graph is recorded for them); ``config.per_layer``
    adds λ_max (and the trace, when asked) of each transformer block's own Hessian. The model's
    weights are bit-identical afterwards. ``config.cache_graph`` and the basis settings change
    speed and memory, never the numbers. Returns the JSON-ready dict of `landscape sharpness
    --json`; ``cost`` has every Hessian-vector product the estimators spent, the peak resident
    memory of the process and where the Lanczos basis lived.
    """
    cfg = config or SharpnessConfig()
    t0 = time.perf_counter()
    selected = P.select(model, cfg.params)
    P.reset_peak(next(iter(selected.values())).device)
    with float32_view(model, selected.values(), "sharpness") as origins:
        return _measure(model, batches, cfg, selected, origins, progress, t0)


@contextlib.contextmanager
def float32_view(model, selected, what: str):
    """The model in a float32 view while a curvature measurement runs on half-precision weights
    (:func:`landscape.foundation.params.widened`: why, and what it costs), refused with one line when
    that view does not fit or the weights are FSDP-sharded; yields the exact originals (or None)."""
    selected = list(selected)
    if not P.is_half(selected):
        yield None
        return
    planned = P.target() is not None and P.target().world > 1  # a plan for a sharded run: the same answer
    if planned or P.any_sharded(model.parameters()):
        raise UserError(f"{what} on bf16/fp16 weights needs them in float32 (a curvature measurement moves "
                        "them by far less than a half-precision spacing), and FSDP-sharded parameters cannot "
                        "be widened in place: load it with curvature=True (float32 rows of the bf16/fp16 values; "
                        "the sharpness and predict commands do)")
    half = [p for p in model.parameters() if p.dtype in P.HALF]
    dev = half[0].device
    plans.check_fits(plans.Plan(what, {"float32_view": 4 * P.numel(half)}, plans.start_bytes(model, dev)),
                     plans.free_bytes(dev), f"{what} (a float32 view of the bf16/fp16 weights)",
                     hint="a params subset, or a larger machine")
    with P.widened(model) as origins:
        yield origins


def _measure(model, batches, cfg, selected, origins, progress, t0) -> dict:
    stages = _Stages(cfg, progress)
    weights_dtype = str(next(iter(selected.values())).dtype).replace("torch.", "")
    if origins is not None:
        weights_dtype = str(origins[id(next(iter(selected.values())))].dtype).replace("torch.", "")
    elif (values := checkpoint.values_dtype(model)) is not None:  # float32 rows of a sharded bf16/fp16 load
        weights_dtype = str(values).replace("torch.", "")
    with P.grad_only(model, selected.values()):
        obj = ModelObjective(model, batches, selected)
        obj.origin = [origins[id(p)] for p in obj.leaves] if origins else None
        cfg = _basis_fitted(model, obj, cfg)
        pl = plan_with_originals(model, obj, cfg, origins)
        if cfg.dry_run:
            stages.close()
            return {"plan": pl.as_dict(), "work": work(obj, cfg, pl.choices["hvp_method"], model),
                    "config": {**cfg.as_dict(), "n_params": P.numel(obj.params)}}
        plans.check_fits(pl, plans.free_bytes(obj.device), "sharpness")
        L0 = obj.value()
        if not math.isfinite(L0):
            raise UserError(f"the loss at the checkpoint is {L0}: curvature is undefined (NaN/inf weights, or "
                            "an overflowing dtype: try float32)")
        if pl.choices.get("lanczos_q") == "disk":  # the two-vector recurrence with q on disk (see plan)
            cfg = replace(cfg, reorth="none", basis="disk")
        op = _operator(obj, cfg, pl.choices["hvp_method"], pl.choices.get("weights_copy", "memory"))
        out: dict = {}
        details: dict = {}
        hvps = _curvature(op, cfg, (out, details), stages)
        graph_cached = op.cached
        op.release()  # the measures below move the weights; free the kept graph first
        with _saved_on_disk(obj, pl.choices.get("sharpness_copy") == "disk", cfg.basis_dir):
            _sharpness(obj, cfg, (out, details), stages)
    if cfg.per_layer:
        stages.next("per-layer")
        out["per_layer"], layer_hvps = _per_layer(model, batches, cfg, progress, pl.choices["hvp_method"])
        hvps += layer_hvps
    stages.close()
    out["details"] = details
    eig = {**details["eigen"], "weights_dtype": str(obj.params[0].dtype).replace("torch.", "")} \
        if details.get("eigen") else None
    hvp = {**op.describe(), **_accuracy(eig, cfg), "compute_dtype": str(obj.params[0].dtype).replace("torch.", "")}
    config_out = {**cfg.as_dict(), "n_params": sum(p.numel() for p in obj.leaves),
                  "dtype": weights_dtype, "version": landscape.__version__,
                  "shard": {"mode": "fsdp" if obj.sharded else "none", "processes": dist.world()}}
    cost = {"hvps": hvps, "seconds": round(time.perf_counter() - t0, 3), "graph_cached": graph_cached,
            **P.peak_memory(obj.device), "planned_peak_gb": round(pl.peak / 2**30, 3),
            "basis": (details.get("eigen") or {}).get("basis"),
            **({"originals": pl.choices.get("originals", "device")} if origins else {})}
    if dist.world() > 1:  # every process's own peak (under sharding each holds its rows only)
        cost["peak_rss_gb_per_process"] = [round(b / 2**30, 3) for b in dist.all_gather_object(P.peak_rss())]
    res = {"loss": L0, "tokens": obj.n_tokens, "metrics": out, "hvp": hvp, "config": config_out, "cost": cost}
    if hvp.get("untrusted"):  # the eigenvalues cannot be trusted to tol: null, with the reason
        res["nulls"] = {k: hvp["untrusted"] for k in ("lambda_max", "eigenvalues", "lambda_min") if k in out}
        for k in res["nulls"]:
            out[k] = None
    return res


@contextlib.contextmanager
def _saved_on_disk(obj, wanted: bool, directory: str | None):
    """Inside the block ``obj.origin`` is a disk copy of the weights (read back parameter by parameter)
    that ε/SAM/ASAM/average sharpness restore from, when ``wanted`` and no exact copy is held already."""
    if not wanted or obj.origin is not None:
        yield
        return
    from landscape.measures.hessian.basis import DiskVector

    store = DiskVector.of([p.detach() for p in obj.params], directory)
    obj.origin = store.views(obj.params)
    try:
        yield
    finally:
        obj.origin = None
        store.close()


def _basis_fitted(model, obj, cfg: SharpnessConfig) -> SharpnessConfig:
    """``cfg`` with the Lanczos basis's default budget cut to what the rest of the run leaves free
    (the graph, the activations, the working vectors), so that ``auto`` keeps a smaller basis, or
    none (the two-vector recurrence), rather than choose a basis the plan then refuses (seen in the
    real study: a 10-vector basis within half the free memory, beside an HVP graph that did not fit).
    An explicit ``basis_memory`` is kept; the budget used is in the JSON's config."""
    from dataclasses import replace

    from landscape.measures.hessian.basis import default_budget

    if cfg.basis_memory is not None or cfg.method != "lanczos" or not {"lambda_max", "lambda_min"} & set(cfg.metrics):
        return cfg
    free = plans.free_bytes(obj.device)
    if free is None:
        return cfg
    lean = plan(model, obj, replace(cfg, reorth="none"))  # everything but a basis: two working vectors
    vec = P.numel(obj.params) * torch.empty((), dtype=_vector_dtype(cfg, obj.params)).element_size()
    room = int(plans.HEADROOM * free) - (lean.peak - lean.start) + 2 * vec  # a budget counts its two working vectors
    if room >= default_budget(obj.device):
        return cfg
    return replace(cfg, basis_memory=max(room, 1) / 2**30)  # bounds: positive (1 byte: no basis in memory)


def _vector_dtype(cfg: SharpnessConfig, params):
    if cfg.vector_dtype == "auto":
        return torch.promote_types(params[0].dtype, torch.float32)
    return getattr(torch, cfg.vector_dtype)


def _operator(obj, cfg: SharpnessConfig, method: str, origin_place: str = "memory"):
    from landscape.measures.hessian.basis import OnDisk

    origin = getattr(obj, "origin", None)
    if origin is None and origin_place == "disk":
        origin = OnDisk(cfg.basis_dir)
    return hessian.HessianOperator(obj, method, cfg.cache_graph, step=cfg.fd_step,
                                   vector_dtype=_vector_dtype(cfg, obj.params), order=cfg.fd_order, origin=origin)


def _accuracy(eigen: dict | None, cfg: SharpnessConfig) -> dict:
    """The products' measured error relative to λ_max; above ``tol`` the eigenvalues are known only to
    that accuracy, whatever the residual test said, and :func:`measure` reports them as null with this
    reason (``untrusted``) — never as the metric's value."""
    if not eigen or eigen.get("noise") is None or eigen.get("lambda_max") is None:
        return {}
    rel = eigen["noise"] / max(abs(eigen["lambda_max"]), 1e-300)
    out = {"noise": eigen["noise"], "noise_rel": rel}
    if rel > cfg.tol:
        out["untrusted"] = (f"the HVPs' measured error (linearity defect {eigen['noise']:.3g}) is {rel:.1e} of the "
                            f"estimate {eigen['lambda_max']:.4g}, above tol {cfg.tol:g}: no eigenvalue to that accuracy; "
                            "an exact hvp_method (reverse) where it fits, a larger tol, or a larger fd_step / "
                            "fd_order 4")
    return out


def plan_with_originals(model, obj, cfg: SharpnessConfig, origins) -> "plans.Plan":
    """:func:`plan`, with the half-precision originals of a float32 view moved to host memory
    (:func:`landscape.foundation.params.offload`) when the plan does not fit the device beside them and
    does without them: they are read only to set and restore the weights (an fd product reads them
    over PCIe three times: ~3 s a product for a 13B's 26 GB at 25 GB/s, by the bus's rate — slower,
    not refused).
    ``choices["originals"]``: where they are; ``host_gb`` what the host then holds."""
    pl = plan(model, obj, cfg)
    if not origins or not _originals_may_go(obj.device, pl):
        return pl
    kept = P.nbytes(list(origins.values()))
    free_host = None if P.target() is not None else P.free_memory("cpu")
    if free_host is not None and kept > plans.HEADROOM * free_host:
        return pl
    P.offload(origins)
    obj.origin = [origins[id(p)] for p in obj.leaves]
    pl = plan(model, obj, cfg, originals_on_host=True)
    pl.choices.update(originals="host", host_gb=round(kept / 2**30, 3))
    return pl


def _originals_may_go(device, pl) -> bool:
    """Originals go to the host only from a device other than the host (a GPU, or the device of a plan
    for another machine) and only when the plan does not fit beside them."""
    if P.target() is None and torch.device(device).type == "cpu":
        return False
    return not pl.fits(plans.free_bytes(device))


def plan(model, obj, cfg: SharpnessConfig, originals_on_host: bool = False) -> "plans.Plan":
    """The memory plan of :func:`measure` (before anything is allocated): the starting footprint, one
    batch's measured activations, the weight-sized tensors of the costliest requested metric (``obj.origin``
    on the host: ``originals_on_host``); ``choices["hvp_method"]`` is what ``auto`` picks."""
    ps = obj.params
    kept = getattr(obj, "origin", None)  # exact originals held (a float32 view of half weights): no saved copy
    on_device = None if originals_on_host else kept
    start = plans.start_bytes(model, obj.device, kept=on_device)
    pending = plans.pending_bytes(P.nbytes(list(model.parameters())) + P.nbytes(on_device or []), obj.device)
    curv = {"lambda_max", "lambda_min", "trace", "density"} & set(cfg.metrics)
    act, act_fd = _activations(model, obj, cfg, bool(curv))
    free = plans.free_bytes(obj.device)
    vsize = torch.empty((), dtype=_vector_dtype(cfg, ps)).element_size()
    method = plans.resolve_hvp_method(ps, act, cfg.hvp_method, start, free, vsize, obj.sharded) if curv or cfg.per_layer \
        else (("fd" if obj.sharded else "reverse") if cfg.hvp_method == "auto" else cfg.hvp_method)
    unit, wide = P.nbytes(ps), P.numel(ps) * max(4, ps[0].element_size())
    copy = 0 if kept is not None else unit  # the saved weights of every measure that moves them
    grad = {"activations": act_fd, "gradient_stream": max(p.numel() * p.element_size() for p in ps),
            "transients": plans.transients(ps)}
    candidates = []
    disk = {}
    if curv or cfg.per_layer:
        # basis-free Lanczos and Hutchinson: two vectors; a Lanczos basis kept in memory (within its
        # budget) beside two working vectors; power iteration: the k found vectors, v, Av, two temporaries
        vecs = cfg.top_k + 4 if cfg.method == "power" else _lanczos_vectors(cfg, P.numel(ps), vsize, obj.device)
        def build(copy_on_disk: bool, q_on_disk: bool, vecs=vecs):
            p = plans.curvature(ps, act, method, vecs - int(q_on_disk), vsize, start, origin_held=kept is not None,
                                on_disk=(copy_on_disk and kept is None, q_on_disk))
            p.pending = pending
            if copy_on_disk and kept is None:
                p.parts["fd_weight_copy_on_disk"] = 0  # named, for the plan's reader: it costs no memory
            return p

        cur, disk = _curvature_plan(build, method == "fd" and vecs == 2, cfg, free, pending)
        candidates.append(cur)
    ball = [m for m in ("sam", "asam") if m in cfg.metrics]
    if ball:
        n = 1 + int(cfg.sam_steps > 1) + int("asam" in ball)  # the gradient/u, u beside it, ASAM's T
        candidates.append(plans.Plan("sharpness", {"weight_copy": copy, "vectors": n * wide, **grad}, start, unit))
    if "eps" in cfg.metrics:  # the gradient, z as int8 (int16) step counts; the box from the saved weights
        counts = P.numel(ps) * torch.empty((), dtype=_count_dtype(cfg.eps_steps)).element_size()
        candidates.append(plans.Plan("sharpness", {"weight_copy": copy, "vectors": wide + counts, **grad}, start,
                                     unit))
    if "eps_subspace" in cfg.metrics:  # the gradient, z, and the subspace's float64 directions
        vecs = 2 * wide + cfg.subspace * P.numel(ps) * 8
        candidates.append(plans.Plan("sharpness", {"weight_copy": copy, "vectors": vecs, **grad}, start, unit))
    if "avg" in cfg.metrics:
        candidates.append(plans.Plan("sharpness", {"weight_copy": copy, "activations": act_fd}, start, unit))
    moved = [c for c in candidates if "weight_copy" in c.parts]  # the measures that move the weights
    if moved and copy and cfg.weights_copy != "memory":  # their saved copy on disk when it does not fit otherwise
        worst = max(c.peak for c in moved)
        if cfg.weights_copy == "disk" or (free is not None and worst - start + pending > plans.HEADROOM * free):
            for c in moved:
                c.parts["weight_copy"] = 0
            disk["sharpness_copy"] = "disk"
    best = max(candidates, key=lambda p: p.peak) if candidates else plans.Plan("sharpness", {}, start, unit)
    best.pending = pending
    best.choices = {"hvp_method": method, "eigen_vectors": (cfg.top_k + 4 if cfg.method == "power" else 2) if curv else 0,
                    "free_gb": None if free is None else round(free / 2**30, 3), **disk}
    return best


def _activations(model, obj, cfg: SharpnessConfig, curv: bool) -> tuple:
    """(what the curvature plan gets: SDPA's activations, or with exact products possible the pair with
    math attention's — its B·H·T² attention weights —, and SDPA's alone for gradients and losses)."""
    act = plans.activation_bytes(model, obj.batches)
    if (curv or cfg.per_layer) and cfg.hvp_method != "fd" and not obj.sharded:
        return (act, plans.activation_bytes(model, obj.batches, exact=True)), act
    return act, act


def _curvature_plan(build, lean_fits: bool, cfg: SharpnessConfig, free, pending):
    """The curvature estimator's plan (``build(copy_on_disk, q_on_disk)``: fd with two working vectors
    when ``lean_fits``), and where fd's saved weights and the basis-free Lanczos's q go: in memory when
    that fits (or is asked), else the weights' copy on disk, else q on disk too (one weight-sized
    vector in memory: the weights, it and the products' transients; Hutchinson's z goes with q). Returns
    (plan, choices)."""
    # q on disk: the basis-free recurrence (asked, or auto's choice) computing nothing but eigenvalues
    basis_free = cfg.reorth == "none" or (cfg.reorth == "auto" and cfg.basis == "auto")
    # and Hutchinson's z (the same file: one vector at a time); Hutch++/XTrace sketches and SLQ stay
    eig = not {"lambda_max", "lambda_min"} & set(cfg.metrics) or (cfg.method == "lanczos" and basis_free)
    trace = "trace" not in cfg.metrics or cfg.trace_method == "hutchinson"
    lean_ok = lean_fits and eig and trace and "density" not in cfg.metrics
    fd = "fd_weight_copy" in build(False, False).parts
    if not fd or cfg.weights_copy == "memory":
        return build(False, False), {}
    options = [(True, False), (True, True)] if cfg.weights_copy == "disk" else [(False, False), (True, False), (True, True)]
    options = [o for o in options if lean_ok or not o[1]]
    for copy_on_disk, q_on_disk in options:
        p = build(copy_on_disk, q_on_disk)
        if p.fits(free) or (copy_on_disk, q_on_disk) == options[-1]:  # build() set p.pending
            return p, {"weights_copy": "disk" if copy_on_disk else "memory", "lanczos_q": "disk" if q_on_disk else "memory"}
    raise AssertionError("unreachable")


class _Stages:
    """One progress line over the requested metrics ("sharpness 3/6: trace"), above each
    estimator's own bar."""

    def __init__(self, cfg: SharpnessConfig, progress: bool):
        names = [m for m in cfg.metrics if m != "lambda_min" or "lambda_max" not in cfg.metrics]
        names = ["lambda" if m in ("lambda_max", "lambda_min") else m for m in names]
        self.bar = tqdm(total=len(names) + int(cfg.per_layer), desc="sharpness", disable=not progress,
                        position=0, bar_format="{desc}: {n_fmt}/{total_fmt} metrics done{postfix} [{elapsed}]")
        self.progress = progress
        self.started = False

    def next(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(f"now: {name}")

    def close(self) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()


# Forward-pass equivalents of one product, for the dry run's rough time: a gradient is about three
# forwards; an fd product two gradients; a double-backward product 2 (its graph kept: small models) to 8.
FORWARDS_PER = {"gradient": 3.0, "fd": 6.0, "exact": 5.0}


def work(obj, cfg: SharpnessConfig, method: str, model) -> dict:
    """What a measurement will cost, at most: Hessian-vector products, gradients and loss evaluations
    per metric (the stops of Lanczos/power iteration may end it sooner), and a rough time — one loss
    evaluation timed now, times the forward-pass equivalents of each (:data:`FORWARDS_PER`)."""
    names, per = cfg.metrics, {}
    if {"lambda_max", "lambda_min"} & set(names):
        per["lambda"] = {"hvps": cfg.max_iter + (3 if method == "fd" else 0)}
    if "trace" in names:
        per["trace"] = {"hvps": cfg.trace_samples}
    for key in ("eps", "eps_subspace"):
        if key in names:
            per[key] = {"gradients": cfg.eps_steps, "losses": cfg.eps_steps + 1}
    for key in ("sam", "asam"):
        if key in names:
            per[key] = {"gradients": cfg.sam_steps, "losses": 2}
    if "avg" in names:
        per["avg"] = {"losses": cfg.avg_samples + 1}
    if cfg.per_layer:
        per["per_layer"] = {"hvps": len(P.layer_groups(model)) * (cfg.max_iter + ("trace" in names) * cfg.trace_samples)}
    total = {k: sum(v.get(k, 0) for v in per.values()) for k in ("hvps", "gradients", "losses")}
    fwd = (total["hvps"] * FORWARDS_PER["fd" if method == "fd" else "exact"]
           + total["gradients"] * FORWARDS_PER["gradient"] + total["losses"])
    if P.target() is not None:  # another machine's speed cannot be timed here
        return {"at_most": total, "per_metric": per, "not_counted": [m for m in names if m == "density"],
                "forward_equivalents": fwd, "loss_seconds": None, "seconds_rough": None,
                "rough": "planned for another machine: not timed (forward-pass equivalents: gradient 3, fd product "
                         "6, exact 5)"}
    obj.value()  # the first evaluation pays one-time costs (allocator, kernels, lazy initialisation)
    t0 = time.perf_counter()
    obj.value()
    forward = time.perf_counter() - t0
    return {"at_most": total, "per_metric": per, "not_counted": [m for m in names if m == "density"],
            "forward_equivalents": fwd, "loss_seconds": round(forward, 6), "seconds_rough": round(forward * fwd, 1),
            "rough": "one loss evaluation timed now × forward-pass equivalents (gradient 3, fd product 6, exact 5); "
                     "within a factor of ~3; the counts are upper bounds (Lanczos usually stops sooner)"}


def _lanczos_vectors(cfg: SharpnessConfig, n: int, vsize: int, device) -> int:
    """Weight-sized vectors the eigenvalue run will hold: the basis :func:`hessian.lanczos` will keep in
    memory (the same choice, made on a stand-in of the operator's shape) and two working vectors, or
    the basis-free recurrence's two."""
    from types import SimpleNamespace

    from landscape.measures.hessian.basis import choose_basis, resolve_reorth

    if not {"lambda_max", "lambda_min"} & set(cfg.metrics):
        return 2
    op = SimpleNamespace(shape=(n, n), dtype={2: torch.bfloat16, 4: torch.float32, 8: torch.float64}[vsize],
                         device=torch.device(device))
    policy, wanted = hessian.BasisPolicy(**cfg.basis_policy()), cfg.top_k + int("lambda_min" in cfg.metrics)
    if resolve_reorth(op, policy, wanted, cfg.max_iter) == "none":
        return 2
    cap, where = choose_basis(op, policy, wanted, cfg.max_iter)
    held = where == "memory" or (where == "host" and op.device.type == "cpu")
    return cap + 2 if held else 2


def _eigen(op, cfg: SharpnessConfig, k: int, want_min: bool, progress: bool):
    if cfg.method == "lanczos":
        return hessian.lanczos(op, k=k, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed, want_min=want_min,
                               progress=progress, basis=hessian.BasisPolicy(**cfg.basis_policy()))
    return hessian.power_iteration(op, k=k, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed, want_min=want_min,
                                   progress=progress)


def _trace(op, cfg: SharpnessConfig, progress: bool):
    """The trace by the configured estimator, with ``trace_samples`` HVPs."""
    return hessian.TRACE_METHODS[cfg.trace_method](op, cfg.trace_samples, seed=cfg.seed, progress=progress,
                                                   basis=hessian.BasisPolicy(**cfg.basis_policy()))


def _curvature(op, cfg: SharpnessConfig, into: tuple, stages) -> int:
    """λ_max/λ_min, trace and density into ``out``; returns the HVPs spent."""
    (out, details), names, hvps, progress = into, cfg.metrics, 0, stages.progress
    if "lambda_max" in names or "lambda_min" in names:
        stages.next("lambda (Lanczos)" if cfg.method == "lanczos" else "lambda (power iteration)")
        sp = _eigen(op, cfg, cfg.top_k, "lambda_min" in names, progress)
        if "lambda_max" in names:
            out["lambda_max"], out["eigenvalues"] = sp.lambda_max, sp.eigenvalues
        if "lambda_min" in names:
            out["lambda_min"] = sp.lambda_min
        details["eigen"] = sp.as_dict()
        hvps += sp.hvps
        if op.method == "fd" and sp.noise is None:  # a basis was kept: measure the products' error anyway
            c = hessian.Counted(op)
            details["eigen"]["noise"] = linearity_defect(c, cfg.seed)
            hvps += c.calls
    if "trace" in names:
        stages.next(f"trace ({cfg.trace_method}, {cfg.trace_samples} HVPs)")
        tr = _trace(op, cfg, progress)
        out["hessian_trace"], out["hessian_trace_stderr"] = tr.trace, tr.stderr
        details["trace"] = tr.as_dict()
        hvps += tr.hvps
    if "density" in names:
        stages.next("density")
        density = hessian.spectral_density(op, seed=cfg.seed, progress=progress,
                                           basis=hessian.BasisPolicy(**cfg.basis_policy()))
        out["density"] = density.as_dict()
        hvps += density.hvps
    return hvps


def _sharpness(obj, cfg: SharpnessConfig, into: tuple, stages) -> None:
    """ε-, SAM-, ASAM- and average sharpness into ``out`` (each moves and restores the weights)."""
    (out, details), names, progress = into, cfg.metrics, stages.progress
    for key, subspace in (("eps", None), ("eps_subspace", cfg.subspace)):
        if key in names:
            stages.next(key)
            r = eps_sharpness(obj, eps=cfg.eps, steps=cfg.eps_steps, subspace=subspace, seed=cfg.seed,
                              progress=progress, rho=cfg.rho)
            out[RESULT_KEYS[key]] = r["eps_sharpness"]
            details[key] = r
    for key, adaptive in (("sam", False), ("asam", True)):
        if key in names:
            stages.next(key)
            r = ball_sharpness(obj, rho=cfg.rho, steps=cfg.sam_steps, adaptive=adaptive, seed=cfg.seed,
                               progress=progress)
            out[RESULT_KEYS[key]] = r["sharpness"]
            details[key] = r
    if "avg" in names:
        stages.next("avg")
        r = avg_sharpness(obj, sigma=cfg.sigma, samples=cfg.avg_samples, seed=cfg.seed, progress=progress)
        out["avg_sharpness"], out["avg_sharpness_stderr"] = r["avg_sharpness"], r["stderr"]


def _per_layer(model, batches, cfg: SharpnessConfig, progress: bool, method: str) -> tuple[dict, int]:
    """λ_max (and the trace, when asked) of each transformer block's own Hessian."""
    layers, hvps = {}, 0
    base_pat = re.compile(cfg.params) if cfg.params else None
    for group, regex in P.layer_groups(model).items():
        sel = {n: p for n, p in P.select(model, regex).items() if base_pat is None or base_pat.search(n)}
        if not sel:
            continue
        with P.grad_only(model, sel.values()):
            op = _operator(ModelObjective(model, batches, sel), cfg, method)
            sp = _eigen(op, cfg, 1, False, progress)
            row = {"lambda_max": sp.lambda_max, "converged": sp.converged, "n_params": P.numel(op.obj.params)}
            hvps += sp.hvps
            if "trace" in cfg.metrics:
                tr = _trace(op, cfg, progress)
                row.update(hessian_trace=tr.trace, hessian_trace_stderr=tr.stderr)
                hvps += tr.hvps
            op.release()
        layers[group] = row
    return layers, hvps
