"""Fine-tuning: AdamW, SAM or ASAM over fixed batches, writing HF checkpoints; resumable.

The loop minimises the shared loss of :mod:`landscape.foundation.loss` (token-weighted mean CE), so the loss it
logs is the loss every measurement reports. One optimizer step consumes ``grad_accum`` micro-batches;
their losses are weighted by their share of the step's loss tokens, so accumulation over k
micro-batches gives the gradient of the concatenated batch (exactly, for AdamW).

SAM/ASAM (see :mod:`landscape.training.sam`): per micro-batch, pass 1 takes g_k = ∇L_k(w) (under ``no_sync``
when the model is DDP-wrapped), the weights move to w + ε_k, pass 2 accumulates ∇L_k(w + ε_k) into
``.grad``, and the weights are restored bit-exactly; after the last micro-batch the accumulated
gradient is clipped and the base optimizer (AdamW, with weight decay and the LR schedule) steps from
w. Two forward/backward passes per micro-batch, against one for AdamW.

Batch order is a seeded permutation per epoch; a run is a pure function of (model, data, config), and
``resume`` from a saved training state continues it to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from landscape.foundation.progress import tqdm

import landscape
from landscape.foundation import distributed as dist
from landscape.foundation import params as P
from landscape.foundation.configs import ConfigError, FinetuneConfig, LoadConfig
from landscape.foundation.errors import Interrupted, UserError
from landscape.foundation.io import atomic_write, dumps
from landscape.foundation.loss import batch_term, evaluate, param_device
from landscape.training.sam import SAM


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 10% of ``lr`` at ``total``."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def batch_order(n_batches: int, n: int, seed: int) -> list[int]:
    """Which batch each micro-step uses: a fresh seeded permutation every epoch."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < n:
        order += torch.randperm(n_batches, generator=g).tolist()
    return order[:n]


