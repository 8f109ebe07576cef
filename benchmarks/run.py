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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from landscape.foundation import checkpoint, data, loss, objective, toy
from landscape.foundation.configs import DataConfig, FinetuneConfig, SurfaceConfig  # noqa: E402
from landscape.study import demo
from landscape.measures import hessian  # noqa: E402
from landscape.foundation import params as P  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def paired(fa, fb, rounds: int, inner: int = 1) -> tuple[float, float, float]:
    """(median of tb/ta, median ta, median tb) over ``rounds`` rounds, each timing ``inner`` calls of
    fa then ``inner`` calls of fb back to back: a slow spell of a shared machine hits both sides of
    a ratio, and the median drops the rounds it split."""
    fa()
    fb()
    ra, rb, q = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fa()
        t1 = time.perf_counter()
        for _ in range(inner):
            fb()
        t2 = time.perf_counter()
        ra.append((t1 - t0) / inner)
        rb.append((t2 - t1) / inner)
        q.append((t2 - t1) / (t1 - t0))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return med(q), med(ra), med(rb)


def setup(base: Path, num_batches: int):
    ck = checkpoint.load_checkpoint(base)
    bs = data.batches_for(ck, DataConfig(batch_size=8, num_batches=num_batches))
    return ck, bs


def bench_hvp(ck, bs, repeat: int) -> dict:
    obj = objective.ModelObjective(ck.model, bs)
    v = P.randn_like(obj.params, torch.Generator().manual_seed(0))
    grad = lambda: objective.gradient(obj)  # noqa: E731
    # default: cache_graph="auto" (keeps the gradient graphs when they fit; one backward per HVP)
    h = hessian.HessianOperator(obj)
    q, t_grad, t_hvp = paired(grad, lambda: h.hvp(v), repeat)
    out = {"grad_s": t_grad, "hvp_auto_s": t_hvp, "hvp_auto_over_grad": q, "auto_cached": h.cached,
           "graph_bytes_per_batch": h.graph_bytes}
    h.release()
    for method in ("reverse", "forward"):  # graph rebuilt for every HVP
        h = hessian.HessianOperator(obj, method, cache_graph="off")
        q, _, t = paired(grad, lambda: h.hvp(v), repeat)
        out[f"hvp_{method}_s"] = t
        out[f"hvp_{method}_over_grad"] = q
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
    obj = objective.ModelObjective(ck.model, bs)
    truth = hessian.lanczos(hessian.HessianOperator(obj), k=1, max_iter=150, tol=1e-9, want_min=False)
    lz = hessian.lanczos(hessian.HessianOperator(obj), k=1, max_iter=100, tol=1e-12, want_min=False, seed=1)
    pw = hessian.power_iteration(hessian.HessianOperator(obj), k=1, max_iter=300, tol=1e-12, want_min=False, seed=1)
    # power iteration first finds the largest-|λ| eigenvalue; at a trained point that is λ_max, and
    # its history's first run is what older tools report.
    return {"lambda_max": truth.lambda_max, "truth_converged": truth.converged,
            "lanczos_hvps_to_1e-3": hvps_to_accuracy(lz.history, truth.lambda_max),
            "power_hvps_to_1e-3": hvps_to_accuracy(pw.history[:300], truth.lambda_max)}


def bench_trace(ck, bs, quick: bool) -> dict:
    """Trace estimators at equal HVP budgets on the trained demo model (one batch): RMS error over
    seeds against a long Hutchinson reference, and the mean reported standard error."""
    obj = objective.ModelObjective(ck.model, bs)
    op = hessian.HessianOperator(obj)
    ref_n = 600 if quick else 3000
    ref = hessian.hutchinson_trace(op, samples=ref_n, seed=12345)
    seeds = 4 if quick else 10
    rows = []
    for budget in (30, 90):
        for name, fn in hessian.TRACE_METHODS.items():
            runs = [fn(op, budget, seed=s) for s in range(seeds)]
            err = [r.trace - ref.trace for r in runs]
            rows.append({"method": name, "hvps": budget, "rms_error": float(np.sqrt(np.mean(np.square(err)))),
                         "mean_stderr": float(np.mean([r.stderr for r in runs])), "seeds": seeds})
    top = hessian.lanczos(op, k=20, tol=1e-3, max_iter=200, want_min=False)
    return {"reference": ref.trace, "reference_stderr": ref.stderr, "reference_hvps": ref_n, "rows": rows,
            "top20_sum": float(sum(top.eigenvalues)), "n_params": op.shape[0]}


