"""The toy study: the embedded generated world, its tiny demo base model, and the study over them.

``build_demo_model`` trains a word-level tokenizer on our generated data and pretrains a small
Llama-architecture model (hidden 128, 4 layers, 4 heads; ~0.75M parameters) on the general corpus,
then saves a normal HF checkpoint directory that every command accepts. :data:`TOY` says which
fine-tunes the study makes and what it measures; :mod:`landscape.study.studies` runs it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

import landscape
from landscape.foundation import checkpoint, data, loss, toy
from landscape.foundation.configs import ConfigError, FinetuneConfig
from landscape.foundation.data import data_dir
from landscape.study.studies import StudySpec, run_study
from landscape.training import finetune

DEMO_ARCH = dict(arch="llama", hidden=128, layers=4, heads=4, intermediate=256, max_positions=128)
DEMO_TRAIN = dict(steps=2000, lr=3e-3, batch_size=32, max_length=64, warmup=50, weight_decay=0.0)


def all_texts(root: Path):
    """Every string of the generated toy world (the tokenizer's training corpus). ``data/real`` (the
    real-model data) is not part of it: the demo model's vocabulary stays the toy world's own."""
    for f in sorted(p for p in root.rglob("*.jsonl") if "real" not in p.relative_to(root).parts):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            for k in ("text", "prompt", "completion", "context"):
                if k in rec:
                    yield rec[k]
            yield from rec.get("choices", [])


def build_demo_model(out: str | os.PathLike, steps: int = DEMO_TRAIN["steps"], seed: int = 0,
                     progress: bool = False) -> dict:
    """Tokenizer + pretraining on ``data/pretrain.jsonl``; saves an HF checkpoint dir at ``out``.

    Returns a summary (parameters, steps, final train loss, eval loss, seconds).
    """
    if steps < 1:
        raise ConfigError("steps", f"must be >= 1, got {steps}")
    root = data_dir()
    t0 = time.perf_counter()
    tok = toy.build_word_tokenizer(all_texts(root))
    arch = dict(DEMO_ARCH)
    cfg = toy.tiny_config(arch.pop("arch"), vocab_size=len(tok), tokenizer=tok, **arch)
    model = toy.build_model(cfg, seed=seed)
    torch.manual_seed(seed)
    train = data.load_batches(root / "pretrain.jsonl", tok, batch_size=DEMO_TRAIN["batch_size"],
                              max_length=DEMO_TRAIN["max_length"])
    run = FinetuneConfig(max_steps=steps, lr=DEMO_TRAIN["lr"], seed=seed, weight_decay=DEMO_TRAIN["weight_decay"],
                         warmup=min(DEMO_TRAIN["warmup"], steps // 10))
    log = finetune.train(model, train, run, progress=progress)
    ev = loss.evaluate(model, data.load_batches(root / "eval.jsonl", tok, batch_size=32, max_length=64))
    summary = {
        "out": str(out), "n_params": checkpoint.count_params(model), "vocab_size": len(tok),
        "steps": steps, "seed": seed, "train_loss": sum(r["loss"] for r in log[-20:]) / min(20, len(log)),
        "eval_loss": ev.loss, "eval_tokens": ev.tokens, "seconds": round(time.perf_counter() - t0, 2),
        "config": {**DEMO_ARCH, **DEMO_TRAIN, "steps": steps}, "version": landscape.__version__,
    }
    checkpoint.save_checkpoint(model, tok, out, extra_files={
        "training_log.json": json.dumps({"summary": summary, "log": log}, indent=1)})
    return summary


def ensure_demo_model(out: str | os.PathLike, steps: int, seed: int = 0, progress: bool = False) -> dict:
    """Reuse ``out`` when it holds a demo model built with the same steps and seed, else build it."""
    log = Path(out) / "training_log.json"
    if log.is_file():
        try:
            s = json.loads(log.read_text())["summary"]
            if s["steps"] == steps and s["seed"] == seed and s["version"] == landscape.__version__:
                checkpoint.inspect_checkpoint(out)
                return {**s, "reused": True}
        except (ValueError, KeyError, landscape.UserError):
            pass
    return {**build_demo_model(out, steps=steps, seed=seed, progress=progress), "reused": False}


# The toy study: fine-tunes of the demo base on the `count` task (learned to ~100% exact match in
# 150 steps, and it clearly hurts the suites: 0.3-0.7 average accuracy lost in a first sweep).
TOY = StudySpec(
    name="toy", task_dir=Path("tasks") / "count", suites=Path("suites"),
    title="landscape demo: flatness vs forgetting (count fine-tunes of the demo base)",
    #      label               optimizer  lr     steps  rho
    runs=(("adamw-lr3e-4", "adamw", 3e-4, 150, None),
          ("adamw-lr1e-3-s75", "adamw", 1e-3, 75, None),
          ("adamw-lr1e-3", "adamw", 1e-3, 150, None),
          ("adamw-lr1e-3-s300", "adamw", 1e-3, 300, None),
          ("adamw-lr3e-3", "adamw", 3e-3, 150, None),
          ("sam-rho0.02", "sam", 1e-3, 150, 0.02),
          ("sam-rho0.05", "sam", 1e-3, 150, 0.05),
          ("sam-rho0.1", "sam", 1e-3, 150, 0.1),
          ("sam-rho0.2", "sam", 1e-3, 150, 0.2),
          ("sam-lr3e-3-rho0.05", "sam", 3e-3, 150, 0.05),
          ("asam-rho0.5", "asam", 1e-3, 150, 0.5),
          ("asam-rho1.0", "asam", 1e-3, 150, 1.0),
          # LoRA (rank 8, α 16, every linear layer; ~10% of the weights train) at the common 3× full-FT rate
          ("lora-adamw-r8", "adamw", 3e-3, 150, None, 8),
          ("lora-adamw-r8-s600", "adamw", 3e-3, 600, None, 8),
          ("lora-sam-r8", "sam", 3e-3, 150, 0.05, 8)),
    fast_runs=("adamw-lr3e-4", "adamw-lr1e-3", "adamw-lr1e-3-s300", "sam-rho0.05", "sam-rho0.2", "asam-rho1.0",
               "lora-adamw-r8"),
    finetune=FinetuneConfig(batch_size=16, warmup=10, seed=0),
    # sized for 25 checkpoints in the demo's budget: a 10-probe trace and an 11-point line (an 11×11
    # surface would be 4.7 s of a checkpoint's 15 s of measurement)
    flatness={"batch_size": 8, "num_batches": 4, "top_k": 3, "trace_samples": 10, "eps": 1e-3,
              "metrics": ["lambda_max", "trace", "eps", "sam", "avg", "surface_curvature", "average_gradient"],
              "surface": {"x": "-1:1:11"}},
    fast_flatness={"metrics": ["lambda_max", "trace", "sam", "avg", "surface_curvature"]},
    comparisons=(("sam-rho0.05", "adamw-lr1e-3", "equal steps (150)"),
                 ("sam-rho0.05", "adamw-lr1e-3-s300", "equal compute (300 passes)"),
                 ("lora-sam-r8", "lora-adamw-r8", "LoRA r8, equal steps (150)")),
    # Forgetting predictors: the general loss (held-out pretraining text) at the base, along each Δw.
    predictors={"data": "eval.jsonl", "batch_size": 8, "num_batches": 4, "line": "0:1:11"},
    covariates=("delta_norm", "task_loss", "steps"),
    # the settings the comparisons and the trade-off rest on, over three seeds (data order, LoRA init)
    seeds=(0, 1, 2),
    seeded=("adamw-lr1e-3", "adamw-lr1e-3-s300", "sam-rho0.05", "lora-adamw-r8", "lora-sam-r8"),
    fast_seeded=("adamw-lr1e-3", "sam-rho0.05"),
    # every fine-tune measured while it trains: each probe a (task loss, forgetting) point
    probe={"probe_every": 50, "probe_metrics": ("loss", "forgetting", "task_loss"), "probe_batch_size": 16},
    fast_probe={"probe_every": 75},
    # a 0.7M-parameter model keeps one core busy, not two: two fine-tunes at a time, one thread each
    finetune_workers=2,
)


def run_demo(out: str | os.PathLike = "runs/demo", fast: bool = False, progress: bool = False,
             sweep: bool = False) -> dict:
    """The main job on the embedded default: the paper's study at toy scale.

    1. build or reuse the demo base model (pretrained on the general corpus);
    2. fine-tune it on the ``count`` task with AdamW at several learning rates and lengths, SAM/ASAM
       at several ρ and LoRA (15 settings; the 5 that carry the comparisons over 3 seeds, probed while
       they train: 25 checkpoints; ``fast``: 7 settings, 2 of them over 3 seeds, 11 checkpoints);
    3. measure flatness (λ_max, trace, ε-/SAM-/average sharpness, surface curvature) on the task's
       held-out data and forgetting on the suites, correlate, write ``report.html``;
    4. compare SAM with AdamW at equal steps and at equal compute (means over seeds, Welch intervals)
       and every family at matched task exact match and, over the probes, at matched task loss. The
       numbers are reported as measured; ``landscape demo`` prints them as a table.
    5. ``sweep``: also every method at ⅓×, 1× and 3× its rate, compared at its best one
       (:mod:`landscape.study.sweep`, Biderman et al. 2024's protocol) under ``out/sweep``.
    """
    from landscape.study.sweep import run_sweep

    out = Path(out)
    model = ensure_demo_model(out / "base", steps=800 if fast else DEMO_TRAIN["steps"], progress=progress)
    r = run_study(TOY, out / "base", out, data_dir(), model, fast=fast, progress=progress)
    return {**r, "lr_sweep": run_sweep(TOY, out, data_dir(), model, fast, progress)} if sweep else r
