#!/usr/bin/env python3
"""Performance ratios of `landscape`, measured in one run on one model and data (see README table).

    python benchmarks/run.py [--quick]

Writes benchmarks/results.json and rewrites the README block between the bench markers.
Every figure is a ratio of two timings taken back to back in this process, so it holds on a noisy
machine; absolute seconds are printed only for context.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from landscape import checkpoint, data, demo, hessian, loss  # noqa: E402
from landscape import params as P  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def setup(base: Path, num_batches: int):
    ck = checkpoint.load_checkpoint(base)
    bs = data.batches_for(ck, demo.default_eval_data(), batch_size=8, num_batches=num_batches)
    return ck, bs


def bench_hvp(ck, bs, repeat: int) -> dict:
    obj = loss.Objective(ck.model, bs)
    v = P.randn_like(obj.params, torch.Generator().manual_seed(0))
    t_grad = timed(lambda: loss.gradient(obj), repeat)
    out = {"grad_s": t_grad}
    for method in ("reverse", "forward"):
        h = hessian.HVP(obj, method)
        out[f"hvp_{method}_s"] = timed(lambda: h(v), repeat)
        out[f"hvp_{method}_over_grad"] = out[f"hvp_{method}_s"] / t_grad
    return out


def hvps_to_accuracy(history: list[float], truth: float, rel: float = 1e-3) -> int | None:
    """First HVP count after which the λ_max estimate stays within ``rel`` of the truth."""
    last_bad = None
    for i, x in enumerate(history):
        if abs(x - truth) > rel * abs(truth):
            last_bad = i
    if last_bad == len(history) - 1:
        return None
    return (last_bad + 1 if last_bad is not None else 0) + 1


def bench_lambda(ck, bs) -> dict:
    obj = loss.Objective(ck.model, bs)
    truth = hessian.lanczos(hessian.HVP(obj), k=1, max_iter=150, tol=1e-9, want_min=False)
    lz = hessian.lanczos(hessian.HVP(obj), k=1, max_iter=100, tol=1e-12, want_min=False, seed=1)
    pw = hessian.power_iteration(hessian.HVP(obj), k=1, max_iter=300, tol=1e-12, want_min=False, seed=1)
    # power iteration first finds the largest-|λ| eigenvalue; at a trained point that is λ_max, and
    # its history's first run is what older tools report.
    return {"lambda_max": truth.lambda_max, "truth_converged": truth.converged,
            "lanczos_hvps_to_1e-3": hvps_to_accuracy(lz.history, truth.lambda_max),
            "power_hvps_to_1e-3": hvps_to_accuracy(pw.history[:300], truth.lambda_max)}


# Shared start of every memory child process: load the demo model and batches, define rss().
CHILD_PREAMBLE = r"""
import sys, json, torch, numpy as np
sys.path.insert(0, {root!r})
from landscape import checkpoint, data, demo, hessian, loss, surface, params as P
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
ck = checkpoint.load_checkpoint({base!r})
bs = data.batches_for(ck, demo.default_eval_data(), batch_size=8, num_batches={nb})
"""


def run_child(body: str, **kw) -> dict:
    """Run CHILD_PREAMBLE + body in a fresh Python; return the JSON of its last stdout line."""
    code = (CHILD_PREAMBLE + body).format(root=str(ROOT), **kw)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


MEM_CHILD = r"""obj = loss.Objective(ck.model, bs)
v = P.randn_like(obj.params, torch.Generator().manual_seed(0))
h = hessian.HVP(obj)
loss.evaluate(ck.model, bs)
before = rss('VmRSS')
(lambda: loss.gradient(obj)) () if {what!r} == 'grad' else h(v)
print(json.dumps({{'extra': rss('VmHWM') - before, 'param_bytes': sum(p.numel() * p.element_size() for p in ck.model.parameters())}}))
"""


def bench_memory(base: Path, nb: int) -> dict:
    """Peak extra resident memory of one gradient vs one HVP, each in a fresh process (CPU)."""
    out = {}
    for what in ("grad", "hvp"):
        out[what] = run_child(MEM_CHILD, base=str(base), nb=nb, what=what)
    return {"grad_extra_bytes": out["grad"]["extra"], "hvp_extra_bytes": out["hvp"]["extra"],
            "hvp_over_grad_memory": out["hvp"]["extra"] / max(1, out["grad"]["extra"]),
            "param_bytes": out["grad"]["param_bytes"]}


def bench_surface(ck, bs, tmp: Path, repeat: int) -> dict:
    """Surface time per point vs a bare forward pass over the same batches (``loss.evaluate``)."""
    import numpy as np

    from landscape import surface

    n = 5
    t_fwd = timed(lambda: loss.evaluate(ck.model, bs), repeat)
    times = []
    for r in range(2):
        out = tmp / f"bench_surface_{r}.h5"
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        surface.surface(ck.model, bs, out, np.linspace(-1, 1, n), np.linspace(-1, 1, n))
        times.append((time.perf_counter() - t0) / (n * n))
        out.unlink(missing_ok=True)
    per_point = min(times)
    return {"forward_s": t_fwd, "surface_point_s": per_point, "surface_over_forward": per_point / t_fwd}


SURF_MEM_CHILD = r"""loss.evaluate(ck.model, bs)
before = rss('VmHWM')
surface.surface(ck.model, bs, {out!r}, np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
print(json.dumps({{'extra': rss('VmHWM') - before,
                  'param_bytes': sum(p.numel() * p.element_size() for p in ck.model.parameters())}}))
"""


def bench_surface_memory(base: Path, nb: int, tmp: Path) -> dict:
    out = tmp / "bench_mem.h5"
    out.unlink(missing_ok=True)
    r = run_child(SURF_MEM_CHILD, base=str(base), nb=nb, out=str(out))
    out.unlink(missing_ok=True)
    return {"surface_extra_bytes": r["extra"], "param_bytes": r["param_bytes"],
            "surface_extra_over_params": r["extra"] / r["param_bytes"]}


def bench_sam(ck, bs, repeat: int) -> dict:
    """One optimizer step on one batch: SAM (and ASAM) vs AdamW, timed alternately on one model."""
    from landscape import finetune

    model = ck.model
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    out = {}
    for name in ("adamw", "sam", "asam"):
        cfg = finetune.TrainConfig(optimizer=name, lr=1e-6, rho=0.05)
        opt = finetune.make_optimizer(params, cfg)
        model.train()
        out[f"{name}_step_s"] = timed(lambda: finetune.train_step(model, opt, bs.batches[:1], cfg, 1e-6), repeat)
        model.eval()
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
    out["sam_over_adamw"] = out["sam_step_s"] / out["adamw_step_s"]
    out["asam_over_adamw"] = out["asam_step_s"] / out["adamw_step_s"]
    return out


SAM_MEM_CHILD = r"""from landscape import finetune
cfg = finetune.TrainConfig(optimizer={name!r}, lr=1e-6)
params = list(ck.model.parameters())
opt = finetune.make_optimizer(params, cfg)
loss.evaluate(ck.model, bs)
before = rss('VmRSS')
for _ in range(2):
    finetune.train_step(ck.model, opt, bs.batches[:1], cfg, 1e-6)
print(json.dumps({{'extra': rss('VmHWM') - before}}))
"""


def bench_sam_memory(base: Path, nb: int) -> dict:
    """Peak extra resident memory of training steps (optimizer state included), fresh process each."""
    r = {name: run_child(SAM_MEM_CHILD, base=str(base), nb=nb, name=name)["extra"] for name in ("adamw", "sam")}
    return {"adamw_extra_bytes": r["adamw"], "sam_extra_bytes": r["sam"],
            "sam_over_adamw_memory": r["sam"] / max(1, r["adamw"])}


def table(res: dict) -> str:
    h, lam, mem = res["hvp"], res["lambda"], res["memory"]
    cmd = "`make bench`"
    def ok(x, t):
        return "met" if x is not None and x <= t else "**not met**"
    rows = [
        ("HVP / gradient time (double backward)", f"{h['hvp_reverse_over_grad']:.2f}", "≤ 2.5", ok(h['hvp_reverse_over_grad'], 2.5)),
        ("HVP / gradient time (forward-over-reverse)", f"{h['hvp_forward_over_grad']:.2f}", "≤ 2.5", ok(h['hvp_forward_over_grad'], 2.5)),
        ("HVPs to 1e-3 relative λ_max, Lanczos", str(lam["lanczos_hvps_to_1e-3"]), "≤ 40", ok(lam["lanczos_hvps_to_1e-3"], 40)),
        ("HVPs to 1e-3 relative λ_max, power iteration", str(lam["power_hvps_to_1e-3"]), "(comparison)", ""),
        ("peak extra memory, HVP / gradient (CPU RSS)", f"{mem['hvp_over_grad_memory']:.2f}", "(report)", ""),
    ]
    if "surface" in res:
        su = res["surface"]
        rows += [
            ("surface time per point / bare forward pass", f"{su['surface_over_forward']:.3f}", "≤ 1.05",
             ok(su["surface_over_forward"], 1.05)),
            ("surface peak extra memory / parameter bytes (CPU RSS)", f"{su['surface_extra_over_params']:.2f}", "≤ 1",
             ok(su["surface_extra_over_params"], 1.0)),
        ]
    if "sam" in res:
        sa = res["sam"]
        rows += [
            ("SAM step / AdamW step time (1 batch)", f"{sa['sam_over_adamw']:.2f}", "≤ 2.05", ok(sa["sam_over_adamw"], 2.05)),
            ("ASAM step / AdamW step time (1 batch)", f"{sa['asam_over_adamw']:.2f}", "(report)", ""),
            ("SAM / AdamW peak extra memory (CPU RSS, optimizer state incl.)", f"{sa['sam_over_adamw_memory']:.2f}",
             "(report)", ""),
        ]
    lines = [f"Measured {res['date']} on {res['machine']} (torch {res['torch']}), demo model "
             f"({res['n_params']:,} parameters, float32), {res['batches']} batches × 8 sequences of data/eval.jsonl.",
             "", "| figure | value | target | status |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", f"Produced by {cmd} (`python benchmarks/run.py`); raw numbers in `benchmarks/results.json`."]
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = ROOT / "README.md"
    s = readme.read_text()
    a, b = "<!-- bench:start -->", "<!-- bench:end -->"
    if a in s and b in s:
        s = s[: s.index(a) + len(a)] + "\n" + text + "\n" + s[s.index(b):]
        readme.write_text(s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = ROOT / "runs" / "demo" / "base"
    s = demo.ensure_demo_model(base, steps=demo.DEMO_TRAIN["steps"])
    nb = 4
    ck, bs = setup(base, nb)
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "torch": torch.__version__, "n_params": s["n_params"], "batches": nb, "threads": torch.get_num_threads()}
    print("HVP vs gradient ...", flush=True)
    res["hvp"] = bench_hvp(ck, bs, repeat=3 if args.quick else 7)
    print("λ_max convergence ...", flush=True)
    res["lambda"] = bench_lambda(ck, bs)
    print("memory ...", flush=True)
    res["memory"] = bench_memory(base, nb)
    print("surface ...", flush=True)
    tmp = ROOT / "runs" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)
    res["surface"] = {**bench_surface(ck, bs, tmp, repeat=3 if args.quick else 7),
                      **bench_surface_memory(base, nb, tmp)}
    print("SAM vs AdamW ...", flush=True)
    res["sam"] = {**bench_sam(ck, bs, repeat=5 if args.quick else 11), **bench_sam_memory(base, nb)}
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    t = table(res)
    print(t)
    if not args.no_readme:
        update_readme(t)


if __name__ == "__main__":
    main()