def make_optimizer(params, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW, or SAM/ASAM around AdamW (weight decay in the base step only). bf16/fp16 weights take
    :class:`~landscape.training.rounding.StochasticAdamW` (float32 arithmetic, stochastic rounding back):
    torch's AdamW on them loses every update below half a weight's spacing."""
    params = list(params)
    base, extra = torch.optim.AdamW, {}
    if P.is_half(params):
        from landscape.training.rounding import StochasticAdamW

        base, extra = StochasticAdamW, {"seed": cfg.seed}
    if cfg.optimizer == "adamw":
        return base(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    return SAM(params, base, rho=cfg.rho, adaptive=cfg.optimizer == "asam", eta=cfg.eta,
               lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def _no_sync(model, on: bool):
    """DDP's ``no_sync`` when asked for and available; otherwise nothing."""
    return model.no_sync() if on and hasattr(model, "no_sync") else contextlib.nullcontext()


def _autocast(device: torch.device, on: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


@dataclass
class TrainState:
    """What a resume needs: the step reached, weights, optimizer state and the log so far."""

    step: int = 0
    log: list = field(default_factory=list)
    evals: list = field(default_factory=list)


def train_step(model, opt, micro, cfg: FinetuneConfig, lr: float, n_tok: int | None = None, scale: int = 1) -> dict:
    """One optimizer step over the micro-batches ``micro`` (a list of Batch). Returns the log row.

    ``n_tok``: loss tokens of the whole (global) step, default those of ``micro``. ``scale``: the
    number of DDP processes, whose gradient averaging the loss is multiplied back from (so the
    all-reduced gradient is the gradient of the global step's token-weighted loss).
    """
    device = param_device(model)
    params = [p for g in opt.param_groups for p in g["params"]]
    n_tok = n_tok or sum(b.n_tokens for b in micro)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    sam = opt if isinstance(opt, SAM) else None
    loss_sum, norms = 0.0, []
    for k, b in enumerate(micro):
        b = b.to(device)
        last = k == len(micro) - 1
        if sam is None:
            with _no_sync(model, not last), _autocast(device, cfg.bf16):
                loss = batch_term(model, b, n_tok) * scale
            with _no_sync(model, not last):
                loss.backward()
            loss_sum += float(loss.detach()) / scale
            continue
        loss, grads = _first_pass(model, params, b, n_tok, (cfg.bf16, len(micro) > 1))
        loss_sum += float(loss.detach())
        norms.append(sam.first_step(list(grads), zero_grad=False))
        del grads
        try:  # pass 2: the gradient at w + ε_k, accumulated into .grad
            with _no_sync(model, not last):
                with _autocast(device, cfg.bf16):
                    loss2 = batch_term(model, b, n_tok) * scale
                loss2.backward()
        finally:
            sam.restore()
    _sum_replicated(model, params, [p.grad for p in params])
    gnorm = None
    if cfg.grad_clip:
        gnorm = clip_grad_norm(params, cfg.grad_clip)
    (sam.base_step if sam is not None else opt.step)()
    opt.zero_grad(set_to_none=True)
    row = {"loss": dist.all_reduce_scalar(loss_sum) if dist.world() > 1 else loss_sum, "lr": lr, "grad_norm": gnorm,
           "tokens": n_tok}
    if sam is not None:
        row["sam_grad_norm"] = sum(norms) / len(norms) if norms else None
    return row


def _first_pass(model, params, b, n_tok: int, how: tuple) -> tuple:
    """SAM's pass 1 on one micro-batch: (loss, the gradient at w) — this rank's own (DDP: under
    ``no_sync``), or under FSDP the micro-batch's global gradient (its rows summed by FSDP)."""
    bf16, several = how
    device = param_device(model)
    with _no_sync(model, True):
        with _autocast(device, bf16):
            loss = batch_term(model, b, n_tok)
        if not several or P.any_sharded(model.parameters()):
            # into .grad (one micro-batch: dropped before pass 2, no second buffer; FSDP's gradients
            # arrive only there), pass 2's sum so far set aside meanwhile
            kept = [p.grad for p in params]
            for p in params:
                p.grad = None
            loss.backward()
            grads = [p.grad for p in params]
            for p, g in zip(params, kept):
                p.grad = g
        else:  # .grad accumulates pass 2 of the earlier micro-batches: keep pass 1 apart
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    _sum_replicated(model, params, grads)
    return loss, grads


def _sum_replicated(model, params, grads) -> None:
    """On a sharded model, the gradients of the parameters every rank holds whole (a LoRA adapter's,
    which FSDP does not manage) summed over the ranks, in place — each rank saw its rows of the
    micro-batch; FSDP's own parameters were reduce-scattered already."""
    if P.any_sharded(model.parameters()):
        dist.all_reduce_([g for p, g in zip(params, grads) if g is not None and not P.is_sharded(p)])


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale the gradients so that their global ℓ2 norm is at most ``max_norm``; returns the norm
    before clipping. FSDP2 gradients (DTensors): each rank's rows, the squared norms all-reduced."""
    if not P.any_sharded(params):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    kept = [p for p in params if p.grad is not None]
    grads = [P.local(p.grad) for p in kept]
    total = float(P.mixed_sq_norm(grads, [P.is_sharded(p) for p in kept]).sqrt())  # rows over ranks; whole once
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


def train(model: torch.nn.Module, batches, cfg: FinetuneConfig, *, eval_batches=None, opt=None,
          state: TrainState | None = None, on_step=None, progress: bool = False) -> list[dict]:
    """Train ``model`` on ``batches`` for ``cfg.max_steps`` optimizer steps; returns the log (one dict
    per step).

    ``opt``/``state`` continue a run (resume); ``on_step(state, opt)`` is called after every step
    (saving, stopping). The model is left in eval mode. On the CPU, freed memory is reused from step to
    step (:func:`~landscape.foundation.params.reused_memory`).
    """
    if cfg.max_steps is None:
        raise ConfigError("max_steps", "must be set for train() (finetune() resolves it from epochs)")
    with P.reused_memory(param_device(model).type == "cpu"):
        return _train(model, batches, cfg, eval_batches, opt, state, on_step, progress)


def _train(model, batches, cfg: FinetuneConfig, eval_batches, opt, state, on_step, progress: bool) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = opt or make_optimizer(params, cfg)
    state = state or TrainState()
    steps, W, R = cfg.max_steps, dist.world(), dist.rank()
    sharded = P.any_sharded(model.parameters())
    # micro-batches per global step: dealt out across DDP ranks; under FSDP each micro-batch's rows
    # are split across the ranks instead (FSDP's reduce-scatter sums their gradients: the one-process
    # gradient of that micro-batch, so SAM's per-micro-batch ε is the one-process ε)
    G = cfg.grad_accum * (1 if sharded else W)
    order = batch_order(len(batches), steps * G, cfg.seed)
    net = _ddp(model) if W > 1 and not sharded else model  # DDP: pass 2 all-reduces; SAM's pass 1 under no_sync
    model.train()
    t0 = time.perf_counter() - (state.log[-1]["seconds"] if state.log else 0.0)
    try:
        bar = tqdm(range(state.step, steps), desc=f"train ({cfg.optimizer})", disable=not progress or R != 0,
                   leave=False, initial=state.step, total=steps)
        for step in bar:
            glob = [batches.batches[i] for i in order[step * G:(step + 1) * G]]
            micro, scale = ([b.rows(R, W) for b in glob], 1) if sharded else (glob[R::W], W)
            row = train_step(net, opt, micro, cfg, lr_at(step, steps, cfg.lr, cfg.warmup),
                             n_tok=sum(b.n_tokens for b in glob), scale=scale)
            if not math.isfinite(row["loss"]):
                raise UserError(f"the training loss became {row['loss']} at step {step + 1} (the weights are now "
                                "unusable; lower lr, keep grad_clip, or train in float32); the last saved "
                                "state is kept for resume")
            state.log.append({"step": step + 1, **row, "seconds": round(time.perf_counter() - t0, 3)})
            state.step = step + 1
            if eval_batches is not None and cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < steps:
                _evaluate_into(model, eval_batches, state)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if on_step is not None:
                on_step(state, opt)
    finally:
        model.eval()
    if eval_batches is not None and (not state.evals or state.evals[-1]["step"] != state.step):
        _evaluate_into(model, eval_batches, state)
    return state.log


def _ddp(model):
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = param_device(model)
    return DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def _evaluate_into(model, eval_batches, state: TrainState) -> None:
    was = model.training
    model.eval()
    state.evals.append({"step": state.step, "eval_loss": evaluate(model, eval_batches).loss})
    model.train(was)


# --------------------------------------------------------------------------------------------
# The command: checkpoint + jsonl → fine-tuned checkpoint dir, with a resumable training state,
# in four named phases: prepare → resume → run → save.

STATE_FILE = "train_state.pt"


def split_records(records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded train/eval split: ``round(eval_fraction·n)`` records (at least 1 if the fraction > 0)."""
    if not 0 <= eval_fraction < 1:
        raise ConfigError("eval_fraction", f"must be in [0, 1), got {eval_fraction}")
    n_eval = 0 if eval_fraction == 0 else max(1, round(eval_fraction * len(records)))
    if n_eval >= len(records):
        raise UserError(f"{len(records)} record(s) cannot be split into train and eval; "
                        "give eval_data or eval_fraction 0")
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    held = set(idx[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def state_file(partial: Path, sharded: bool) -> Path:
    """The training state of this process: one file, or of a sharded model one per rank (its rows)."""
    return partial / (f"train_state.rank{dist.rank()}-of-{dist.world()}.pt" if sharded else STATE_FILE)


def _has_state(partial: Path) -> bool:
    """Whether ``partial`` holds a training state, one-process or sharded."""
    return (partial / STATE_FILE).is_file() or any(partial.glob("train_state.rank*-of-*.pt"))


def _writes_state(model) -> bool:
    """Whether this process writes a training state: rank 0, or every rank (its rows) of a sharded model."""
    return dist.is_main() or P.any_sharded(model.parameters())


def _save_state(path: Path, model, opt, state: TrainState, meta: dict) -> None:
    """Atomic: temp file, fsync, rename. Sharded: every rank its own rows of the weights and moments."""
    path.mkdir(parents=True, exist_ok=True)
    with atomic_write(state_file(path, P.any_sharded(model.parameters()))) as tmp:
        torch.save({"step": state.step, "log": state.log, "evals": state.evals,
                    "model": {k: P.local(v) for k, v in model.state_dict().items()},
                    "optimizer": _map_tensors(opt.state_dict(), P.local), "meta": meta}, tmp)


def _map_tensors(obj, fn):
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return fn(obj) if torch.is_tensor(obj) else obj


def _load_sharded_state(model, opt, saved: dict) -> None:
    """This rank's saved rows back into the sharded weights and AdamW moments (as DTensors again)."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for k, v in model.state_dict().items():
            P.local(v).copy_(saved["model"][k])
    params = [p for g in opt.param_groups for p in g["params"]]
    sd = saved["optimizer"]
    for i, st in (sd["base"] if "base" in sd else sd)["state"].items():  # SAM's: its base optimizer's
        p = params[int(i)]
        for k, v in st.items():
            if torch.is_tensor(v) and P.is_sharded(p) and v.shape == P.local(p).shape and v.dim() > 0:
                st[k] = DTensor.from_local(v, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
    opt.load_state_dict(sd)


@dataclass
class _Job:
    """A prepared fine-tune: the loaded base, its batches, the resolved config and the run's identity."""

    ck: object
    train_b: object
    eval_b: object
    cfg: FinetuneConfig
    meta: dict
    out: Path
    partial: Path
    data: str

    @property
    def sharded(self) -> bool:
        """The base was loaded FSDP-sharded: each rank holds rows of its weights (and writes its own state)."""
        return P.any_sharded(self.ck.model.parameters())


def finetune(base, data, out, config: FinetuneConfig | None = None, *, load: LoadConfig | None = None,
             progress: bool = False, on_step=None, probe=None) -> dict:
    """Fine-tune the checkpoint ``base`` on the jsonl ``data``; write an HF checkpoint dir at ``out``.

    ``out`` gets the weights, the tokenizer, ``training_log.json`` (loss per step, eval losses,
    summary) and ``finetune_config.json`` (the exact configuration). While running, the training
    state lives in ``out.partial/`` (saved every ``save_every`` steps, atomically); ``config.resume``
    continues from it and refuses a state written under another configuration.
    Steps: ``max_steps`` if given, else ``ceil(epochs · n_train_batches / (grad_accum · processes))``.

    ``probe``: a :class:`landscape.training.callback.LandscapeCallback` driven by this loop (measured
    at step 0, every ``probe_every`` steps and at the end; its trajectory goes into ``out`` as
    ``trajectory.json``, and into ``out.partial`` while running, so a resumed run keeps it).
    """
    job = _prepare(base, data, Path(out), config or FinetuneConfig(), load or LoadConfig())
    if probe is not None and job.sharded:
        raise ConfigError("probe_every", "probes during a sharded fine-tune are not supported yet; measure the "
                                         "saved checkpoints instead")
    if job.cfg.dry_run:  # the plan (the steady state, from the second step on); nothing is written
        return {"base": str(job.ck.path), "out": str(out), "plan": plan(job.ck.model, job.train_b, job.cfg).as_dict()}
    pl = _check_memory(job)
    P.reset_peak(param_device(job.ck.model))
    if probe is not None:
        _begin_probe(job, probe)
    opt = make_optimizer([p for p in job.ck.model.parameters() if p.requires_grad], job.cfg)
    state = _resume(job, opt) if job.cfg.resume else TrainState()
    if probe is not None:
        # probes after the saved state (a hard kill) are measured again; so is the one at the saved step
        # when the kill came between the save and that probe (the state is saved first)
        probe.records = [r for r in probe.records if r["step"] <= state.step]
        if state.step and probe.records and probe.records[-1]["step"] < state.step:
            probe.at_step(job.ck.model, state.step, job.cfg.max_steps)
    start, t0 = state.step, time.perf_counter()
    _run(job, opt, state, progress, _probing(on_step, probe, job))
    traj = probe.end(job.ck.model, state.step, main=dist.is_main()) if probe is not None else None
    r = _save(job, state, start, time.perf_counter() - t0, traj)
    r["cost"] = {**P.peak_memory(param_device(job.ck.model)), "planned_peak_gb": round(pl.peak / 2**30, 3)}
    return r


def _begin_probe(job, probe) -> None:
    """The probe's step-0 state at the base weights (before a resume loads the saved ones); a resumed
    run continues the trajectory kept in ``out.partial``."""
    kept = job.partial / "trajectory.json"
    if job.cfg.resume and kept.is_file():
        probe.records = json.loads(kept.read_text()).get("records", [])
    probe.begin(job.ck.model, job.ck.tokenizer, 0, out=kept)


def _probing(on_step, probe, job):
    if probe is None:
        return on_step

    def hook(st, o):
        probe.at_step(job.ck.model, st.step, job.cfg.max_steps)
        if on_step is not None:
            on_step(st, o)
    return hook


def plan(model, train_batches, cfg: FinetuneConfig):
    """The memory plan of one step (:func:`landscape.foundation.plan.finetune`), before any state
    is allocated; one micro-batch's activations measured on one sequence."""
    from landscape.foundation import plan as plans

    ps = [p for p in model.parameters() if p.requires_grad]
    act = plans.activation_bytes(model, train_batches.batches[:1])
    return plans.finetune(ps, act, cfg.optimizer, plans.start_bytes(model, param_device(model)), cfg.bf16,
                          cfg.grad_accum)


def _check_memory(job):
    """Refuse, with one line, a run whose first step would not fit (rather than be killed by the OS)."""
    from landscape.foundation import plan as plans

    pl = plan(job.ck.model, job.train_b, job.cfg)
    plans.check_fits(pl, plans.free_bytes(job.ck.device), f"finetune --optimizer {job.cfg.optimizer}",
                     hint="a LoRA adapter (lora), bfloat16 weights, shorter batches, or a larger machine")
    return pl


def _check_paths(out: Path, partial: Path, cfg: FinetuneConfig) -> None:
    if out.exists() and not cfg.overwrite:
        raise ConfigError("overwrite", f"is off and {out} already exists (set it to replace the directory)")
    if partial.exists() and not cfg.resume:
        raise ConfigError("resume", f"is off and {partial} holds an interrupted run: resume it, or remove it")
    if cfg.resume and not _has_state(partial):
        raise ConfigError("resume", f"is on but there is no interrupted run at {partial}")


def _prepare(base, data, out: Path, cfg: FinetuneConfig, load: LoadConfig) -> _Job:
    """Phase 1: check the paths, load the base, build the batches, resolve the steps."""
    from landscape.foundation import checkpoint, data as data_mod

    partial = out.with_name(out.name + ".partial")
    _check_paths(out, partial, cfg)
    ck = checkpoint.load_checkpoint(base, load)
    if cfg.lora:
        ck.model = with_lora(ck.model, cfg, ck.path)
    records = data_mod.read_jsonl(data, cfg.data_split)
    if cfg.eval_data is not None:
        train_recs, eval_recs = records, data_mod.read_jsonl(cfg.eval_data, cfg.eval_split)
    else:
        train_recs, eval_recs = split_records(records, cfg.eval_fraction, cfg.seed)
    mk = dict(tokenizer=ck.tokenizer, max_length=data_mod.resolve_max_length(ck.model.config, cfg.max_length),
              vocab_size=ck.vocab_size)
    train_b = data_mod.load_batches(data, batch_size=cfg.batch_size, records=train_recs, **mk)
    eval_b = (data_mod.load_batches(cfg.eval_data or data, batch_size=max(8, cfg.batch_size), records=eval_recs, **mk)
              .to(ck.device) if eval_recs else None)
    W = 1 if P.any_sharded(ck.model.parameters()) else dist.world()  # FSDP splits each micro-batch's rows, DDP deals them out
    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train_b) / (cfg.grad_accum * W)))
    run_cfg = cfg.replace(max_steps=steps)
    ident = {**run_cfg.numbers(), "world": W}
    meta = {"config": ident, "config_hash": hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16],
            "base": str(ck.path), "base_fingerprint": ck.fingerprint, "data": str(data),
            "data_fingerprint": train_b.fingerprint, "eval_fingerprint": eval_b.fingerprint if eval_b else None}
    return _Job(ck, train_b, eval_b, run_cfg, meta, out, partial, str(data))