# Shared start of every memory child process: load the demo model and batches, define rss().
CHILD_PREAMBLE = r"""
import sys, json, torch, numpy as np
sys.path.insert(0, {root!r})
from landscape.foundation import checkpoint, data, loss, objective, params as P, toy
from landscape.foundation.configs import DataConfig, FinetuneConfig, SurfaceConfig
from landscape.measures import hessian, surface
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
ck = checkpoint.load_checkpoint({base!r})
bs = data.batches_for(ck, DataConfig(batch_size=8, num_batches={nb}))
"""


def run_child(body: str, **kw) -> dict:
    """Run CHILD_PREAMBLE + body in a fresh Python; return the JSON of its last stdout line."""
    code = (CHILD_PREAMBLE + body).format(root=str(ROOT), **kw)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


MEM_CHILD = r"""obj = objective.ModelObjective(ck.model, bs)
v = P.randn_like(obj.params, torch.Generator().manual_seed(0))
h = hessian.HessianOperator(obj, cache_graph={{'hvp': 'auto', 'hvp_off': 'off'}}.get({what!r}, 'off'))
loss.evaluate(ck.model, bs)
before = rss('VmRSS')
(lambda: objective.gradient(obj)) () if {what!r} == 'grad' else h.hvp(v)
print(json.dumps({{'extra': rss('VmHWM') - before, 'param_bytes': sum(p.numel() * p.element_size() for p in ck.model.parameters())}}))
"""


def bench_memory(base: Path, nb: int) -> dict:
    """Peak extra resident memory of one gradient vs one HVP (graphs kept by "auto", and rebuilt),
    each in a fresh process (CPU)."""
    out = {}
    for what in ("grad", "hvp", "hvp_off"):
        out[what] = run_child(MEM_CHILD, base=str(base), nb=nb, what=what)
    return {"grad_extra_bytes": out["grad"]["extra"], "hvp_extra_bytes": out["hvp"]["extra"],
            "hvp_over_grad_memory": out["hvp"]["extra"] / max(1, out["grad"]["extra"]),
            "hvp_off_extra_bytes": out["hvp_off"]["extra"],
            "hvp_off_over_grad_memory": out["hvp_off"]["extra"] / max(1, out["grad"]["extra"]),
            "param_bytes": out["grad"]["param_bytes"]}


def bench_surface(ck, bs, tmp: Path, repeat: int) -> dict:
    """Surface time per point vs a bare forward pass over the same batches (``loss.evaluate``): each
    round times 25 forwards, then a 5×5 surface (setup included), for held and regenerated
    directions and for 8 points per vmapped pass; the median of the per-round ratios is kept."""
    import numpy as np

    from landscape.measures import surface

    def run(n, mode):
        out = tmp / f"bench_surface_{mode}.h5"
        out.unlink(missing_ok=True)
        kw = {"points_per_pass": 8} if mode == "vmap8" else {"directions": mode}
        surface.surface(ck.model, bs, out, SurfaceConfig(x=np.linspace(-1, 1, n), y=np.linspace(-1, 1, n), **kw))
        out.unlink(missing_ok=True)

    fwd = lambda: loss.evaluate(ck.model, bs)  # noqa: E731
    res = {}
    for mode, key in (("held", "surface"), ("regenerated", "surface_regenerated"), ("vmap8", "surface_vmap8")):
        q, t_f, t_s = paired(lambda: [fwd() for _ in range(25)], lambda: run(5, mode), repeat)
        res.update({"forward_s": t_f / 25, f"{key}_point_s": t_s / 25, f"{key}_over_forward": q})
    # The same ratio taken apart inside one run: the time spent in the forward passes (`evaluate`,
    # the very function a bare forward calls) vs everything else the surface does, so a slow spell
    # of the machine cannot move it. Marginal per point from 5×5 and 9×9; setup = the rest.
    real, spent = surface.evaluate, [0.0]

    def counted(*a, **k):
        t0 = time.perf_counter()
        r = real(*a, **k)
        spent[0] += time.perf_counter() - t0
        return r

    surface.evaluate = counted
    try:
        rows = []
        for _ in range(repeat):
            row = {}
            for n in (5, 9):
                spent[0] = 0.0
                t0 = time.perf_counter()
                run(n, "held")
                row[n] = (time.perf_counter() - t0, spent[0])
            rows.append(row)
    finally:
        surface.evaluate = real
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    other = med([((r[9][0] - r[9][1]) - (r[5][0] - r[5][1])) / 56 for r in rows])  # per point, outside forwards
    f_in = med([r[9][1] / 81 for r in rows])
    setup = med([(r[5][0] - r[5][1]) - 25 * other for r in rows])
    res.update({"surface_marginal_over_forward": 1 + other / f_in, "surface_setup_forwards": setup / f_in})
    return res


