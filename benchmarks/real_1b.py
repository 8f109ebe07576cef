"""The real model at the paper's size: Qwen2.5-Coder-1.5B-Instruct (1.78B parameters, `make real-1b`).

    python benchmarks/real_1b.py [--ckpt runs/qwen2.5-coder-1.5b] [--only loss,block,plans] [--block 27]

Each row runs in a fresh process (its peak RSS is its own) on general English (data/real/general.jsonl):

- ``loss``: our converted checkpoint's loss (batch 8 × ≤ 48 tokens) against transformers' own load of
  the GGUF file (assembled from the chunk packages into a temporary file): equal to 1e-4;
- ``block``: λ_max of one decoder block's Hessian (``--params model.layers.N.``; batch 4 × ≤ 48 tokens,
  Lanczos tol 1e-3) on the float32 weights, on the checkpoint loaded in bf16 (measured in the float32
  view), and on the bf16-rounded weights loaded in float32 — the bf16 value must equal the last;
- ``full:VARIANT:SEED`` (VARIANT float32, bf16 or float32_of_bf16): the full-model λ_max as the README's
  command measures it (tol 1e-3, ≤ 30 steps), seed SEED — ~20 min and ~18 GiB each;
- ``ball:VARIANT``: SAM sharpness and ε-sharpness (their defaults: ρ 0.05, the box matched to ρ) on the
  same batch, with the planned and measured peak;
- ``line:VARIANT``: a 5-point filter-normalised line (−1…1) through the weights;
- ``plans``: the full-model λ_max plan (`sharpness --dry-run`) in float32 and bf16, and whether it fits.
- ``train:OPT``: what a fine-tune step costs, for sizing the study at this size (OPT adamw or sam: the
  full model in bf16, StochasticAdamW; lora-adamw / lora-sam: rank 8 on the float32 model): `landscape
  finetune` on the reverse task, batch 4 × ≤ 48 tokens, 3 steps — seconds a step (after the first)
  and peak RSS;
- ``score``: seconds per item of scoring the real suites (the first 20 items of each, base model).

Writes ``benchmarks/results_real_1b.json`` with the command, versions and machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

COMMON = r"""
import sys, json, time, torch
sys.path.insert(0, {root!r})
from landscape.foundation import checkpoint, data, params as P
from landscape.foundation.configs import DataConfig, LoadConfig, SharpnessConfig
from landscape.foundation.loss import evaluate
from landscape.measures import sharpness
ckpt, general = {ckpt!r}, {general!r}
t0 = time.perf_counter()
# the checkpoint as a row measures it (float32, bf16, or its bf16-rounded weights held in float32) and
# the batch of every λ_max row: 4 × ≤ 48 general tokens
def load_variant(variant):
    ck = checkpoint.load_checkpoint(ckpt, LoadConfig(dtype="bfloat16" if variant == "bf16" else "float32"))
    if variant == "float32_of_bf16":
        with torch.no_grad():
            for p in ck.model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
    return ck, data.batches_for(ck, DataConfig(data=general, batch_size=4, num_batches=1, max_length=48))
def done(**kw):
    print(json.dumps({{**kw, "seconds": round(time.perf_counter() - t0, 1), "peak_rss_gb": round(P.peak_rss() / 2**30, 3)}}))
"""

JOBS = {
    "loss_ours": r"""
ck = checkpoint.load_checkpoint(ckpt)
bs = data.batches_for(ck, DataConfig(data=general, batch_size=8))
done(loss=evaluate(ck.model, bs).loss, tokens=bs.n_tokens)
""",
    "loss_transformers": r"""
import tempfile, os
from pathlib import Path
from transformers import AutoModelForCausalLM
from landscape.foundation.convert import assemble, qwen15_parts, QWEN15_SHA256
ck = checkpoint.load_checkpoint(ckpt)
bs = data.batches_for(ck, DataConfig(data=general, batch_size=8))
tok = ck.tokenizer
del ck
d = Path(tempfile.mkdtemp(dir=str(Path(ckpt).parent)))
f = assemble(qwen15_parts(), d / "q.gguf", QWEN15_SHA256)
try:
    ref = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=f.name, dtype=torch.float32).eval()
    loss = evaluate(ref, bs).loss
finally:
    f.unlink(); d.rmdir()
done(loss=loss, tokens=bs.n_tokens)
""",
    "block": r"""
ck, bs = load_variant({variant!r})
r = sharpness.measure(ck.model, bs, SharpnessConfig(metrics=("lambda_max",), params={params!r}, tol=1e-3,
                                                    max_iter=60))
done(lambda_max=r["metrics"]["lambda_max"], hvp=r["hvp"], hvps=r["cost"]["hvps"],
     converged=r["metrics"]["details"]["eigen"]["converged"], planned_peak_gb=r["cost"]["planned_peak_gb"],
     n_params=r["config"]["n_params"], dtype=r["config"]["dtype"])
""",
    "full": r"""
ck, bs = load_variant({variant!r})
r = sharpness.measure(ck.model, bs, SharpnessConfig(metrics=("lambda_max",), tol=1e-3, max_iter=30, seed={seed}))
done(lambda_max=r["metrics"]["lambda_max"], hvp=r["hvp"], hvps=r["cost"]["hvps"], seed={seed},
     eigen=r["metrics"]["details"]["eigen"], planned_peak_gb=r["cost"]["planned_peak_gb"], dtype=r["config"]["dtype"])