def with_lora(model, cfg: FinetuneConfig, base_path):
    """``model`` wrapped in a fresh LoRA adapter (peft; A drawn from ``cfg.seed``, B = 0, so the run starts at
    the base's function and is determined by its config): only the adapter's A and B train; the saved
    directory is a standard PEFT adapter whose ``base_model_name_or_path`` is the base's absolute path."""
    from landscape.foundation.checkpoint import quiet_peft

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("lora: fine-tuning a LoRA adapter needs the peft package (pip install 'landscape[lora]')") \
            from None
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    lcfg = LoraConfig(r=cfg.lora, lora_alpha=cfg.lora_alpha or 2 * cfg.lora, lora_dropout=0.0, bias="none",
                      task_type="CAUSAL_LM", target_modules="all-linear" if targets == ["all-linear"] else targets,
                      base_model_name_or_path=str(Path(base_path).resolve()))
    try:
        with torch.random.fork_rng(devices=[]), quiet_peft():  # A's init follows the run's seed, not the global RNG
            torch.manual_seed(cfg.seed)
            pm = get_peft_model(model, lcfg)
    except ValueError as e:  # e.g. target modules not found in the base model
        raise ConfigError("lora_targets", str(e).strip().splitlines()[0]) from None
    pm.peft_config["default"].base_model_name_or_path = str(Path(base_path).resolve())
    return pm


