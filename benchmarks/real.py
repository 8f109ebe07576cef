"""Performance ratios on the real model, SmolLM2-135M-Instruct (134.5M parameters, float32, CPU).

    python benchmarks/real.py [--ckpt runs/smollm2] [--quick] [--no-readme]   (or `make bench-real`)

Everything as ratios measured in one run on the same batch (8 general-English texts, ≤ 48 tokens):
HVP / gradient (graph kept by `--cache-graph auto`, and rebuilt), surface point / bare forward,
SAM / AdamW step, the seconds of one fine-tune step, and peak resident memory over the weights for
a gradient, an HVP, an AdamW and a SAM step and `sharpness --top-k 5 --tol 1e-6` (each in a fresh
process). Writes `benchmarks/results_real.json` and the README block between `bench-real` markers.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import paired  # noqa: E402

from landscape.foundation import checkpoint, data, loss, objective, params as P  # noqa: E402
from landscape.foundation.configs import DataConfig, FinetuneConfig, SurfaceConfig  # noqa: E402
from landscape.measures import hessian, surface  # noqa: E402
from landscape.training import finetune  # noqa: E402

CHILD = r"""
import sys, json, torch
sys.path.insert(0, {root!r})
from landscape.foundation import checkpoint, data, loss, objective, params as P
from landscape.foundation.configs import DataConfig, FinetuneConfig, SharpnessConfig
from landscape.measures import hessian, sharpness
from landscape.training import finetune
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
out = {{}}
ck = checkpoint.load_checkpoint({ckpt!r})
bs = data.batches_for(ck, DataConfig(data={data!r}, batch_size=8, num_batches=1, max_length=48))
loss.evaluate(ck.model, bs)
weights = sum(p.numel() * p.element_size() for p in ck.model.parameters())
before = rss('VmRSS')
what = {what!r}
obj = objective.ModelObjective(ck.model, bs)
if what == 'grad':
    objective.gradient(obj)
elif what in ('hvp', 'hvp_off'):
    h = hessian.HessianOperator(obj, cache_graph='auto' if what == 'hvp' else 'off')
    h.hvp(P.randn_like(obj.params, torch.Generator().manual_seed(0)))
elif what in ('adamw', 'sam'):
    cfg = FinetuneConfig(optimizer=what, lr=1e-6)
    opt = finetune.make_optimizer(list(ck.model.parameters()), cfg)
    with P.reused_memory():  # as finetune.train runs on the CPU
        for _ in range(2):
            finetune.train_step(ck.model, opt, bs.batches[:1], cfg, 1e-6)
elif what.startswith('top5'):
    # top5: the defaults (top 5 with the smallest thick-restart basis, λ_min without a basis);
    # top5_disk: thick restarts on disk; top5_m14: a 14-vector basis in memory (the reference)
    extra = {{'top5_disk': dict(reorth='full', basis='disk'),
             'top5_m14': dict(reorth='full', basis='memory', max_basis=14)}}.get(what, {{}})
    r = sharpness.measure(ck.model, bs, SharpnessConfig(metrics='lambda_max,lambda_min', top_k=5, tol=1e-6,
                                                        max_iter=1000, **extra))
    out = {{k: r['metrics']['details']['eigen'][k] for k in ('eigenvalues', 'lambda_min', 'converged', 'hvps',
                                                           'restarts', 'max_basis', 'basis')}}
