"""How to measure curvature of bf16 weights: methods compared on accuracy, time and memory.

    python benchmarks/bf16.py [--ckpt runs/demo/base] [--data data/eval.jsonl] [--out benchmarks/results_bf16.json]

One checkpoint loaded in bf16; the reference is λ_max of *the same bf16 weights* held in float32 and
measured by double backward (Lanczos, tol 1e-6). Each method runs Lanczos λ_max (tol 1e-3, seed 0) in
a fresh process (its peak RSS is its own):

- ``native-fd-nearest``: central differences with the weights stepped in bf16, rounded to nearest
  (what `sharpness --dtype bfloat16 --hvp-method fd` did before the float32 view);
- ``native-fd-dithered``: the same, the step rounded at random onto the bf16 grid (unbiased);
- ``native-reverse``: exact double backward in bf16 arithmetic;
- ``view-fd`` / ``view-reverse``: the weights widened to float32 for the measurement
  (``params.widened``, what `sharpness`, `predict` and the callback now do), fd or double backward.

Writes the JSON with the command, versions and machine.
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

CHILD = r"""
import sys, json, time, torch
sys.path.insert(0, {root!r})
from landscape.foundation import checkpoint, data, params as P
from landscape.foundation.configs import DataConfig
from landscape.foundation.objective import ModelObjective
from landscape.measures import hessian
method = {method!r}
ck = checkpoint.load_checkpoint({ckpt!r}, dtype='float32' if method == 'reference' else 'bfloat16')
if method == 'reference':  # the bf16 values, held in float32
    with torch.no_grad():
        for p in ck.model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
bs = data.batches_for(ck, DataConfig(data={data!r}, batch_size=8, num_batches=2, max_length=48))
t0 = time.perf_counter()
with P.widened(ck.model, enabled=method.startswith('view')) as origins:
    obj = ModelObjective(ck.model, bs)
    kind = 'reverse' if method.endswith('reverse') or method == 'reference' else 'fd'
    origin = [origins[id(p)] for p in obj.params] if origins else None
    class Native(hessian.HessianOperator):
        refuse_half = False  # products in the weights' own dtype, to compare
    op = Native(obj, kind, 'off', origin=origin,
                                 dither={{'native-fd-nearest': False, 'native-fd-dithered': True}}.get(method))
    tol = 1e-6 if method == 'reference' else 1e-3
    sp = hessian.lanczos(op, k=1, max_iter=80, tol=tol, seed=0, want_min=False)
print(json.dumps({{"lambda_max": sp.lambda_max, "converged": bool(sp.converged), "hvps": sp.hvps,
                  "seconds": time.perf_counter() - t0, "peak_rss_gb": P.peak_rss() / 2**30,
                  "weights_gb": sum(p.numel() * p.element_size() for p in ck.model.parameters()) / 2**30}}))
"""

METHODS = ("reference", "native-fd-nearest", "native-fd-dithered", "native-reverse", "view-fd", "view-reverse")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=str(ROOT / "runs" / "demo" / "base"))
    ap.add_argument("--data", default=str(ROOT / "data" / "eval.jsonl"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_bf16.json"))
    a = ap.parse_args()
    rows = {}
    for m in METHODS:
        code = CHILD.format(root=str(ROOT), method=m, ckpt=a.ckpt, data=a.data)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if r.returncode != 0:
            rows[m] = {"error": r.stderr.strip().splitlines()[-1]}
        else:
            rows[m] = json.loads(r.stdout.strip().splitlines()[-1])
        print(m, rows[m], flush=True)
    ref = rows["reference"].get("lambda_max")
    for m, r in rows.items():
        if ref and r.get("lambda_max") is not None:
            r["rel_error"] = abs(r["lambda_max"] - ref) / abs(ref)
    out = {"command": "python benchmarks/bf16.py " + " ".join(sys.argv[1:]), "checkpoint": a.ckpt, "data": a.data,
           "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "torch": torch.__version__, "results": rows}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