def _resume(job: _Job, opt) -> TrainState:
    """Phase 2: the saved state of an interrupted run of this exact configuration."""
    saved = torch.load(state_file(job.partial, job.sharded), map_location=job.ck.device, weights_only=True)
    theirs = {k: saved["meta"].get(k) for k in ("config_hash", "base_fingerprint", "data_fingerprint")}
    ours = {k: job.meta[k] for k in theirs}
    if theirs != ours:
        diff = ", ".join(k for k in ours if ours[k] != theirs[k])
        raise UserError(f"{job.partial}: the interrupted run used another {diff}; "
                        "remove it or resume with the same options")
    if job.sharded:
        steps = dist.all_gather_object(saved["step"])
        if len(set(steps)) > 1:  # a kill between two ranks' saves
            raise UserError(f"{job.partial}: the ranks' saved states are at different steps ({steps}); "
                            "remove it to start over")
        _load_sharded_state(job.ck.model, opt, saved)
    else:
        job.ck.model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
    return TrainState(step=saved["step"], log=saved["log"], evals=saved["evals"])


def _run(job: _Job, opt, state: TrainState, progress: bool, on_step) -> None:
    """Phase 3: train, saving the state every ``save_every`` steps.

    Ctrl-C is taken at the next step boundary: a step interrupted half-way (weights or AdamW moments
    half-updated, a SAM perturbation not yet undone) must never be saved as a resumable state. A
    second Ctrl-C stops at once; the last periodic state is then what resume continues from.
    """
    cfg, interrupt = job.cfg, {"asked": False, "at_boundary": False}

    def on_sigint(signum, frame):
        if interrupt["asked"]:
            raise KeyboardInterrupt
        interrupt["asked"] = True

    def save_and_callback(st: TrainState, o) -> None:
        interrupt["at_boundary"] = True  # a KeyboardInterrupt from here on leaves a consistent state
        if st.step % cfg.save_every == 0 and st.step < cfg.max_steps and _writes_state(job.ck.model):
            _save_state(job.partial, job.ck.model, o, st, job.meta)
        if on_step is not None:
            on_step(st, o)
        if dist.world() > 1:  # every rank stops after the same step (none left waiting in an all-reduce)
            interrupt["asked"] = dist.all_reduce_scalar(float(interrupt["asked"])) > 0
        if interrupt["asked"]:
            raise KeyboardInterrupt
        interrupt["at_boundary"] = False

    # SIGINT ignored by whoever started us (nohup, a background job of a script) stays ignored, as
    # Python itself leaves it
    own_sigint = (threading.current_thread() is threading.main_thread()
                  and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)
    previous = signal.signal(signal.SIGINT, on_sigint) if own_sigint else None
    try:
        train(job.ck.model, job.train_b, cfg, eval_batches=job.eval_b, opt=opt, state=state,
              on_step=save_and_callback, progress=progress)
    except KeyboardInterrupt as e:
        saved = _writes_state(job.ck.model) and interrupt["at_boundary"]
        if saved:
            _save_state(job.partial, job.ck.model, opt, state, job.meta)  # a Ctrl-C loses nothing that finished
        raise Interrupted(_interrupted_note(job, state.step, saved)) from e
    finally:
        if own_sigint:
            signal.signal(signal.SIGINT, previous)