SURF_MEM_CHILD = r"""import os
tok = ck.tokenizer
cfg = toy.tiny_config("llama", vocab_size=len(tok), tokenizer=tok, max_positions=128, **{arch!r})
model = toy.build_model(cfg, seed=0)
del ck
bs = data.load_batches(data.default_eval_data(), tok, batch_size=8, max_length=64, num_batches=2)
loss.evaluate(model, bs)
before = rss('VmHWM')
surface.surface(model, bs, {out!r}, SurfaceConfig(x='-1:1:3', y='-1:1:3', directions={mode!r}))
print(json.dumps({{'extra': rss('VmHWM') - before,
                  'param_bytes': sum(p.numel() * p.element_size() for p in model.parameters()),
                  'largest_tensor_bytes': max(p.numel() * p.element_size() for p in model.parameters())}}))
"""

# Memory ratios need a model whose weights dwarf the fixed costs of a process (h5, numpy, allocator
# slack, ~1 MB): the demo architecture at 34M parameters, random weights.
MEM_ARCH = dict(hidden=512, layers=8, heads=8, intermediate=2048)


def bench_surface_memory(base: Path, nb: int, tmp: Path) -> dict:
    """Peak extra resident memory of a 3×3 surface (held, then regenerated directions; fresh processes)."""
    res = {"memory_model_params": None}
    for mode, key in (("held", "surface"), ("regenerated", "surface_regenerated")):
        out = tmp / "bench_mem.h5"
        out.unlink(missing_ok=True)
        r = run_child(SURF_MEM_CHILD, base=str(base), nb=nb, out=str(out), mode=mode, arch=MEM_ARCH)
        out.unlink(missing_ok=True)
        res.update({f"{key}_extra_bytes": r["extra"], "param_bytes": r["param_bytes"],
                    "largest_tensor_over_params": r["largest_tensor_bytes"] / r["param_bytes"],
                    f"{key}_extra_over_params": r["extra"] / r["param_bytes"]})
        res["memory_model_params"] = r["param_bytes"] // 4
    return res


def bench_sam(ck, bs, repeat: int) -> dict:
    """One optimizer step on one batch: SAM (and ASAM) vs AdamW, in interleaved pairs on one model."""
    from landscape.training import finetune

    model = ck.model
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    steps = {}
    for name in ("adamw", "sam", "asam"):
        cfg = FinetuneConfig(optimizer=name, lr=1e-6, rho=0.05)
        opt = finetune.make_optimizer(params, cfg)
        steps[name] = lambda opt=opt, cfg=cfg: finetune.train_step(model, opt, bs.batches[:1], cfg, 1e-6)
    model.train()
    out = {}
    for name in ("sam", "asam"):
        q, t_a, t_s = paired(steps["adamw"], steps[name], repeat)
        out.update({"adamw_step_s": t_a, f"{name}_step_s": t_s, f"{name}_over_adamw": q})
    model.eval()
    with torch.no_grad():
        for p, w in zip(params, saved):
            p.copy_(w)
    return out


