"""The embedded default: the generated datasets in ``data/`` and the tiny demo base model.

``build_demo_model`` trains a word-level tokenizer on our generated data and pretrains a small
Llama-architecture model (hidden 128, 4 layers, 4 heads; ~0.75M parameters) on the general corpus,
then saves a normal HF checkpoint directory that every command accepts.
"""

from __future__ import annotations

import json
import os
import shutil
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


# The demo study: fine-tunes of the base on the `count` task (learned to ~100% exact match in 150
# steps, and it clearly hurts the suites: 0.3-0.7 average accuracy lost in a first sweep).
DEMO_TASK = "count"
#            label            optimizer  lr     steps  rho
DEMO_RUNS = [("adamw-lr3e-4",   "adamw", 3e-4, 150, None),
             ("adamw-lr1e-3-s75", "adamw", 1e-3, 75, None),
             ("adamw-lr1e-3",   "adamw", 1e-3, 150, None),
             ("adamw-lr1e-3-s300", "adamw", 1e-3, 300, None),
             ("adamw-lr3e-3",   "adamw", 3e-3, 150, None),
             ("sam-rho0.02",    "sam",   1e-3, 150, 0.02),
             ("sam-rho0.05",    "sam",   1e-3, 150, 0.05),
             ("sam-rho0.1",     "sam",   1e-3, 150, 0.1),
             ("sam-rho0.2",     "sam",   1e-3, 150, 0.2),
             ("sam-lr3e-3-rho0.05", "sam", 3e-3, 150, 0.05),
             ("asam-rho0.5",    "asam",  1e-3, 150, 0.5),
             ("asam-rho1.0",    "asam",  1e-3, 150, 1.0)]
DEMO_FAST_RUNS = ("adamw-lr3e-4", "adamw-lr1e-3", "adamw-lr1e-3-s300", "adamw-lr3e-3", "sam-rho0.05",
                  "sam-rho0.2", "sam-lr3e-3-rho0.05", "asam-rho1.0")
FT = dict(batch_size=16, warmup=10, seed=0)


def _finetuned(base: Path, base_fp: str, out: Path, data: Path, eval_data: Path, optimizer, lr, steps, rho,
               progress) -> str:
    """Fine-tune unless ``out`` already holds this exact run (same base, data and config)."""
    from landscape.finetune import finetune

    cfg_file = out / "finetune_config.json"
    if cfg_file.is_file():
        try:
            have = json.loads(cfg_file.read_text())
            want = dict(optimizer=optimizer, lr=lr, steps=steps, rho=rho or 0.05)
            c = have["config"]
            if all(c[k] == v for k, v in want.items()) and have["base_fingerprint"] == base_fp \
                    and c["warmup"] == FT["warmup"] and have["batch_size"] == FT["batch_size"]:
                return "reused"
        except (ValueError, KeyError, OSError):
            pass
    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    finetune(base, data, out, optimizer=optimizer, lr=lr, rho=rho or 0.05, max_steps=steps, eval_data=eval_data,
             overwrite=True, device="cpu", progress=progress, **FT)
    return "trained"


def demo_manifest(out: Path, runs, fast: bool) -> Path:
    """The study's manifest (YAML), written next to the fine-tunes."""
    import yaml

    root = data_dir()
    metrics = ["lambda_max", "trace", "sam", "avg", "surface_curvature"] if fast else \
        ["lambda_max", "trace", "eps", "sam", "avg", "surface_curvature", "average_gradient"]
    m = {"title": f"landscape demo: flatness vs forgetting ({DEMO_TASK} fine-tunes of the demo base)",
         "base": "base", "suites": [str(root / "suites")],
         "flatness": {"data": str(root / "tasks" / DEMO_TASK / "eval.jsonl"), "batch_size": 8, "num_batches": 4,
                      "metrics": metrics, "top_k": 3, "trace_samples": 10 if fast else 20,
                      "surface": {"x": "-1:1:11"} if fast else {"x": "-1:1:11", "y": "-1:1:11"}},
         "checkpoints": [{"path": f"ft/{label}", "label": label, "optimizer": opt, "lr": lr, "steps": steps,
                          "rho": rho, "dataset": DEMO_TASK} for label, opt, lr, steps, rho in runs],
         "bootstrap": 2000}
    p = out / "manifest.yaml"
    p.write_text(yaml.safe_dump(m, sort_keys=False, allow_unicode=True))
    return p


