"""What the general loss predicts about forgetting: curvature at the base along the update Δw.

For a fine-tune Δw = w_tuned − w_base, the forgetting of the old (general) objective is

    F = L(w_base + Δw) − L(w_base) ≈ F̂ = gᵀΔw + ½ ΔwᵀHΔw ≤ gᵀΔw + ½ λ_max(H) ‖Δw‖²,

with g and H the gradient and Hessian of the *general* loss at the *base* (Mirzadeh et al. 2020,
"Understanding the role of training regimes in continual learning", eq. 3–5; the base of an LLM is
not a minimiser of the evaluation text, so the gradient term stays). Lower curvature along the update
(κ = ΔwᵀHΔw/‖Δw‖², the Rayleigh quotient of H at Δw — one HVP) and a shorter update mean less
forgetting. :func:`measure_pair` measures every term, the exact loss along the line
w_base + tΔw (F itself at t = 1, and how much of it the quadratic explains), and the same quantities
at the tuned weights (F expanded there: F ≈ g_tᵀΔw − ½ΔwᵀH_tΔw).

Everything is a function of an :class:`~landscape.foundation.objective.Objective` whose parameters
hold the *base* weights, and the update Δw; the parameters are bit-identical afterwards
(:func:`landscape.foundation.params.perturbed`). The tuned point is rebuilt as w_base + Δw with Δw
formed in float32 — exact wherever the subtraction is (Sterbenz: w_t within a factor 2 of w_b),
otherwise within half an ulp of the stored weight.

Memory: besides the model and the graph of one HVP, Δw, a saved copy of the base, the gradient and
H·Δw — four weight-sized vectors (2.2 GB for SmolLM2-135M); where that does not fit a CPU's memory,
Δw and the saved copy go to temporary files, read a piece at a time, and one vector is held (a
float32 1.5B model: 7.1 GB instead of 28). λ_max(H) at the base is computed once per base and shared
by all its fine-tunes (:func:`base_lambda_max`).
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict

import numpy as np
import torch
from landscape.foundation.progress import tqdm

import landscape
from landscape.foundation import params as P
from landscape.foundation.configs import PREDICTOR_METRICS, DataConfig, LoadConfig, PredictConfig
from landscape.foundation.errors import UserError
from landscape.foundation.objective import ModelObjective, gradient
from landscape.measures import hessian
from landscape.measures.critical import critical_step
from landscape.measures.hessian.basis import DiskVector, OnDisk


def update_vector(names: list, base_params: list, tuned_named: dict, on_disk: bool = False) -> P.Vector:
    """Δw = w_tuned − w_base per parameter name, in the wider of float32 and the parameter's dtype
    (a float64 model keeps a float64 update); names and shapes must match. Two sharded models (the
    same layout): this rank's rows of Δw. ``on_disk``: written to a temporary file one parameter at a
    time and returned as its lazily read pieces (the same values; no weight-sized vector in memory)."""
    from landscape.measures.directions import _check_target

    _check_target(OrderedDict(zip(names, base_params)), tuned_named)
    local = [P.local(w) for w in base_params]
    wide = torch.promote_types(local[0].dtype, torch.float32)
    disk = DiskVector(sum(w.numel() for w in local), wide, local[0].device) if on_disk else None
    out, at = [], 0
    for n, w in zip(names, local):
        d = P.local(tuned_named[n]).detach().to(w.device, wide) - w.detach().to(wide)
        if disk is None:
            out.append(d)
        else:
            disk.write(at, d)
            at += d.numel()
    return out if disk is None else disk.views(local)


def hvp_method(obj, asked: str = "auto") -> str:
    """The HVP method for ``obj``: ``asked``, or for "auto" exact when its plan fits the free memory."""
    from landscape.foundation import plan as plans

    if asked != "auto":
        return asked
    dev = obj.params[0].device
    if not hasattr(obj, "model"):  # a closed form: no activations, nothing but its tensors
        return plans.resolve_hvp_method(obj.params, 0, "auto", P.footprint(dev), plans.free_bytes(dev))
    act = plans.activation_bytes(obj.model, obj.batches)
    if not obj.sharded:  # exact products hold math attention's activations
        act = (act, plans.activation_bytes(obj.model, obj.batches, exact=True))
    return plans.resolve_hvp_method(obj.params, act, "auto", plans.start_bytes(obj.model, dev), plans.free_bytes(dev),
                                    sharded=obj.sharded)


def _curvature_along(obj, delta: P.Vector, method: str = "reverse", origin=None) -> tuple[float, float, float]:
    """(L, gᵀΔw, ΔwᵀHΔw) of ``obj`` at its current weights: one gradient and one HVP (``origin``: an
    exact copy of the current weights the caller holds, which fd products restore from)."""
    L, g = gradient(obj)
    split = getattr(obj, "sharded", False)
    g_delta = float(P.dot(g, delta, split))
    del g
    op = hessian.HessianOperator(obj, method, "off", origin=origin)  # one product: no graph worth keeping
    hd = op.hvp(delta)
    return L, g_delta, float(P.dot(delta, hd, split))


def _block_norms(names: list, base: list, delta: P.Vector, groups: dict, sharded: bool) -> dict:
    """‖Δw‖ and ‖Δw‖/‖w_base‖ of each block (a transformer layer, or the rest)."""
    import re

    out = {}
    for g, rx in groups.items():
        pat = re.compile(rx)
        idx = [i for i, n in enumerate(names) if pat.search(n)]
        if not idx:
            continue
        dn = float(P.norm([delta[i] for i in idx], sharded))
        wn = float(P.norm([base[i] for i in idx], sharded))
        out[g] = {"delta_norm": dn, "delta_rel": dn / wn if wn > 0 else None}
    return out


def _line(obj, origin, delta, ts, progress: bool) -> list[float]:
    """L(w_base + tΔw) for each t, each point set from the saved origin (no walk)."""
    return [_loss_at(obj, origin, delta, t) for t in tqdm(ts, desc="line base→tuned", disable=not progress,
                                                             leave=False)]


def _loss_at(obj, origin, delta, t: float) -> float:
    P.set_offset(obj.params, origin, delta, alpha=float(t))
    return obj.value()


# bytes of next-token log-probabilities (two models' B·T·V float32) one KL pass may hold at once
KL_BUDGET = 1 << 28


@torch.no_grad()
def next_token_log_probs(model, batch) -> torch.Tensor:
    """log p(next token) at the loss-bearing positions of ``batch``, one row each over the vocabulary,
    in the wider of float32 and the model's dtype (a float64 model stays float64)."""
    from landscape.foundation.data import IGNORE
    from landscape.foundation.loss import logits_of

    logits = logits_of(model, batch)[:, :-1][batch.labels[:, 1:] != IGNORE]
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def kl_sums(lb: torch.Tensor, lt: torch.Tensor) -> tuple[float, float]:
    """(Σ p_b log(p_b/p_t), Σ p_t log(p_t/p_b)) over the rows of two tables of log-probabilities, summed
    in float64 — the token sums of the two KL predictors."""
    d = lb - lt
    return float((lb.exp() * d).sum(dtype=torch.float64)), -float((lt.exp() * d).sum(dtype=torch.float64))