def bench_predict_lora(ck, bs, repeat: int) -> dict:
    """The forgetting predictors of one fine-tune (no λ_max: once per base) against one gradient; LoRA
    (rank 8, every linear layer) steps with AdamW and SAM against a full AdamW step."""
    import copy

    from landscape.foundation.configs import PredictConfig
    from landscape.measures import predictors
    from landscape.training import finetune

    g = torch.Generator().manual_seed(0)
    tuned = {n: p.detach() + 1e-3 * torch.randn(p.shape, generator=g) for n, p in ck.model.named_parameters()}
    session = predictors.Session(ck.model, bs, PredictConfig(lambda_max=False))
    obj = objective.ModelObjective(ck.model, bs)
    q_pred, t_grad, t_pred = paired(lambda: objective.gradient(obj), lambda: session.measure(tuned), max(3, repeat // 3))
    out = {"grad_s": t_grad, "predict_s": t_pred, "predict_over_grad": q_pred}
    full = ck.model
    params = [p for p in full.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    adam_cfg = FinetuneConfig(optimizer="adamw", lr=1e-6)
    full_opt = finetune.make_optimizer(params, adam_cfg)
    lora = finetune.with_lora(copy.deepcopy(full), FinetuneConfig(lora=8), ck.path)
    steps = {}
    for name in ("adamw", "sam"):
        cfg = FinetuneConfig(optimizer=name, lr=1e-6, lora=8)
        opt = finetune.make_optimizer([p for p in lora.parameters() if p.requires_grad], cfg)
        steps[name] = lambda opt=opt, cfg=cfg: finetune.train_step(lora, opt, bs.batches[:1], cfg, 1e-6)
    full.train()
    lora.train()
    q_la, t_full, t_la = paired(lambda: finetune.train_step(full, full_opt, bs.batches[:1], adam_cfg, 1e-6),
                                steps["adamw"], repeat)
    q_ls, _, t_ls = paired(steps["adamw"], steps["sam"], repeat)
    full.eval()
    with torch.no_grad():
        for p, w in zip(params, saved):
            p.copy_(w)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    return {**out, "adamw_step_s": t_full, "lora_adamw_step_s": t_la, "lora_sam_step_s": t_ls,
            "lora_adamw_over_adamw": q_la, "lora_sam_over_lora_adamw": q_ls, "lora_trainable": trainable}


SAM_MEM_CHILD = r"""from landscape.training import finetune
cfg = FinetuneConfig(optimizer={name!r}, lr=1e-6)
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


def bench_pyhessian(ck, bs, seeds: int = 1) -> dict | None:
    """λ_max on one batch: our Lanczos (residual stop, and the opt-in eigenvalue-bound stop) vs
    PyHessian's power iteration (if `pyhessian` is installed), each to its 1e-3 tolerance, against a
    tight Lanczos reference; time, HVPs and relative error. ``seeds`` > 1: each tool from that many
    random starts (ours: the Lanczos seed; PyHessian: torch's global seed), every run's figures kept
    and the medians and worst errors summarised — one start says little about an iteration count."""
    try:
        import importlib

        importlib.import_module("pyhessian")
        PH = sys.modules["pyhessian.hessian"]  # the module (the package re-exports a class of that name)
    except ImportError:
        return None
    b = bs.batches[0]
    model = ck.model
    obj = objective.ModelObjective(model, [b])
    truth = hessian.lanczos(hessian.HessianOperator(obj), k=1, max_iter=150, tol=1e-9, want_min=False).lambda_max

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

    rel = lambda x: abs(x - truth) / abs(truth)  # noqa: E731
    runs = {"ours": [], "ours_eig": [], "pyhessian": []}
    for seed in range(1, seeds + 1):
        for key, stop in (("ours", "residual"), ("ours_eig", "eigenvalue")):
            t0 = time.perf_counter()
            sp = hessian.lanczos(hessian.HessianOperator(obj), k=1, tol=1e-3, want_min=False, seed=seed,
                                 basis=hessian.BasisPolicy(stop=stop))
            runs[key].append({"s": time.perf_counter() - t0, "hvps": sp.hvps, "rel_err": rel(sp.lambda_max),
                              "bound": sp.error_bounds[0] / abs(sp.lambda_max)})
        PH.hessian_vector_product = counted
        calls[0] = 0
        torch.manual_seed(seed)
        try:
            with hessian.math_attention():
                t0 = time.perf_counter()
                h = PH.hessian(Logits(model), crit, data=(b.input_ids, b.labels[:, 1:].reshape(-1)), cuda=False)
                eig, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
                runs["pyhessian"].append({"s": time.perf_counter() - t0, "hvps": calls[0], "rel_err": rel(eig[0])})
        finally:
            PH.hessian_vector_product = real
            model.zero_grad(set_to_none=True)
    med = lambda key, f: float(np.median([r[f] for r in runs[key]]))  # noqa: E731
    out = {"lambda_max": truth, "n_params": P.numel(obj.params), "seeds": seeds, "runs": runs}
    for key in runs:
        out.update({f"{key}_s": med(key, "s"), f"{key}_hvps": med(key, "hvps"), f"{key}_rel_err": med(key, "rel_err"),
                    f"{key}_worst_rel_err": max(r["rel_err"] for r in runs[key]),
                    f"{key}_over_1e-3": sum(r["rel_err"] > 1e-3 for r in runs[key])})
    return out


def bench_loss_landscapes(ck, bs) -> dict | None:
    """A 5×5 filter-normalised random plane with `loss_landscapes` (if installed) on the same model and
    batches, timed per point against a bare forward pass, with what its answer leaves behind."""
    try:
        import loss_landscapes
        from loss_landscapes.metrics import Metric
    except ImportError:
        return None
    import numpy as np

    model = ck.model
    w0 = [p.detach().clone() for p in model.parameters()]
    trainable = [p.requires_grad for p in model.parameters()]

    class Loss(Metric):
        def __call__(self, wrapper):
            return loss.evaluate(model, bs).loss

    n = 5
    L0 = loss.evaluate(model, bs).loss
    t_fwd = min(timed(lambda: loss.evaluate(model, bs), 5) for _ in range(2))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    Z = loss_landscapes.random_plane(model, Loss(), distance=1, steps=n, normalization="filter")
    t_pt = (time.perf_counter() - t0) / (n * n)
    drift = max(float((p.detach() - w).abs().max() / w.abs().max()) for p, w in zip(model.parameters(), w0))
    grads_off = sum(not p.requires_grad for p in model.parameters()) - sum(not t for t in trainable)
    with torch.no_grad():  # it leaves the model at its last grid point (and frozen): put it back
        for p, w, t in zip(model.parameters(), w0, trainable):
            p.copy_(w)
            p.requires_grad_(t)
    return {"point_s": t_pt, "point_over_forward": t_pt / t_fwd, "weights_moved_rel": drift,
            "grid_shape": list(np.shape(Z)), "params_frozen": grads_off, "centre_on_grid": bool(np.isclose(Z, L0, rtol=1e-7, atol=0).any())}


SIZES = {"small (h64, L2)": dict(hidden=64, layers=2, heads=4, intermediate=128),
         "demo (h128, L4)": dict(hidden=128, layers=4, heads=4, intermediate=256),
         "large (h256, L6)": dict(hidden=256, layers=6, heads=8, intermediate=512)}


def bench_scaling(ck, quick: bool) -> dict:
    """HVP/grad, SAM/AdamW and surface-point/forward ratios over three model sizes (random weights of
    the demo architecture, demo tokenizer) and three sequence lengths (demo size)."""
    import numpy as np

    from landscape.training import finetune
    from landscape.measures import surface

    tok = ck.tokenizer
    rows = []

    def ratios(model, bs):
        rounds = 3 if quick else 5
        obj = objective.ModelObjective(model, bs)
        v = P.randn_like(obj.params, torch.Generator().manual_seed(0))
        grad = lambda: objective.gradient(obj)  # noqa: E731
        h = hessian.HessianOperator(obj)
        q_hvp, t_grad, _ = paired(grad, lambda: h.hvp(v), rounds)
        h.release()
        h_off = hessian.HessianOperator(obj, cache_graph="off")
        q_off, _, _ = paired(grad, lambda: h_off.hvp(v), rounds)
        params = [p for p in model.parameters()]
        saved = [p.detach().clone() for p in params]
        opts = {}
        for name in ("adamw", "sam"):
            cfg = FinetuneConfig(optimizer=name, lr=1e-6)
            opts[name] = (finetune.make_optimizer(params, cfg), cfg)
        model.train()
        q_sam, _, _ = paired(*[lambda o=o, c=c: finetune.train_step(model, o, bs.batches[:1], c, 1e-6)
                               for o, c in (opts["adamw"], opts["sam"])], rounds)
        model.eval()
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
        out = ROOT / "runs" / "bench" / "scaling.h5"

        def line(k):  # a 16-point line, 1 or k points per pass
            out.unlink(missing_ok=True)
            surface.surface(model, bs, out, SurfaceConfig(x='-1:1:16', points_per_pass=k))
            out.unlink(missing_ok=True)

        fwd16 = lambda: [loss.evaluate(model, bs) for _ in range(16)]  # noqa: E731
        q_pt, _, _ = paired(fwd16, lambda: line(1), rounds)
        q_v8, _, _ = paired(fwd16, lambda: line(8), rounds)
        return {"n_params": sum(p.numel() for p in params), "hvp_over_grad": q_hvp,
                "hvp_rebuilt_over_grad": q_off, "sam_over_adamw": q_sam, "surface_over_forward": q_pt,
                "surface_vmap8_over_forward": q_v8, "grad_s": t_grad}

    for name, arch in SIZES.items():
        cfg = toy.tiny_config("llama", vocab_size=len(tok), tokenizer=tok, max_positions=128, **arch)
        model = toy.build_model(cfg, seed=0)
        bs = data.load_batches(data.default_eval_data(), tok, batch_size=8, max_length=64, num_batches=4)
        rows.append({"model": name, "seq_len": 64, **ratios(model, bs)})
    for T in (32, 128):
        bs = data.load_batches(data.data_dir() / "pretrain.jsonl", tok, batch_size=64, max_length=T, num_batches=8)
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
    auto = "kept" if h.get("auto_cached") else "rebuilt"
    rows = [
        (f"HVP / gradient time (default `--cache-graph auto`: graphs {auto} here)", f"{h['hvp_auto_over_grad']:.2f}",
         "≤ 2.5", ok(h["hvp_auto_over_grad"], 2.5)),
        ("HVP / gradient time (graph rebuilt per HVP, `--cache-graph off`)", f"{h['hvp_reverse_over_grad']:.2f}",
         "(report)", ""),
        ("HVP / gradient time (forward-over-reverse, rebuilt)", f"{h['hvp_forward_over_grad']:.2f}", "(report)", ""),
        ("HVPs to 1e-3 relative λ_max, Lanczos", str(lam["lanczos_hvps_to_1e-3"]), "≤ 40", ok(lam["lanczos_hvps_to_1e-3"], 40)),
        ("HVPs to 1e-3 relative λ_max, power iteration", str(lam["power_hvps_to_1e-3"]), "(comparison)", ""),
        (f"peak extra memory, HVP / gradient (CPU RSS; graphs {auto})", f"{mem['hvp_over_grad_memory']:.2f}", "(report)", ""),
        ("peak extra memory, HVP / gradient (CPU RSS; graph rebuilt)", f"{mem['hvp_off_over_grad_memory']:.2f}",
         "(report)", ""),
    ]
    if "surface" in res:
        su = res["surface"]
        rows += [
            ("surface time per point / forward pass (directions held; marginal, forwards timed inside the surface)",
             f"{su['surface_marginal_over_forward']:.3f}", "≤ 1.05", ok(su["surface_marginal_over_forward"], 1.05)),
            ("surface time per point / bare forward pass (5×5 incl. setup, end to end, interleaved)",
             f"{su['surface_over_forward']:.3f}", "(report)", ""),
            ("surface setup, once per surface (directions, final h5 write + fsync), in bare forwards",
             f"{su['surface_setup_forwards']:.2f}", "(report)", ""),
            ("surface time per point / bare forward pass (5×5 incl. setup, directions regenerated)",
             f"{su['surface_regenerated_over_forward']:.3f}", "(report)", ""),
            *([("surface time per point / bare forward pass (5×5 incl. setup, 8 points per vmapped pass)",
                f"{su['surface_vmap8_over_forward']:.3f}", "(report)", "")] if "surface_vmap8_over_forward" in su else []),
            (f"surface peak extra memory / parameter bytes (CPU RSS, {su['memory_model_params'] / 1e6:.0f}M-parameter "
             "model, directions held)",
             f"{su['surface_extra_over_params']:.2f}", "(report)", ""),
            ("surface peak extra memory / parameter bytes (same, directions regenerated)",
             f"{su['surface_regenerated_extra_over_params']:.2f}",
             f"≤ 1 copy + 2 scratch tensors ({2 * su['largest_tensor_over_params']:.2f}) + 2% process slack",
             ok(su["surface_regenerated_extra_over_params"], 1.02 + 2 * su["largest_tensor_over_params"])),
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
              "| model | parameters | tokens/seq | HVP/grad (auto) | HVP/grad (rebuilt) | SAM/AdamW | surface point/forward "
              "(16-point line, setup incl.) | same, 8 points per vmapped pass |",
              "|---|---|---|---|---|---|---|---|"]
        for r in res["scaling"]["rows"]:
            sc.append(f"| {r['model']} | {r['n_params']:,} | {r['seq_len']} | {r['hvp_over_grad']:.2f} | "
                      f"{r['hvp_rebuilt_over_grad']:.2f} | "
                      f"{r['sam_over_adamw']:.2f} | {r['surface_over_forward']:.3f} | "
                      f"{r['surface_vmap8_over_forward']:.3f} |" if "surface_vmap8_over_forward" in r else
                      f"{r['sam_over_adamw']:.2f} | {r['surface_over_forward']:.3f} | |")
        scaling = "\n".join(sc)
    lines = [f"Measured {res['date']} on {res['machine']} (torch {res['torch']}), demo model "
             f"({res['n_params']:,} parameters, float32), {res['batches']} batches × 8 sequences of data/eval.jsonl.",
             "", "| figure | value | target | status |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    if scaling:
        lines.append(scaling)
    for key, label in (("pyhessian", "demo model"), ("pyhessian_4m", "4.1M-parameter Llama (hidden 256, 6 layers)")):
        ph = res.get(key)
        if not ph:
            continue
        n = ph.get("seeds", 1)
        worst = (lambda k: f" (worst {ph[k + '_worst_rel_err']:.1e}; {ph[k + '_over_1e-3']} of {n} over 1e-3)") \
            if n > 1 else (lambda k: "")
        g = (lambda x: f"{x:g}")
        lines += ["", f"λ_max on one batch of 8, {label}, each tool at its own 1e-3 stopping tolerance"
                  + (f", medians over {n} random starts" if n > 1 else "") + " (same run):", "",
                  "| tool | time (s) | HVPs | relative error vs tight Lanczos |", "|---|---|---|---|",
                  f"| landscape (Lanczos, residual test: the default) | {ph['ours_s']:.2f} | {g(ph['ours_hvps'])} | "
                  f"{ph['ours_rel_err']:.1e}{worst('ours')} |",
                  *([f"| landscape (Lanczos, `--stop eigenvalue`: Kato–Temple bound) | {ph['ours_eig_s']:.2f} | "
                     f"{g(ph['ours_eig_hvps'])} | {ph['ours_eig_rel_err']:.1e}{worst('ours_eig')} |"]
                    if "ours_eig_s" in ph else []),
                  f"| PyHessian 0.1 (power iteration, relative-change test) | {ph['pyhessian_s']:.2f} | "
                  f"{g(ph['pyhessian_hvps'])} | {ph['pyhessian_rel_err']:.1e}{worst('pyhessian')} |"]
    ll = res.get("loss_landscapes")
    if ll:
        su = res.get("surface", {})
        lines += ["", "A 5×5 filter-normalised random plane on the same model and batches (same run):", "",
                  "| tool | time per point / bare forward | centre (the checkpoint) on the grid | weights afterwards |",
                  "|---|---|---|---|",
                  f"| landscape (`--directions held`) | {su.get('surface_over_forward', float('nan')):.3f} | yes, exactly "
                  "(tested) | bit-identical (tested) |",
                  f"| loss-landscapes 3.0.6 (`random_plane`) | {ll['point_over_forward']:.3f} | "
                  f"{'yes' if ll['centre_on_grid'] else 'no'} | moved: max |Δw|/max |w| = {ll['weights_moved_rel']:.2f} "
                  "(left at the last point, reached by add_/sub_ steps) |"]
    tr = res.get("trace")
    if tr:
        lines += ["", f"Trace estimators at equal HVP budgets, trained demo model, one batch ({tr['rows'][0]['seeds']} "
                      f"seeds; reference {tr['reference']:.1f} ± {tr['reference_stderr']:.1f} from "
                      f"{tr['reference_hvps']} Hutchinson samples; the 20 largest eigenvalues sum to "
                      f"{tr['top20_sum']:.1f}). Re-measured by `python benchmarks/run.py --only trace`:", "",
                  "| estimator | HVPs | RMS error over seeds | mean reported standard error |", "|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['hvps']} | {r['rms_error']:.2f} | {r['mean_stderr']:.2f} |" for r in tr["rows"]]
    pl = res.get("predict_lora")
    if pl:
        lines += ["", "Forgetting predictors and LoRA steps on the demo model (re-measured alone by `python benchmarks/run.py "
                      "--only predict_lora`):", "", "| figure | value |", "|---|---|",
                  f"| predictors of one fine-tune (gradient + HVP at base and tuned, 11-point line; no λ_max) / one "
                  f"gradient | {pl['predict_over_grad']:.1f} |",
                  f"| LoRA r8 AdamW step / full AdamW step ({pl['lora_trainable']:,} adapter weights) | "
                  f"{pl['lora_adamw_over_adamw']:.2f} |",
                  f"| LoRA r8 SAM step / LoRA r8 AdamW step | {pl['lora_sam_over_lora_adamw']:.2f} |"]
    lines += ["", f"Produced by {cmd} (`python benchmarks/run.py`); raw numbers in `benchmarks/results.json`."]
    return "\n".join(lines)


def update_readme(text: str) -> None:
    from benchmarks._readme import replace_block

    replace_block("bench", text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="rewrite the README block from results.json")
    ap.add_argument("--only", choices=["trace", "predict_lora", "pyhessian"],
                    help="re-measure one section into the existing results.json (pyhessian: also on the 4.2M shape)")
    ap.add_argument("--seeds", type=int, default=5, help="random starts per tool in --only pyhessian")
    args = ap.parse_args()
    if args.table_only:
        update_readme(table(json.loads((ROOT / "benchmarks" / "results.json").read_text())))
        return
    if args.only:
        res = json.loads((ROOT / "benchmarks" / "results.json").read_text())
        base = ROOT / "runs" / "demo" / "base"
        demo.ensure_demo_model(base, steps=demo.DEMO_TRAIN["steps"])
        if args.only == "trace":
            res["trace"] = bench_trace(*setup(base, 1), args.quick)
        elif args.only == "pyhessian":
            ck, bs = setup(base, 4)
            res["pyhessian"] = bench_pyhessian(ck, bs, seeds=args.seeds)
            big = toy.build_model(toy.tiny_config("llama", len(ck.tokenizer), tokenizer=ck.tokenizer, hidden=256,
                                                  layers=6, heads=4), seed=0)
            res["pyhessian_4m"] = bench_pyhessian(__import__("types").SimpleNamespace(model=big), bs, seeds=args.seeds)
            print(json.dumps({k: res[k] for k in ("pyhessian", "pyhessian_4m")}, indent=1))
        else:
            res["predict_lora"] = bench_predict_lora(*setup(base, 4), repeat=5 if args.quick else 9)
        (ROOT / "benchmarks" / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        if not args.no_readme:
            update_readme(table(res))
        print(table(res))
        return
    torch.manual_seed(0)
    base = ROOT / "runs" / "demo" / "base"
    s = demo.ensure_demo_model(base, steps=demo.DEMO_TRAIN["steps"])
    nb = 4
    ck, bs = setup(base, nb)
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "torch": torch.__version__, "n_params": s["n_params"], "batches": nb, "threads": torch.get_num_threads()}
    print("HVP vs gradient ...", flush=True)
    res["hvp"] = bench_hvp(ck, bs, repeat=5 if args.quick else 9)
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
    res["sam"] = {**bench_sam(ck, bs, repeat=7 if args.quick else 15), **bench_sam_memory(base, nb)}
    print("PyHessian comparison (if installed) ...", flush=True)
    res["pyhessian"] = bench_pyhessian(ck, bs)
    print("loss-landscapes comparison (if installed) ...", flush=True)
    res["loss_landscapes"] = bench_loss_landscapes(ck, bs)
    print("scaling with model size and sequence length ...", flush=True)
    res["scaling"] = bench_scaling(ck, args.quick)
    print("forgetting predictors and LoRA steps ...", flush=True)
    res["predict_lora"] = bench_predict_lora(ck, bs, repeat=5 if args.quick else 9)
    print("trace estimators at equal budgets ...", flush=True)
    res["trace"] = bench_trace(*setup(base, 1), args.quick)
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    t = table(res)
    print(t)
    if not args.no_readme:
        update_readme(t)


if __name__ == "__main__":
    main()