def run_demo(out: str | os.PathLike = "runs/demo", fast: bool = False, progress: bool = False) -> dict:
    """The main job on the embedded default: the paper's study at toy scale.

    1. build or reuse the demo base model (pretrained on the general corpus);
    2. fine-tune it on the ``count`` task with AdamW at several learning rates and lengths and with
       SAM/ASAM at several ρ (12 checkpoints; 8 with ``fast``);
    3. measure flatness (λ_max, trace, ε-/SAM-/average sharpness, surface curvature) on the task's
       held-out data and forgetting on the suites, correlate, write ``report.html``;
    4. summarise: SAM vs AdamW at equal steps and at equal compute, and how strongly each flatness
       metric tracks forgetting. The numbers are reported as measured.
    """
    from landscape import correlate, forgetting as FG

    t0 = time.perf_counter()
    out = Path(out)
    steps = 800 if fast else DEMO_TRAIN["steps"]
    base = out / "base"
    s = ensure_demo_model(base, steps=steps, progress=progress)
    root = data_dir()
    runs = [r for r in DEMO_RUNS if not fast or r[0] in DEMO_FAST_RUNS]
    t_ft = time.perf_counter()
    how = {}
    base_fp = checkpoint.fingerprint(base)  # hashed once, not once per fine-tune
    for label, opt, lr, n, rho in runs:
        how[label] = _finetuned(base, base_fp, out / "ft" / label, root / "tasks" / DEMO_TASK / "train.jsonl",
                                root / "tasks" / DEMO_TASK / "eval.jsonl", opt, lr, n, rho, progress)
    t_ft = time.perf_counter() - t_ft
    manifest = demo_manifest(out, runs, fast)
    res = correlate.run_manifest(manifest, out / "report.html", progress=progress)
    # how well each fine-tune learned its task (exact match on held-out items)
    task_suite = FG.load_suite(root / "tasks" / DEMO_TASK / "eval.jsonl")
    learned = {}
    for r in res["checkpoints"]:
        ck = checkpoint.load_checkpoint(r["path"])
        learned[r["label"]] = FG.score_suite(ck.model, ck.tokenizer, task_suite)["score"]
        r["task_exact_match"] = learned[r["label"]]
    summary = demo_summary(res, s, how, t_ft, time.perf_counter() - t0)
    return {"out": str(out), "base": str(base), "report": res["report"], "manifest": str(manifest),
            "model": s, "finetunes": how, "task": DEMO_TASK, "checkpoints": res["checkpoints"],
            "ranking": res["ranking"], "comparisons": summary["comparisons"], "summary": summary["text"],
            "seconds": round(time.perf_counter() - t0, 1)}


def _row(res, label):
    return next(r for r in res["checkpoints"] if r["label"] == label)


def demo_summary(res: dict, s: dict, how: dict, t_ft: float, total: float) -> dict:
    """The printed table and the SAM-vs-AdamW comparisons."""
    metrics = res["metrics"]
    lines = [f"demo base model: {res['base']} ({s['n_params']:,} parameters, {s['steps']} steps, "
             f"{'reused' if s['reused'] else 'built in %s s' % s['seconds']})",
             f"fine-tunes on '{DEMO_TASK}': {sum(v == 'trained' for v in how.values())} trained, "
             f"{sum(v == 'reused' for v in how.values())} reused ({t_ft:.0f} s)", ""]
    head = f"{'checkpoint':<20} {'task EM':>7} {'forget':>7} " + " ".join(f"{m[:12]:>12}" for m in metrics)
    lines.append(head)
    for r in res["checkpoints"]:
        fg = r["forgetting"]["average"]["delta"]
        lines.append(f"{r['label']:<20} {r.get('task_exact_match', float('nan')):7.2f} {fg:7.3f} "
                     + " ".join(f"{_g(r['flatness'].get(m)):>12}" for m in metrics))
    comps = []
    labels = {r["label"] for r in res["checkpoints"]}
    for sam, adam, kind in (("sam-rho0.05", "adamw-lr1e-3", "equal steps (150)"),
                            ("sam-rho0.05", "adamw-lr1e-3-s300", "equal compute (300 passes)")):
        if sam in labels and adam in labels:
            a, b = _row(res, sam), _row(res, adam)
            comps.append({"comparison": kind, "sam": sam, "adamw": adam,
                          "lambda_max": [a["flatness"].get("lambda_max"), b["flatness"].get("lambda_max")],
                          "forgetting": [a["forgetting"]["average"]["delta"], b["forgetting"]["average"]["delta"]],
                          "task_exact_match": [a.get("task_exact_match"), b.get("task_exact_match")]})
    lines.append("")
    for c in comps:
        (ls, la), (fs, fa) = c["lambda_max"], c["forgetting"]
        flatter = "flatter" if ls is not None and la is not None and ls < la else "NOT flatter"
        less = "less" if fs < fa else "NOT less"
        lines.append(f"SAM ρ=0.05 vs AdamW at {c['comparison']}: λ_max {_g(ls)} vs {_g(la)} ({flatter}); "
                     f"forgetting {fs:.3f} vs {fa:.3f} ({less} forgetting); task EM {c['task_exact_match'][0]:.2f} "
                     f"vs {c['task_exact_match'][1]:.2f}")
    lines.append("")
    lines.append("flatness metric vs average forgetting (Spearman ρ [95% bootstrap CI], p; n checkpoints):")
    for r in res["ranking"]:
        c = res["correlations"][r["metric"]]["average"]["spearman"]
        ci = c.get("ci") or [None, None]
        lines.append(f"  {r['metric']:<20} ρ {_g(r['spearman']):>7} [{_g(ci[0])}, {_g(ci[1])}]  p {_g(r['p'])}  "
                     f"n {r['n']}")
    lines.append("")
    lines.append(f"report: {res['report']}  (json: {Path(res['report']).with_suffix('.json')}); total {total:.0f} s")
    return {"text": "\n".join(lines), "comparisons": comps}


def _g(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)