elif what == 'arpack':  # the reference: scipy's ARPACK in float64 over our float32 HVPs
    import numpy as np, scipy.sparse.linalg as sla
    h = hessian.HessianOperator(obj)
    n = h.shape[0]
    calls = [0]
    def mv(x):
        calls[0] += 1
        return h.matvec(torch.from_numpy(np.ascontiguousarray(x).reshape(-1)).float()).double().numpy()
    A = sla.LinearOperator((n, n), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    # k = 1 at each end with 8 Lanczos vectors (8.6 GB in float64); tol 1e-7 is below what a 1e-5
    # comparison needs and above the float32 products' own noise (a tighter tol never converges)
    top = sla.eigsh(A, k=1, which='LA', ncv=8, tol=1e-7, v0=v0, maxiter=300, return_eigenvectors=False)
    calls_top = calls[0]
    low = sla.eigsh(A, k=1, which='SA', ncv=8, tol=1e-7, v0=v0, maxiter=300, return_eigenvectors=False)
    out = {{'eigenvalues': [float(top[0])], 'lambda_min': float(low[0]), 'hvps': calls[0], 'hvps_top': calls_top,
           'converged': True}}  # eigsh raises ArpackNoConvergence otherwise
print(json.dumps({{'extra': rss('VmHWM') - before, 'peak': rss('VmHWM'), 'weights': weights, **out}}))
"""


def child(what: str, ckpt: str, data_file: str) -> dict:
    code = CHILD.format(root=str(ROOT), ckpt=ckpt, data=data_file, what=what)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"memory child {what!r} failed:\n" + "\n".join(r.stderr.splitlines()[-15:]))
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - t0, 1),
            "date": time.strftime("%Y-%m-%d")}


def ratios(ck, bs, rounds: int) -> dict:
    obj = objective.ModelObjective(ck.model, bs)
    v = P.randn_like(obj.params, torch.Generator().manual_seed(0))
    grad = lambda: objective.gradient(obj)  # noqa: E731
    h = hessian.HessianOperator(obj)
    q_auto, t_grad, t_hvp = paired(grad, lambda: h.hvp(v), rounds)
    cached = h.cached
    h.release()
    h_off = hessian.HessianOperator(obj, cache_graph="off")
    q_off, _, _ = paired(grad, lambda: h_off.hvp(v), rounds)
    h_fd = hessian.HessianOperator(obj, method="fd")
    q_fd, _, _ = paired(grad, lambda: h_fd.hvp(v), rounds)
    out = {"grad_s": t_grad, "hvp_s": t_hvp, "hvp_over_grad": q_auto, "graph_cached": cached,
           "hvp_rebuilt_over_grad": q_off, "hvp_fd_over_grad": q_fd}
    h5 = ROOT / "runs" / "bench" / "real_line.h5"
    h5.parent.mkdir(parents=True, exist_ok=True)

    def line():  # a 5-point line, held directions
        h5.unlink(missing_ok=True)
        surface.surface(ck.model, bs, h5, SurfaceConfig(x="-1:1:5", directions="held"))
    q_surf, _, _ = paired(lambda: [loss.evaluate(ck.model, bs) for _ in range(5)], line, rounds)
    h5.unlink(missing_ok=True)
    out["surface_point_over_forward"] = q_surf
    params = list(ck.model.parameters())
    saved = [p.detach().clone() for p in params]
    opts = {}
    for name in ("adamw", "sam"):
        cfg = FinetuneConfig(optimizer=name, lr=1e-6)
        opts[name] = (finetune.make_optimizer(params, cfg), cfg)
    ck.model.train()
    with P.reused_memory():  # the allocator as finetune.train runs on the CPU (freed steps' pages reused)
        q_sam, t_adamw, t_sam = paired(*[lambda o=o, c=c: finetune.train_step(ck.model, o, bs.batches[:1], c, 1e-6)
                                         for o, c in (opts["adamw"], opts["sam"])], rounds)
    ck.model.eval()
    with torch.no_grad():
        for p, w in zip(params, saved):
            p.copy_(w)
    out.update(sam_over_adamw=q_sam, adamw_step_s=t_adamw, sam_step_s=t_sam)
    return out


def table(res: dict) -> str:
    r, m = res["ratios"], res["memory"]
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    w = m["grad"]["weights"]
    rows = [("HVP / gradient time (graph kept, `--cache-graph auto`)" if r["graph_cached"] else
             "HVP / gradient time (`--cache-graph auto`: graph rebuilt here)", f"{r['hvp_over_grad']:.2f}"),
            ("HVP / gradient time (graph rebuilt per HVP, `--cache-graph off`)", f"{r['hvp_rebuilt_over_grad']:.2f}"),
            *([("HVP / gradient time (finite differences, `--hvp-method fd`: two gradients)",
                f"{r['hvp_fd_over_grad']:.2f}")] if "hvp_fd_over_grad" in r else []),
            ("surface time per point / bare forward (5-point line, held directions)",
             f"{r['surface_point_over_forward']:.2f}"),
            ("SAM / AdamW step time", f"{r['sam_over_adamw']:.2f}"),
            ("one fine-tune step, AdamW / SAM (batch 8 × ≤ 48 tokens)", f"{r['adamw_step_s']:.2f} s / {r['sam_step_s']:.2f} s"),
            ("one gradient / one HVP (same batch)", f"{r['grad_s']:.2f} s / {r['hvp_s']:.2f} s")]
    for what, label in (("grad", "gradient"), ("hvp", "HVP (graph kept)"), ("hvp_off", "HVP (graph rebuilt)"),
                        ("adamw", "AdamW steps (with optimizer state)"), ("sam", "SAM steps (with optimizer state)"),
                        ("top5", "`sharpness --metrics lambda_max,lambda_min --top-k 5 --tol 1e-6`")):
        if what in m:
            x = m[what]
            rows.append((f"peak memory, {label}: extra RSS / weights ({gb(w)})",
                         f"{x['extra'] / w:.2f} (peak RSS {gb(x['peak'])}; {x['seconds']} s)"))
    rows += _top5_rows(m)
    lines = [f"SmolLM2-135M-Instruct ({res['n_params']:,} parameters, float32), {res['machine']}, torch "
             f"{res['torch']}, {res['date']}; batch: 8 general-English texts, {res['tokens']} loss tokens.", "",
             "| quantity | measured |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    later = [f"{k} on {x['date']}" for k, x in {"ratios": r, **m}.items() if x.get("date", res["date"]) != res["date"]]
    lines += ["", "Produced by `make bench-real` (`python benchmarks/real.py`); raw numbers in "
                  "`benchmarks/results_real.json`." + (f" Rows re-measured later with `--only` (same machine): "
                                                       f"{', '.join(later)}." if later else "")]
    return "\n".join(lines)


def _top5_rows(m: dict) -> list[tuple[str, str]]:
    """The top-5 runs against each other and against ARPACK (float64 over the same float32 HVPs)."""
    rows = []
    for what, label in (("top5", "defaults"), ("top5_m14", "14-vector basis in memory, the reference"),
                        ("top5_disk", "thick restarts on disk")):
        if what in m and "hvp" in m:
            x = m[what]
            basis = x.get("basis") or {}
            rows.append((f"top-5 run ({label}): peak RSS / peak RSS of one HVP (weights + one batch's graph; "
                         "target ≤ 2)",
                         f"{x['peak'] / m['hvp']['peak']:.2f} ({x['hvps']} HVPs, {x.get('restarts', 0)} restarts, "
                         f"converged: {x['converged']}, basis: {basis.get('where')} × {basis.get('capacity')}; "
                         f"top-5 {', '.join(f'{e:.3f}' for e in x['eigenvalues'])}; λ_min {x['lambda_min']:.3f}; "
                         f"{x['seconds']} s)"))
    if "top5" in m and "top5_m14" in m:
        a, b = m["top5"], m["top5_m14"]
        rel = max(abs(p - q) / abs(q) for p, q in zip(a["eigenvalues"] + [a["lambda_min"]],
                                                        b["eigenvalues"] + [b["lambda_min"]]))
        rows.append(("top-5 and λ_min, defaults vs the 14-vector basis: largest relative difference (target ≤ 1e-4)",
                     f"{rel:.1e}"))
    if "arpack" in m and "top5" in m:
        r, a = m["arpack"], m["top5"]
        rows.append(("λ_max / λ_min, ours (float32) vs scipy ARPACK in float64 over the same HVPs: relative "
                     "difference (target ≤ 1e-5)",
                     f"{abs(a['eigenvalues'][0] - r['eigenvalues'][0]) / abs(r['eigenvalues'][0]):.1e} / "
                     f"{abs(a['lambda_min'] - r['lambda_min']) / abs(r['lambda_min']):.1e} (ARPACK "
                     f"{r['eigenvalues'][0]:.4f} / {r['lambda_min']:.4f} in {r['hvps']} HVPs, {r['seconds']} s)"))
    return rows


def update_readme(text: str) -> None:
    from benchmarks._readme import replace_block

    replace_block("bench-real", text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=str(ROOT / "runs" / "smollm2"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--skip-top5", action="store_true", help="leave out the long top-5 eigenvalue run")
    ap.add_argument("--table-only", action="store_true", help="rewrite the README block from results_real.json")
    ap.add_argument("--only", nargs="+", choices=["ratios", "grad", "hvp", "hvp_off", "adamw", "sam", "top5", "top5_disk",
                                                  "top5_m14", "arpack"],
                    help="re-measure these (the time ratios, or memory children) into the existing results_real.json")
    args = ap.parse_args()
    if args.table_only:
        update_readme(table(json.loads((ROOT / "benchmarks" / "results_real.json").read_text())))
        return
    if args.only:
        res = json.loads((ROOT / "benchmarks" / "results_real.json").read_text())
        for what in args.only:
            print(f"{'' if what == 'ratios' else 'memory: '}{what} ...", flush=True)
            if what == "ratios":
                ck = checkpoint.load_checkpoint(args.ckpt)
                bs = data.batches_for(ck, DataConfig(data=str(data.real_data_dir() / "general.jsonl"), batch_size=8,
                                                     num_batches=1, max_length=48))
                res["ratios"] = {**ratios(ck, bs, rounds=3 if args.quick else 5), "date": time.strftime("%Y-%m-%d")}
                del ck, bs
                continue
            res["memory"][what] = child(what, args.ckpt, str(data.real_data_dir() / "general.jsonl"))
        (ROOT / "benchmarks" / "results_real.json").write_text(json.dumps(res, indent=1))
        print(table(res))
        if not args.no_readme:
            update_readme(table(res))
        return
    from landscape.foundation.convert import ensure_smollm2

    if not Path(args.ckpt).is_dir():
        ensure_smollm2(args.ckpt)
    torch.manual_seed(0)
    data_file = str(data.real_data_dir() / "general.jsonl")
    ck = checkpoint.load_checkpoint(args.ckpt)
    bs = data.batches_for(ck, DataConfig(data=data_file, batch_size=8, num_batches=1, max_length=48))
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "torch": torch.__version__, "n_params": checkpoint.count_params(ck.model), "tokens": bs.n_tokens}
    print("ratios ...", flush=True)
    res["ratios"] = ratios(ck, bs, rounds=3 if args.quick else 5)
    del ck
    res["memory"] = {}
    for what in ("grad", "hvp", "hvp_off", "adamw", "sam") + (() if args.skip_top5 else ("top5",)):
        print(f"memory: {what} ...", flush=True)
        res["memory"][what] = child(what, args.ckpt, data_file)
    (ROOT / "benchmarks" / "results_real.json").write_text(json.dumps(res, indent=1))
    text = table(res)
    print(text)
    if not args.no_readme:
        update_readme(text)


if __name__ == "__main__":
    main()
