"""Fine-tuning: AdamW, SAM or ASAM over fixed batches, writing HF checkpoints; resumable.

The loop minimises the shared loss of :mod:`landscape.loss` (token-weighted mean CE), so the loss it
logs is the loss every measurement reports. One optimizer step consumes ``grad_accum`` micro-batches;
their losses are weighted by their share of the step's loss tokens, so accumulation over k
micro-batches gives the gradient of the concatenated batch (exactly, for AdamW).

SAM/ASAM (see :mod:`landscape.sam`): per micro-batch, pass 1 takes g_k = ∇L_k(w) (under ``no_sync``
when the model is DDP-wrapped), the weights move to w + ε_k, pass 2 accumulates ∇L_k(w + ε_k) into
``.grad``, and the weights are restored bit-exactly; after the last micro-batch the accumulated
gradient is clipped and the base optimizer (AdamW, with weight decay and the LR schedule) steps from
w. Two forward/backward passes per micro-batch, against one for AdamW.

Batch order is a seeded permutation per epoch; a run is a pure function of (model, data, config), and
``resume`` from a saved training state continues it to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

import landscape
from landscape import distributed as dist
from landscape.errors import UserError
from landscape.loss import batch_term, evaluate, param_device
from landscape.sam import SAM

OPTIMIZERS = ("adamw", "sam", "asam")


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


@dataclass
class TrainConfig:
    """Everything that determines a run (hashed: a resume under another config is refused)."""

    optimizer: str = "adamw"  # adamw | sam | asam
    lr: float = 1e-3
    steps: int = 100  # optimizer steps
    grad_accum: int = 1  # micro-batches per step
    rho: float = 0.05  # SAM/ASAM radius (ASAM radii are larger: ~0.5-2 in Kwon et al.)
    eta: float = 0.0  # ASAM's T = |w| + eta
    weight_decay: float = 0.0
    warmup: int = 0
    grad_clip: float | None = 1.0
    bf16: bool = False  # autocast forward passes to bfloat16
    seed: int = 0
    eval_every: int | None = None  # steps; None: only at the end
    world: int = 1  # processes (torchrun): the global batch is grad_accum × world micro-batches

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("lr", "rho"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("steps", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.warmup < 0 or self.eta < 0:
            raise UserError("--weight-decay, --warmup and --eta must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            self.grad_clip = None
        if self.eval_every is not None and self.eval_every < 1:
            raise UserError(f"--eval-every must be >= 1, got {self.eval_every}")

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SAM/ASAM around AdamW (weight decay in the base step only)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return SAM(params, torch.optim.AdamW, rho=cfg.rho, adaptive=cfg.optimizer == "asam", eta=cfg.eta,
               lr=cfg.lr, weight_decay=cfg.weight_decay)


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


def train_step(model, opt, micro, cfg: TrainConfig, lr: float, n_tok: int | None = None, scale: int = 1) -> dict:
    """One optimizer step over the micro-batches ``micro`` (a list of Batch). Returns the log row.

    ``n_tok``: loss tokens of the whole (global) step, default those of ``micro``. ``scale``: the
    number of DDP processes, whose gradient averaging the loss is multiplied back from (so the
    all-reduced gradient is the gradient of the global step's token-weighted loss).
    """
    from landscape import distributed as dist

    device = param_device(model)
    params = [p for g in opt.param_groups for p in g["params"]]
    n_tok = n_tok or sum(b.n_tokens for b in micro)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    sam = opt.perturbation if isinstance(opt, SAM) else None
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
        with _no_sync(model, True):  # pass 1: the local gradient at w, forward included
            with _autocast(device, cfg.bf16):
                loss = batch_term(model, b, n_tok)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        loss_sum += float(loss.detach())
        norms.append(sam.perturb(list(grads)))
        del grads
        try:  # pass 2: the gradient at w + ε_k, accumulated into .grad
            with _no_sync(model, not last):
                with _autocast(device, cfg.bf16):
                    loss2 = batch_term(model, b, n_tok) * scale
                loss2.backward()
        finally:
            sam.restore()
    gnorm = None
    if cfg.grad_clip:
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    (opt.base_optimizer if sam is not None else opt).step()
    opt.zero_grad(set_to_none=True)
    row = {"loss": dist.all_reduce_scalar(loss_sum) if scale > 1 else loss_sum, "lr": lr, "grad_norm": gnorm,
           "tokens": n_tok}
    if sam is not None:
        row["sam_grad_norm"] = sum(norms) / len(norms) if norms else None
    return row


def train(model: torch.nn.Module, batches, steps: int | None = None, lr: float | None = None, seed: int = 0,
          weight_decay: float = 0.0, warmup: int = 0, grad_clip: float | None = 1.0, progress: bool = False,
          desc: str = "train", cfg: TrainConfig | None = None, eval_batches=None, opt=None,
          state: TrainState | None = None, on_step=None) -> list[dict]:
    """Train ``model`` on ``batches``; returns the log (one dict per optimizer step).

    Give either a :class:`TrainConfig` or the plain AdamW arguments. ``opt``/``state`` continue a run
    (resume); ``on_step(state, opt)`` is called after every step (saving, stopping). The model is left
    in eval mode.
    """
    if cfg is None:
        cfg = TrainConfig(lr=lr, steps=steps, seed=seed, weight_decay=weight_decay, warmup=warmup,
                          grad_clip=grad_clip)
    from landscape import distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    opt = opt or make_optimizer(params, cfg)
    state = state or TrainState()
    W, R = dist.world(), dist.rank()
    G = cfg.grad_accum * W  # micro-batches per global step, dealt out across ranks
    order = batch_order(len(batches), cfg.steps * G, cfg.seed)
    net = model
    if W > 1:  # DDP: the second pass all-reduces gradients; the SAM first pass runs under no_sync
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = param_device(model)
        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    model.train()
    t0 = time.perf_counter() - (state.log[-1]["seconds"] if state.log else 0.0)
    try:
        bar = tqdm(range(state.step, cfg.steps), desc=desc, disable=not progress or R != 0, leave=False,
                   initial=state.step, total=cfg.steps)
        for step in bar:
            glob = [batches.batches[i] for i in order[step * G:(step + 1) * G]]
            row = train_step(net, opt, glob[R::W], cfg, lr_at(step, cfg.steps, cfg.lr, cfg.warmup),
                             n_tok=sum(b.n_tokens for b in glob), scale=W)
            if not math.isfinite(row["loss"]):
                raise UserError(f"the training loss became {row['loss']} at step {step + 1} (the weights are now "
                                "unusable; lower --lr, keep --grad-clip, or train in float32); the last saved "
                                "state is kept for --resume")
            row = {"step": step + 1, **row, "seconds": round(time.perf_counter() - t0, 3)}
            state.log.append(row)
            state.step = step + 1
            if eval_batches is not None and cfg.eval_every and state.step % cfg.eval_every == 0 \
                    and state.step < cfg.steps:
                model.eval()
                state.evals.append({"step": state.step, "eval_loss": evaluate(model, eval_batches).loss})
                model.train()
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if on_step is not None:
                on_step(state, opt)
    finally:
        model.eval()
    if eval_batches is not None and (not state.evals or state.evals[-1]["step"] != state.step):
        state.evals.append({"step": state.step, "eval_loss": evaluate(model, eval_batches).loss})
    return state.log


# --------------------------------------------------------------------------------------------
# The command: checkpoint + jsonl → fine-tuned checkpoint dir, with a resumable training state.

STATE_FILE = "train_state.pt"


def split_records(records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded train/eval split: ``round(eval_fraction·n)`` records (at least 1 if the fraction > 0)."""
    if not 0 <= eval_fraction < 1:
        raise UserError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    n_eval = 0 if eval_fraction == 0 else max(1, round(eval_fraction * len(records)))
    if n_eval >= len(records):
        raise UserError(f"{len(records)} record(s) cannot be split into train and eval; "
                        "give --eval-data or --eval-fraction 0")
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    held = set(idx[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def _save_state(path: Path, model, opt, state: TrainState, meta: dict) -> None:
    """Atomic: temp file, fsync, rename."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{STATE_FILE}.tmp"
    torch.save({"step": state.step, "log": state.log, "evals": state.evals, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "meta": meta}, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path / STATE_FILE)


def finetune(base, data, out, *, optimizer: str = "adamw", lr: float = 1e-4, rho: float = 0.05, eta: float = 0.0,
             epochs: float = 1.0, max_steps: int | None = None, batch_size: int = 8, grad_accum: int = 1,
             max_length: int | None = None, seed: int = 0, weight_decay: float = 0.0, warmup: int = 0,
             grad_clip: float | None = 1.0, bf16: bool = False, eval_data=None, eval_fraction: float = 0.1,
             eval_every: int | None = None, save_every: int = 100, resume: bool = False, overwrite: bool = False,
             device: str = "auto", dtype: str = "float32", trust_pickle: bool = False,
             trust_remote_code: bool = False, progress: bool = False, on_step=None) -> dict:
    """Fine-tune the checkpoint ``base`` on the jsonl ``data``; write an HF checkpoint dir at ``out``.

    ``out`` gets the weights, the tokenizer, ``training_log.json`` (loss per step, eval losses,
    summary) and ``finetune_config.json`` (the exact configuration). While running, the training
    state lives in ``out.partial/`` (saved every ``save_every`` steps, atomically); ``resume=True``
    continues from it and refuses a state written under another configuration.
    Steps: ``max_steps`` if given, else ``ceil(epochs · n_train_batches / grad_accum)``.
    """
    from landscape import checkpoint, data as data_mod

    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists (use --overwrite to replace it)")
    if partial.exists() and not resume:
        raise UserError(f"{partial} holds an interrupted run: --resume to continue it, or remove it")
    if resume and not (partial / STATE_FILE).is_file():
        raise UserError(f"--resume: no interrupted run at {partial}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if max_steps is None and not epochs > 0:
        raise UserError(f"--epochs must be > 0, got {epochs}")
    if save_every < 1:
        raise UserError(f"--save-every must be >= 1, got {save_every}")

    cfg = TrainConfig(optimizer=optimizer, lr=lr, steps=max_steps or 1, grad_accum=grad_accum, rho=rho, eta=eta,
                      weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip, bf16=bf16, seed=seed,
                      eval_every=eval_every)  # options fail fast, before anything is loaded
    ck = checkpoint.load_checkpoint(base, device=device, dtype=dtype, trust_pickle=trust_pickle,
                                    trust_remote_code=trust_remote_code)
    records = data_mod.read_jsonl(data)
    if eval_data is not None:
        train_recs, eval_recs = records, data_mod.read_jsonl(eval_data)
    else:
        train_recs, eval_recs = split_records(records, eval_fraction, seed)
    limit = getattr(ck.model.config, "max_position_embeddings", None) or 128
    max_length = max_length or min(128, limit)
    if max_length > limit:
        raise UserError(f"--max-length {max_length} exceeds the model's {limit} positions")
    mk = dict(tokenizer=ck.tokenizer, max_length=max_length, vocab_size=ck.vocab_size)
    train_b = data_mod.load_batches(data, batch_size=batch_size, records=train_recs, **mk)
    eval_b = (data_mod.load_batches(eval_data or data, batch_size=max(8, batch_size), records=eval_recs, **mk)
              .to(ck.device) if eval_recs else None)
    W = dist.world()
    steps = max_steps if max_steps is not None else max(1, math.ceil(epochs * len(train_b) / (grad_accum * W)))
    cfg = dataclasses.replace(cfg, steps=steps, world=W)
    meta = {"config": asdict(cfg), "config_hash": cfg.hash(), "base": str(ck.path),
            "base_fingerprint": ck.fingerprint, "data": str(data), "data_fingerprint": train_b.fingerprint,
            "eval_fingerprint": eval_b.fingerprint if eval_b else None}

    params = [p for p in ck.model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    state = TrainState()
    if resume:
        saved = torch.load(partial / STATE_FILE, map_location=ck.device, weights_only=True)
        theirs = {k: saved["meta"].get(k) for k in ("config_hash", "base_fingerprint", "data_fingerprint")}
        ours = {k: meta[k] for k in theirs}
        if theirs != ours:
            diff = ", ".join(k for k in ours if ours[k] != theirs[k])
            raise UserError(f"{partial}: the interrupted run used another {diff}; "
                            "remove it or resume with the same options")
        ck.model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = TrainState(step=saved["step"], log=saved["log"], evals=saved["evals"])

    # Ctrl-C is taken at the next step boundary: a step interrupted half-way (weights or AdamW moments
    # half-updated, a SAM perturbation not yet undone) must never be saved as a resumable state.
    # A second Ctrl-C stops at once; the last periodic state is then what --resume continues from.
    interrupt = {"asked": False, "at_boundary": False}

    def on_sigint(signum, frame):
        if interrupt["asked"]:
            raise KeyboardInterrupt
        interrupt["asked"] = True

    def save_and_callback(st: TrainState, o) -> None:
        interrupt["at_boundary"] = True  # a KeyboardInterrupt from here on leaves a consistent state
        if st.step % save_every == 0 and st.step < cfg.steps:
            if dist.is_main():
                _save_state(partial, ck.model, o, st, meta)
        if on_step is not None:
            on_step(st, o)
        if dist.world() > 1:  # every rank stops after the same step (none left waiting in an all-reduce)
            interrupt["asked"] = dist.all_reduce_scalar(float(interrupt["asked"])) > 0
        if interrupt["asked"]:
            raise KeyboardInterrupt
        interrupt["at_boundary"] = False

    t0, start = time.perf_counter(), state.step
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        train(ck.model, train_b, cfg=cfg, eval_batches=eval_b, opt=opt, state=state, on_step=save_and_callback,
              progress=progress, desc=f"finetune ({optimizer})")
    except KeyboardInterrupt:
        if dist.is_main() and interrupt["at_boundary"]:
            _save_state(partial, ck.model, opt, state, meta)  # a Ctrl-C loses nothing that finished
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    summary = {
        "out": str(out), "base": str(ck.path), "base_fingerprint": ck.fingerprint, "optimizer": optimizer,
        "steps": cfg.steps, "resumed_from": start if resume else None,
        "train_examples": train_b.n_examples, "eval_examples": eval_b.n_examples if eval_b else 0,
        "train_loss_first": state.log[0]["loss"], "train_loss_last": sum(r["loss"] for r in state.log[-10:]) / min(10, len(state.log)),
        "eval_loss": state.evals[-1]["eval_loss"] if state.evals else None,
        "seconds": round(time.perf_counter() - t0, 2), "version": landscape.__version__,
    }
    config = {**meta, "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
              "max_length": max_length, "eval_data": str(eval_data) if eval_data else None,
              "eval_fraction": eval_fraction if eval_data is None else None, "dtype": dtype,
              "version": landscape.__version__}
    if dist.is_main():
        checkpoint.save_checkpoint(ck.model, ck.tokenizer, out, extra_files={
            "training_log.json": json.dumps({"summary": summary, "log": state.log, "evals": state.evals}, indent=1),
            "finetune_config.json": json.dumps(config, indent=1)})
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    summary["fingerprint"] = checkpoint.fingerprint(out)
    return summary