@torch.no_grad()
def kl_divergences(obj, origin, delta) -> dict:
    """Token-mean KL divergences between the base's and the tuned model's next-token distributions
    over the loss-bearing positions of ``obj``'s batches (Shenfeld et al. 2025, "RL's Razor": forgetting
    follows KL(base ‖ tuned) on the new task's data):

        kl_base_tuned = E_t[Σ_v p_base(v) log p_base(v)/p_tuned(v)],  kl_tuned_base the reverse.

    Forward passes only; the weights hold the base on entry and on exit (each point set from
    ``origin``, never walked). Memory: both models' log-probabilities for as many rows of a batch as
    :data:`KL_BUDGET` allows (one sequence at least: 2·T·V float32), not B·T·V twice for a batch; the
    sums in float64. Sharded or several processes: each its share of the batches, summed over ranks."""
    from landscape.foundation import distributed as dist
    from landscape.foundation.data import IGNORE, Batch

    ps = obj.params
    sums = torch.zeros(2, dtype=torch.float64)
    for b, weight in obj.local_batches:
        B, T = b.input_ids.shape
        vocab = int(getattr(obj.model.config, "vocab_size", 0) or 1)
        # sharded, every rank runs as many forwards (FSDP's collectives): a batch in one piece, and the
        # padding batches (weight 0) run too
        rows = B if obj.lockstep else max(1, min(B, KL_BUDGET // max(1, 2 * 4 * T * vocab)))
        for a in range(0, B, rows):
            piece = Batch(b.input_ids[a:a + rows], b.attention_mask[a:a + rows], b.labels[a:a + rows])
            keep = piece.labels[:, 1:] != IGNORE
            if not obj.lockstep and (weight == 0 or not bool(keep.any())):
                continue
            P.restore(ps, origin)
            lb = next_token_log_probs(obj.model, piece)
            P.set_offset(ps, origin, delta)
            lt = next_token_log_probs(obj.model, piece)
            sums += torch.tensor(kl_sums(lb, lt), dtype=torch.float64) * weight
            del lb, lt
    P.restore(ps, origin)
    n = obj.n_tokens
    kl = [dist.all_reduce_scalar(float(x)) / n for x in sums]
    return {"kl_base_tuned": kl[0], "kl_tuned_base": kl[1]}


def measure_pair(obj, delta: P.Vector, config: PredictConfig | None = None, lambda_max: float | None = None,
                 groups: dict | None = None, progress: bool = False, on_disk: bool = False) -> dict:
    """The forgetting predictors of the update ``delta`` from the base weights ``obj.params`` hold.

    ``lambda_max``: λ_max of the general Hessian at the base (:func:`base_lambda_max`), for the bound;
    ``groups``: block name → parameter-name regex (:func:`landscape.foundation.params.layer_groups`)
    for per-block norms. ``on_disk``: the saved base weights (and fd's saved tuned weights) live in
    temporary files, read a piece at a time — with Δw on disk too (:func:`update_vector`) the
    measurement holds one weight-sized vector (the gradient, then H·Δw). Returns ``metrics`` (the keys of
    :data:`~landscape.foundation.configs.PREDICTOR_METRICS`), the line, the share of F the quadratic
    explains, and per-block norms. The weights are bit-identical afterwards.
    """
    cfg = config or PredictConfig()
    ts = cfg.coords()
    ps, split = obj.params, getattr(obj, "sharded", False)
    dn2 = float(P.dot(delta, delta, split))
    if dn2 == 0:
        raise UserError("the tuned weights equal the base's (Δw = 0): nothing to predict")
    method = hvp_method(obj, cfg.hvp_method)
    with P.perturbed(ps, origin=saved_base(ps, getattr(obj, "origin", None), on_disk)) as origin:
        wn = float(P.norm(origin, split))
        L0, g_delta, dhd = _curvature_along(obj, delta, method, origin)
        losses = _line(obj, origin, delta, ts, progress)
        crit = critical_step(lambda t: _loss_at(obj, origin, delta, t) > L0)
        kl = kl_divergences(obj, origin, delta) if hasattr(obj, "local_batches") else \
            {"kl_base_tuned": None, "kl_tuned_base": None}  # a closed-form objective has no distributions
        tuned = None
        if cfg.at_tuned:
            P.set_offset(ps, origin, delta)
            L1, gt_delta, dhd_t = _curvature_along(obj, delta, method, OnDisk() if on_disk else None)
            tuned = {"loss": L1, "grad_delta_tuned": gt_delta, "kappa_tuned": dhd_t / dn2,
                     "quad_pred_tuned": gt_delta - 0.5 * dhd_t, "delta_hessian_delta": dhd_t}
        blocks = _block_norms(getattr(obj, "names", [str(i) for i in range(len(ps))]), origin, delta, groups, split) \
            if groups else {}
    i0, i1 = int(np.argmin(np.abs(ts))), int(np.argmin(np.abs(ts - 1)))
    F = losses[i1] - losses[i0]
    quad = g_delta + 0.5 * dhd
    q_line = ts * g_delta + 0.5 * ts ** 2 * dhd
    dl = np.asarray(losses) - losses[i0]
    ss_tot = float(((dl - dl.mean()) ** 2).sum())
    metrics = {"delta_norm": math.sqrt(dn2), "delta_rel": math.sqrt(dn2) / wn if wn > 0 else None,
               "grad_delta": g_delta, "kappa_base": dhd / dn2, "quad_pred": quad,
               "bound": g_delta + 0.5 * lambda_max * dn2 if lambda_max is not None else None,
               "general_loss_increase": F, "critical_sharpness": crit["lambda_c"], **kl}
    if tuned:
        metrics.update({k: tuned[k] for k in ("grad_delta_tuned", "kappa_tuned", "quad_pred_tuned")})
    return {
        "metrics": metrics,
        "loss_base": L0, "loss_tuned": losses[i1], "delta_hessian_delta": dhd, "lambda_max_base": lambda_max,
        "explained": quad / F if F != 0 else None,  # share of the measured F the quadratic predicts
        "residual": F - quad,
        "line": {"t": ts.tolist(), "loss": losses, "quadratic": (losses[i0] + q_line).tolist(),
                 "r2": 1.0 - float(((dl - q_line) ** 2).sum()) / ss_tot if ss_tot > 0 else None},
        "at_tuned": tuned, "per_block": blocks, "hvp_method": method, "critical": crit,
        "where": {k: PREDICTOR_METRICS[k][0] for k in metrics},
    }


def saved_base(params, origin, on_disk: bool):
    """What :func:`params.perturbed` restores from: ``origin`` when the caller holds an exact copy, a
    temporary file of the weights when ``on_disk``, else None (it copies them into memory)."""
    if origin is not None or not on_disk:
        return origin
    return DiskVector.of([p.detach() for p in params]).views(params)


def base_lambda_max(obj, config: PredictConfig | None = None, progress: bool = False, on_disk: bool = False) -> dict:
    """λ_max of the general Hessian at the base (Lanczos; its memory policy as `landscape sharpness`).
    ``on_disk`` (the predictors' vectors went to disk): fd's saved weights and the recurrence's second
    vector too — one weight-sized vector in memory."""
    cfg = config or PredictConfig()
    method = hvp_method(obj, cfg.hvp_method)
    origin = getattr(obj, "origin", None)
    op = hessian.HessianOperator(obj, method, "auto", origin=origin if origin is not None or not on_disk else OnDisk())
    sp = hessian.lanczos(op, k=1, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed, want_min=False,
                         progress=progress, basis=hessian.BasisPolicy(reorth="none", where="disk") if on_disk else None)
    op.release()
    out = sp.as_dict()
    if sp.noise is not None and sp.noise > cfg.tol * abs(sp.lambda_max):  # not known to tol: null, and why
        out["estimate"], out["lambda_max"] = sp.lambda_max, None
        out["null_reason"] = (f"fd products' measured error {sp.noise:.3g} is above tol {cfg.tol:g} of the estimate "
                              f"{sp.lambda_max:.4g}")
    return out


def predict(base, tuned, config: PredictConfig | None = None, data: DataConfig | None = None, *,
            load: LoadConfig | None = None, progress: bool = False) -> dict:
    """`landscape predict`: the forgetting predictors of every checkpoint in ``tuned`` (paths) against
    ``base`` (a path), on ``data`` (general text; default the embedded eval data).

    The base is loaded once and holds the weights throughout; each tuned checkpoint is loaded only
    to form Δw. Returns ``{"base", "data", "lambda_max_base", "results": [...], "config", "cost"}``.
    """
    from landscape.foundation import checkpoint
    from landscape.foundation import plan as plans
    from landscape.foundation.data import batches_for

    cfg, load = config or PredictConfig(), load or LoadConfig()
    tuned = [tuned] if isinstance(tuned, (str, os.PathLike)) else list(tuned)
    if not tuned:
        raise UserError("give at least one tuned checkpoint")
    for p in [base, *tuned]:  # every path checked before anything is measured
        checkpoint.inspect_checkpoint(p, trust_pickle=load.trust_pickle, config_only=P.target() is not None)
    t0 = time.perf_counter()
    ck = checkpoint.load_checkpoint(base, load, curvature=True)
    P.reset_peak(ck.device)
    bs = batches_for(ck, data)
    session = Session(ck.model, bs, cfg, kl_batches(ck, cfg, data))
    pl = session.plan()
    if cfg.dry_run:
        return {"base": str(base), "tuned": [str(t) for t in tuned], "plan": pl.as_dict()}
    plans.check_fits(pl, plans.free_bytes(ck.device), "predict")
    results = []
    for path in tqdm(tuned, desc="checkpoints", disable=not progress or len(tuned) == 1):
        tk = checkpoint.load_checkpoint(path, load, curvature=True)
        delta, fp = session.delta(dict(tk.model.named_parameters())), tk.fingerprint
        del tk  # Δw is formed: the tuned weights are not needed for the measurement
        r = session.measure(delta=delta, progress=progress)
        r.pop("lambda_max_run")  # reported once, at the top
        results.append({"tuned": str(path), "tuned_fingerprint": fp, **r})
        del delta
    return {"base": str(base), "base_fingerprint": ck.fingerprint,
            "data": {"path": bs.source, "fingerprint": bs.fingerprint, **bs.config}, "tokens": bs.n_tokens,
            "lambda_max_base": session.lambda_max, "results": results,
            "config": {**cfg.as_dict(), "version": landscape.__version__},
            "cost": {"seconds": round(time.perf_counter() - t0, 3), **P.peak_memory(ck.device),
                     "planned_peak_gb": round(pl.peak / 2**30, 3), "plan": pl.as_dict()}}


def kl_batches(ck, cfg: PredictConfig, data: DataConfig | None):
    """The batches of ``cfg.kl_data`` (the task data of the KL predictors) with the general data's
    batch size and length, or None when none is asked for."""
    from landscape.foundation.data import batches_for

    if cfg.kl_data is None:
        return None
    d = data or DataConfig()
    return batches_for(ck, DataConfig(data=cfg.kl_data, batch_size=d.batch_size, max_length=d.max_length,
                                      num_batches=d.num_batches))


class Session:
    """A base model on general data, measured against many fine-tunes: λ_max(H_base) once, then
    :func:`measure_pair` per fine-tune (what `predict` and the batch runner share)."""

    def __init__(self, model, batches, config: PredictConfig, kl_batches=None):
        self.model, self.batches, self.cfg = model, batches, config
        self.kl_batches = kl_batches  # the task data of kl_*_task (``config.kl_data``), or None
        self.selected = P.select(model, config.params)
        self.groups = P.layer_groups(model)
        self._lambda = None
        self.on_disk = None  # Δw and the saved base on disk (decided by :meth:`plan`)

    @property
    def lambda_max(self) -> dict | None:
        return self._lambda

    def _objective(self):
        return ModelObjective(self.model, self.batches, self.selected)

    def plan(self) -> "plans.Plan":
        """The memory plan of one fine-tune's measurement (:func:`landscape.foundation.plan.predict`):
        Δw and the saved base weights in memory when that fits, else on disk (``on_disk``)."""
        from landscape.foundation import plan as plans

        with P.grad_only(self.model, self.selected.values()):
            obj = self._objective()
            dev = obj.params[0].device
            act = plans.activation_bytes(obj.model, obj.batches)
            if self.cfg.hvp_method != "fd" and not obj.sharded:  # exact products: math attention's too
                act = (act, plans.activation_bytes(obj.model, obj.batches, exact=True))
            start, free = plans.start_bytes(obj.model, dev), plans.free_bytes(dev)
            method = plans.resolve_hvp_method(obj.params, act, self.cfg.hvp_method, start, free, sharded=obj.sharded)
            pl = plans.predict(obj.params, act, method, start)
            # a CPU's vectors may go to disk (a GPU's stay: read back over PCIe for every product)
            if not pl.fits(free) and dev.type == "cpu" and not obj.sharded:
                pl = plans.predict(obj.params, act, method, start, on_disk=True)
            self.on_disk = pl.choices["vectors_on_disk"]
            return pl

    def delta(self, tuned_named: dict) -> P.Vector:
        """Δw = w_tuned − w_base over the selected parameters (the tuned model may go afterwards); on
        disk when the plan put it there."""
        if self.on_disk is None:
            self.plan()
        return update_vector(list(self.selected), list(self.selected.values()), tuned_named, self.on_disk)

    def measure(self, tuned_named: dict | None = None, progress: bool = False, delta: P.Vector | None = None) -> dict:
        """Predictors of the fine-tune whose parameters are ``tuned_named`` (name → tensor), or of
        its update ``delta`` (:meth:`delta`)."""
        from landscape.measures.sharpness import float32_view

        delta = self.delta(tuned_named) if delta is None else delta
        with float32_view(self.model, self.selected.values(), "predict") as origins, \
                P.grad_only(self.model, self.selected.values()):
            obj = self._objective()
            obj.origin = [origins[id(p)] for p in obj.leaves] if origins else None
            if self.cfg.lambda_max and self._lambda is None:
                self._lambda = base_lambda_max(obj, self.cfg, progress, on_disk=bool(self.on_disk))
            lam = self._lambda["lambda_max"] if self._lambda else None
            r = measure_pair(obj, delta, self.cfg, lambda_max=lam, groups=self.groups, progress=progress,
                             on_disk=bool(self.on_disk))
            if self.kl_batches is not None:
                task = ModelObjective(self.model, self.kl_batches, self.selected)
                with P.perturbed(task.params, origin=saved_base(task.params, obj.origin, self.on_disk)) as origin:
                    kl = kl_divergences(task, origin, delta)
                r["metrics"].update({f"{k}_task": v for k, v in kl.items()})
                r["where"].update({f"{k}_task": PREDICTOR_METRICS[f"{k}_task"][0] for k in kl})
        return {**r, "lambda_max_run": self._lambda}  # how λ_max(H_base) was found (HVPs, convergence)