""",
    "ball": r"""
ck, bs = load_variant({variant!r})
r = sharpness.measure(ck.model, bs, SharpnessConfig(metrics=("sam", "eps"), seed=0))
m = r["metrics"]
done(sam=m["sam_sharpness"], eps=m["eps_sharpness"],
     details={{k: v for k, v in m["details"].items() if k.startswith(("sam", "eps"))}},
     loss=r["loss"], planned_peak_gb=r["cost"]["planned_peak_gb"], gradients=r["cost"].get("gradients"),
     dtype=r["config"]["dtype"])
""",
    "line": r"""
import tempfile, os
from landscape.foundation.configs import SurfaceConfig
from landscape.measures.surface import surface
ck, bs = load_variant({variant!r})
with tempfile.TemporaryDirectory() as d:
    r = surface(ck.model, bs, os.path.join(d, "line.h5"), SurfaceConfig(x="-1:1:5"))
done(x=list(r["x"]), loss=list(r["loss"]), loss_at_origin=r["loss_at_origin"],
     planned_peak_gb=r["cost"].get("planned_peak_gb"), dtype={variant!r})
""",
    "train": r"""
import tempfile
from landscape.foundation.configs import FinetuneConfig
from landscape.training.finetune import finetune
opt, lora = {opt!r}.replace("lora-", ""), {opt!r}.startswith("lora-")
steps = []
with tempfile.TemporaryDirectory() as d:
    cfg = FinetuneConfig(optimizer=opt, lr=2e-5 if not lora else 1e-3, max_steps=3, batch_size=4, max_length=48,
                         lora=8 if lora else None, eval_fraction=0.0, seed=0)
    r = finetune(ckpt, {task!r}, d + "/out", cfg, load=LoadConfig(dtype="float32" if lora else "bfloat16"),
                 on_step=lambda st, o: steps.append(time.perf_counter()))
per = (steps[-1] - steps[0]) / (len(steps) - 1)
done(opt={opt!r}, seconds_per_step=round(per, 1), update_rounding=r["update_rounding"], steps=len(steps))
""",
    "score": r"""
from landscape.measures import forgetting as FG
ck = checkpoint.load_checkpoint(ckpt)
suites = [FG.load_suite(f) for f in sorted(__import__("pathlib").Path({suites!r}).glob("*.jsonl"))]
n, t1 = 0, time.perf_counter()
for s in suites:
    s.items[:] = s.items[:20]
    FG.score_suite(ck.model, ck.tokenizer, s, 16)
    n += len(s.items)
done(items=n, seconds_per_item=round((time.perf_counter() - t1) / n, 4))
""",
    "plan": r"""
ck = checkpoint.load_checkpoint(ckpt, LoadConfig(dtype={dtype!r}))
bs = data.batches_for(ck, DataConfig(data=general, batch_size=4, num_batches=1, max_length=48))
r = sharpness.measure(ck.model, bs, SharpnessConfig(metrics=("lambda_max",), tol=1e-3, dry_run=True))
free = P.free_memory("cpu")
pl = r["plan"]
done(plan=pl, free_gb=round(free / 2**30, 2), fits=pl["peak_bytes"] - pl["start_bytes"] <= 0.92 * free)
""",
}


def run(job: str, **kw) -> dict:
    code = COMMON.format(root=str(ROOT), ckpt=kw.pop("ckpt"), general=str(ROOT / "data" / "real" / "general.jsonl"))
    code += JOBS[job].format(**kw)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=str(ROOT / "runs" / "qwen2.5-coder-1.5b"))
    ap.add_argument("--only", default="loss,block,plans")
    ap.add_argument("--block", type=int, default=27)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_real_1b.json"))
    a = ap.parse_args()
    out = {"command": "python benchmarks/real_1b.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
           "rows": {}}
    if Path(a.out).is_file():
        out["rows"] = json.loads(Path(a.out).read_text()).get("rows", {})
    jobs = []
    only = a.only.split(",")
    if "loss" in only:
        jobs += [("loss_ours", "loss_ours", {}), ("loss_transformers", "loss_transformers", {})]
    if "block" in only:
        params = rf"^model\.layers\.{a.block}\."
        jobs += [(f"block{a.block}_{v}", "block", {"variant": v, "params": params})
                 for v in ("float32", "bf16", "float32_of_bf16")]
    for spec in (x for x in only if x.startswith("full:")):
        _, variant, seed = spec.split(":")
        jobs.append((f"full_{variant}_seed{seed}", "full", {"variant": variant, "seed": int(seed)}))
    for spec in (x for x in only if x.startswith(("ball:", "line:"))):
        job, variant = spec.split(":")
        jobs.append((f"{job}_{variant}", job, {"variant": variant}))
    for spec in (x for x in only if x.startswith("train:")):
        opt = spec.split(":")[1]
        jobs.append((f"train_{opt}", "train", {"opt": opt, "task": str(ROOT / "data" / "real" / "tasks" / "reverse" /
                                                                       "train.jsonl")}))
    if "score" in only:
        jobs.append(("score", "score", {"suites": str(ROOT / "data" / "real" / "suites")}))
    if "plans" in only:
        jobs += [(f"plan_full_{d}", "plan", {"dtype": d}) for d in ("float32", "bfloat16")]
    for name, job, kw in jobs:
        out["rows"][name] = run(job, ckpt=a.ckpt, **kw)
        print(name, json.dumps(out["rows"][name])[:400], flush=True)
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
