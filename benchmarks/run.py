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
    h = hessian.HVP(obj, cache_graph=True)  # gradient graph kept: one backward per HVP
    out["hvp_cached_s"] = timed(lambda: h(v), repeat)
    out["hvp_cached_over_grad"] = out["hvp_cached_s"] / t_grad
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


def bench_pyhessian(ck, bs) -> dict | None:
    """λ_max on one batch: our Lanczos vs PyHessian's power iteration (if `pyhessian` is installed),
    each to its 1e-3 tolerance, against a tight Lanczos reference; time, HVPs and relative error."""
    try:
        import importlib

        importlib.import_module("pyhessian")
        PH = sys.modules["pyhessian.hessian"]  # the module (the package re-exports a class of that name)
    except ImportError:
        return None
    b = bs.batches[0]
    model = ck.model
    obj = loss.Objective(model, [b])
    truth = hessian.lanczos(hessian.HVP(obj), k=1, max_iter=150, tol=1e-9, want_min=False).lambda_max
    t0 = time.perf_counter()
    ours = hessian.lanczos(hessian.HVP(obj), k=1, tol=1e-3, want_min=False, seed=1)
    t_ours = time.perf_counter() - t0

    class Logits(torch.nn.Module):  # PyHessian wants criterion(model(x), y)
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            lg = self.m(input_ids=x, attention_mask=b.attention_mask, use_cache=False).logits[:, :-1]
            return lg.reshape(-1, lg.shape[-1])

    crit = torch.nn.CrossEntropyLoss(ignore_index=data.IGNORE)
    calls = [0]
    real = PH.hessian_vector_product

    def counted(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    PH.hessian_vector_product = counted
    torch.manual_seed(1)
    try:
        with hessian.math_attention():
            t0 = time.perf_counter()
            h = PH.hessian(Logits(model), crit, data=(b.input_ids, b.labels[:, 1:].reshape(-1)), cuda=False)
            eig, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
            t_pyh = time.perf_counter() - t0
    finally:
        PH.hessian_vector_product = real
        model.zero_grad(set_to_none=True)
    return {"lambda_max": truth, "ours_s": t_ours, "ours_hvps": ours.hvps,
            "ours_rel_err": abs(ours.lambda_max - truth) / abs(truth), "pyhessian_s": t_pyh,
            "pyhessian_hvps": calls[0], "pyhessian_rel_err": abs(eig[0] - truth) / abs(truth)}


SIZES = {"small (h64, L2)": dict(hidden=64, layers=2, heads=4, intermediate=128),
         "demo (h128, L4)": dict(hidden=128, layers=4, heads=4, intermediate=256),
         "large (h256, L6)": dict(hidden=256, layers=6, heads=8, intermediate=512)}


def bench_scaling(ck, quick: bool) -> dict:
    """HVP/grad, SAM/AdamW and surface-point/forward ratios over three model sizes (random weights of
    the demo architecture, demo tokenizer) and three sequence lengths (demo size)."""
    import numpy as np

    from landscape import finetune, surface

    tok = ck.tokenizer
    rows = []

    def ratios(model, bs):
        obj = loss.Objective(model, bs)
        v = P.randn_like(obj.params, torch.Generator().manual_seed(0))
        t_grad = timed(lambda: loss.gradient(obj), 3)
        h = hessian.HVP(obj)
        t_hvp = timed(lambda: h(v), 3)
        params = [p for p in model.parameters()]
        saved = [p.detach().clone() for p in params]
        t = {}
        for name in ("adamw", "sam"):
            cfg = finetune.TrainConfig(optimizer=name, lr=1e-6)
            opt = finetune.make_optimizer(params, cfg)
            t[name] = timed(lambda: finetune.train_step(model, opt, bs.batches[:1], cfg, 1e-6), 3 if quick else 5)
        model.eval()
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
        t_fwd = timed(lambda: loss.evaluate(model, bs), 3)
        out = ROOT / "runs" / "bench" / "scaling.h5"
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        surface.surface(model, bs, out, np.linspace(-1, 1, 9))
        t_pt = (time.perf_counter() - t0) / 9
        out.unlink(missing_ok=True)
        return {"n_params": sum(p.numel() for p in params), "hvp_over_grad": t_hvp / t_grad,
                "sam_over_adamw": t["sam"] / t["adamw"], "surface_over_forward": t_pt / t_fwd,
                "grad_s": t_grad}

    for name, arch in SIZES.items():
        cfg = checkpoint.tiny_config("llama", vocab_size=len(tok), tokenizer=tok, max_positions=128, **arch)
        model = checkpoint.build_model(cfg, seed=0)
        bs = data.load_batches(demo.default_eval_data(), tok, batch_size=8, max_length=64, num_batches=4)
        rows.append({"model": name, "seq_len": 64, **ratios(model, bs)})
    for T in (32, 128):
        bs = data.load_batches(demo.data_dir() / "pretrain.jsonl", tok, batch_size=64, max_length=T, num_batches=8)
        # pack short texts so that the length is really T: concatenate ids across records
        ids = torch.cat([b.input_ids[b.attention_mask.bool()] for b in bs.batches])
        n = (len(ids) // T) * T
        x = ids[:n].view(-1, T)[:32]
        batches = [data.Batch(x[i:i + 8], torch.ones_like(x[i:i + 8]), x[i:i + 8].clone()) for i in range(0, 32, 8)]
        packed = data.Batches(batches, "packed", "pretrain", 32)
        rows.append({"model": "demo (h128, L4)", "seq_len": T, **ratios(ck.model, packed)})
    return {"rows": rows}


def table(res: dict) -> str:
    h, lam, mem = res["hvp"], res["lambda"], res["memory"]
    cmd = "`make bench`"
    def ok(x, t):
        return "met" if x is not None and x <= t else "**not met**"
    rows = [
        ("HVP / gradient time (double backward)", f"{h['hvp_reverse_over_grad']:.2f}", "≤ 2.5", ok(h['hvp_reverse_over_grad'], 2.5)),
        *([("HVP / gradient time (double backward, `--cache-graph`)", f"{h['hvp_cached_over_grad']:.2f}", "≤ 2.5",
             ok(h['hvp_cached_over_grad'], 2.5))] if "hvp_cached_over_grad" in h else []),
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
    scaling = ""
    if "scaling" in res:
        sc = ["", "Scaling (same run; random weights for the small/large sizes; batches of 8):", "",
              "| model | parameters | tokens/seq | HVP/grad | SAM/AdamW | surface point/forward |", "|---|---|---|---|---|---|"]
        for r in res["scaling"]["rows"]:
            sc.append(f"| {r['model']} | {r['n_params']:,} | {r['seq_len']} | {r['hvp_over_grad']:.2f} | "
                      f"{r['sam_over_adamw']:.2f} | {r['surface_over_forward']:.3f} |")
        scaling = "\n".join(sc)
    lines = [f"Measured {res['date']} on {res['machine']} (torch {res['torch']}), demo model "
             f"({res['n_params']:,} parameters, float32), {res['batches']} batches × 8 sequences of data/eval.jsonl.",
             "", "| figure | value | target | status |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    if scaling:
        lines.append(scaling)
    ph = res.get("pyhessian")
    if ph:
        lines += ["", "λ_max on one batch of 8, each tool at its own 1e-3 stopping tolerance (same run):", "",
                  "| tool | time (s) | HVPs | relative error vs tight Lanczos |", "|---|---|---|---|",
                  f"| landscape (Lanczos, residual test) | {ph['ours_s']:.2f} | {ph['ours_hvps']} | {ph['ours_rel_err']:.1e} |",
                  f"| PyHessian 0.1 (power iteration, relative-change test) | {ph['pyhessian_s']:.2f} | "
                  f"{ph['pyhessian_hvps']} | {ph['pyhessian_rel_err']:.1e} |"]
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
    print("PyHessian comparison (if installed) ...", flush=True)
    res["pyhessian"] = bench_pyhessian(ck, bs)
    print("scaling with model size and sequence length ...", flush=True)
    res["scaling"] = bench_scaling(ck, args.quick)
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    t = table(res)
    print(t)
    if not args.no_readme:
        update_readme(t)


if __name__ == "__main__":
    main()