def _interrupted_note(job: _Job, step: int, saved: bool) -> str:
    """What an interrupted run kept, and the command that goes on."""
    if saved:
        return (f"interrupted after step {step} of {job.cfg.max_steps}: the training state is kept in {job.partial}; "
                f"the same command with --resume continues from step {step}")
    if state_file(job.partial, job.sharded).is_file():
        return (f"interrupted at step {step} of {job.cfg.max_steps} (a second Ctrl-C, mid-step): {job.partial} keeps the "
                f"last periodic state; the same command with --resume continues from it")
    return (f"interrupted at step {step} of {job.cfg.max_steps}: no training state was saved yet (the first at step "
            f"{job.cfg.save_every}); nothing to resume")


def _save(job: _Job, state: TrainState, start: int, seconds: float, trajectory: dict | None = None) -> dict:
    """Phase 4: the checkpoint dir with its log and configuration, atomically; the partial state goes."""
    from landscape.foundation import checkpoint

    cfg, log = job.cfg, state.log
    half = P.is_half([p for p in job.ck.model.parameters() if p.requires_grad])
    summary = {
        "out": str(job.out), "base": str(job.ck.path), "base_fingerprint": job.ck.fingerprint,
        "optimizer": cfg.optimizer, "steps": cfg.max_steps, "resumed_from": start if cfg.resume else None,
        "train_examples": job.train_b.n_examples, "eval_examples": job.eval_b.n_examples if job.eval_b else 0,
        "train_loss_first": log[0]["loss"], "train_loss_last": sum(r["loss"] for r in log[-10:]) / min(10, len(log)),
        "eval_loss": state.evals[-1]["eval_loss"] if state.evals else None,
        "seconds": round(seconds, 2), "version": landscape.__version__,
        # how the updates reach half-precision weights (make_optimizer): stochastic rounding, not nearest
        "update_rounding": "stochastic (StochasticAdamW)" if half else "none (float32 weights)",
    }
    config = {**job.meta, "settings": cfg.as_dict(), "dtype": str(job.ck.dtype).replace("torch.", ""),
              "version": landscape.__version__}
    whole = None
    if job.sharded and not cfg.lora:  # every rank gathers the weights, rank 0 holds and writes them
        # (an adapter is whole on every rank: rank 0 writes it as it is, the base is not gathered)
        from landscape.foundation.sharding import full_state_dict

        whole = full_state_dict(job.ck.model)
    if dist.is_main():
        checkpoint.save_checkpoint(job.ck.model, job.ck.tokenizer, job.out, state_dict=whole, extra_files={
            "training_log.json": json.dumps({"summary": summary, "log": log, "evals": state.evals}, indent=1),
            "finetune_config.json": json.dumps(config, indent=1),
            **({"trajectory.json": dumps(trajectory)} if trajectory is not None else {})})
        shutil.rmtree(job.partial, ignore_errors=True)
    dist.barrier()
    summary["fingerprint"] = checkpoint.fingerprint(job.out)
    return summary
