"""The embedded default: the generated datasets in ``data/`` and the tiny demo base model.

``build_demo_model`` trains a word-level tokenizer on our generated data and pretrains a small
Llama-architecture model (hidden 128, 4 layers, 4 heads; ~0.75M parameters) on the general corpus,
then saves a normal HF checkpoint directory that every command accepts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

import landscape
from landscape import checkpoint, data, finetune, loss
from landscape.errors import UserError

DEMO_ARCH = dict(arch="llama", hidden=128, layers=4, heads=4, intermediate=256, max_positions=128)
DEMO_TRAIN = dict(steps=2000, lr=3e-3, batch_size=32, max_length=64, warmup=50, weight_decay=0.0)


def data_dir() -> Path:
    """The project's ``data/`` folder (override with ``LANDSCAPE_DATA``)."""
    env = os.environ.get("LANDSCAPE_DATA")
    d = Path(env) if env else Path(landscape.__file__).resolve().parent.parent / "data"
    if not (d / "pretrain.jsonl").is_file():
        raise UserError(f"{d}: embedded data not found (run `python data/generate.py` or set LANDSCAPE_DATA)")
    return d


def default_eval_data() -> Path:
    return data_dir() / "eval.jsonl"


def all_texts(root: Path):
    """Every string in the generated data (the tokenizer's training corpus)."""
    for f in sorted(root.rglob("*.jsonl")):
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
        raise UserError(f"--steps must be >= 1, got {steps}")
    root = data_dir()
    t0 = time.perf_counter()
    tok = checkpoint.build_word_tokenizer(all_texts(root))
    arch = dict(DEMO_ARCH)
    cfg = checkpoint.tiny_config(arch.pop("arch"), vocab_size=len(tok), tokenizer=tok, **arch)
    model = checkpoint.build_model(cfg, seed=seed)
    torch.manual_seed(seed)
    train = data.load_batches(root / "pretrain.jsonl", tok, batch_size=DEMO_TRAIN["batch_size"],
                              max_length=DEMO_TRAIN["max_length"])
    log = finetune.train(model, train, steps=steps, lr=DEMO_TRAIN["lr"], seed=seed,
                         weight_decay=DEMO_TRAIN["weight_decay"], warmup=min(DEMO_TRAIN["warmup"], steps // 10),
                         progress=progress, desc="pretrain demo model")
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
        except (ValueError, KeyError, UserError):
            pass
    return {**build_demo_model(out, steps=steps, seed=seed, progress=progress), "reused": False}


def run_demo(out: str | os.PathLike = "runs/demo", fast: bool = False, progress: bool = False) -> dict:
    """The main job on the embedded default (grows with the toolkit).

    Today: build or reuse the demo base model, measure its loss on the general evaluation text and
    on each fine-tuning task (which it has not seen: these are what a fine-tune teaches), and its
    curvature (λ_max, λ_min, Hessian trace).
    """
    out = Path(out)
    steps = 800 if fast else DEMO_TRAIN["steps"]
    base = out / "base"
    s = ensure_demo_model(base, steps=steps, progress=progress)
    ck = checkpoint.load_checkpoint(base)
    root = data_dir()
    losses = {"general": loss.evaluate(ck.model, data.batches_for(ck, root / "eval.jsonl", batch_size=32)).loss}
    for task in sorted(p.name for p in (root / "tasks").iterdir()):
        bs = data.batches_for(ck, root / "tasks" / task / "eval.jsonl", batch_size=32)
        losses[f"task:{task}"] = loss.evaluate(ck.model, bs).loss
    from landscape.sharpness import measure

    sharp = measure(ck.model, data.batches_for(ck, root / "eval.jsonl", batch_size=8, num_batches=4),
                    metrics="lambda_max,lambda_min,trace", trace_samples=10, progress=progress)
    rows = "\n".join(f"  {k:<16} {v:8.4f}" for k, v in losses.items())
    m = sharp["metrics"]
    rows += (f"\ncurvature of the base model (4 eval batches): λ_max {m['lambda_max']:.4g}, "
             f"λ_min {m['lambda_min']:.4g}, trace {m['hessian_trace']:.4g} ± {m['hessian_trace_stderr']:.2g} "
             f"({sharp['cost']['hvps']} HVPs)")
    how = "reused" if s["reused"] else f"built in {s['seconds']} s"
    summary = (f"demo base model: {base} ({s['n_params']:,} parameters, {s['steps']} steps, {how})\n"
               f"loss of the base model:\n{rows}")
    return {"out": str(out), "base": str(base), "fingerprint": ck.fingerprint, "losses": losses,
            "curvature": {k: v for k, v in m.items() if k != "details"}, "model": s, "summary": summary}
