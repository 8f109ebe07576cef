#!/usr/bin/env python3
"""Sharded rows of the GPU table: 7B- and 13B-shaped Llamas (random weights, bf16) FSDP2-sharded over
every GPU of the machine (``--shard fsdp``'s code path), fd HVPs with fused (SDPA) attention.

    torchrun --nproc-per-node NGPU benchmarks/gpu_fsdp.py            # writes results_gpu_fsdp.json + README
    torchrun --nproc-per-node 2 benchmarks/gpu_fsdp.py --config tiny --no-readme   # CPU smoke run (CI)

Nothing is downloaded and nothing is written to disk: each model is built on the meta device, sharded,
and each rank fills its own rows with N(0, 0.02²) (no checkpoint file is read, so loading is not timed).
Per config, medians of back-to-back timings: a gradient (forward + backward), one fd HVP (two
gradients), one surface point (a forward), an AdamW and a SAM step on one batch; and the peak memory
per GPU (``torch.cuda.max_memory_allocated``, the largest rank) over the weights' bytes per GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu import CONFIGS, random_batches, sync, timed  # noqa: E402
from landscape.foundation import distributed as dist  # noqa: E402
from landscape.foundation import loss, objective, sharding  # noqa: E402
from landscape.foundation import params as P  # noqa: E402
from landscape.foundation.configs import FinetuneConfig  # noqa: E402
from landscape.measures import hessian  # noqa: E402
from landscape.training import finetune  # noqa: E402

SHAPES = {**CONFIGS, "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                 num_attention_heads=40, num_key_value_heads=40, vocab_size=32000)}


def build(name: str, device, dtype, seq: int):
    """The sharded model, each rank's rows filled with N(0, 0.02²) from a rank-seeded generator."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**SHAPES[name], max_position_embeddings=max(seq, 128), tie_word_embeddings=False)
    model, buffers = sharding.materialise(
        lambda: AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa"), device)
    g = torch.Generator(device=device).manual_seed(dist.rank())
    with torch.no_grad():
        for p in model.parameters():
            local = P.local(p)
            local.copy_(torch.randn(local.shape, generator=g, device=device, dtype=torch.float32) * 0.02)
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    return model.eval()


def bench(name: str, args, device, dtype) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build(name, device, dtype, args.seq)
    bs = random_batches(model.config.vocab_size, args.batches, args.batch_size, args.seq, device)
    rep = args.repeat
    obj = objective.ModelObjective(model, bs)
    t_fwd = timed(lambda: loss.evaluate(model, bs), device, rep)  # what a surface point evaluates
    t_grad = timed(lambda: objective.gradient(obj), device, rep)
    hv = hessian.HessianOperator(obj, method="fd")
    v = P.randn_like(obj.leaves, torch.Generator().manual_seed(0), dtype=torch.float32)
    t_hvp = timed(lambda: hv.hvp(v), device, rep)
    del hv, v
    step = {}
    for opt_name in ("adamw", "sam"):
        cfg = FinetuneConfig(optimizer=opt_name, lr=1e-6)
        opt = finetune.make_optimizer(list(model.parameters()), cfg)
        model.train()
        micro = [b.rows(dist.rank(), dist.world()) for b in bs.batches[:1]]  # each GPU its rows of the batch
        step[opt_name] = timed(lambda: finetune.train_step(model, opt, micro, cfg, 1e-6,
                                                           n_tok=bs.batches[0].n_tokens), device, rep)
        del opt
        model.zero_grad(set_to_none=True)
    model.eval()
    weights = P.nbytes(list(model.parameters()))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else P.peak_rss()
    peak = max(dist.all_gather_object(peak))
    out = {"config": name, "params": sum(p.numel() for p in model.parameters()), "gpus": dist.world(),
           "dtype": str(dtype).replace("torch.", ""), "tokens": args.batches * args.batch_size * args.seq,
           "forward_s": t_fwd, "grad_s": t_grad, "fd_hvp_s": t_hvp, "hvp_over_grad": t_hvp / t_grad,
           "adamw_step_s": step["adamw"], "sam_step_s": step["sam"],
           "sam_over_adamw": step["sam"] / step["adamw"], "peak_gb_per_gpu": peak / 2**30,
           "weights_gb_per_gpu": weights / 2**30, "peak_over_weights_per_gpu": peak / max(weights, 1)}
    del model, obj
    sync(device)
    return out


def table(rows: list) -> str:
    lines = ["| config | GPUs | params | HVP (fd) / gradient | SAM / AdamW step | forward (s) | peak GB per GPU | "
             "peak / weights per GPU |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['gpus']} | {r['params'] / 1e9:.2f}B | {r['hvp_over_grad']:.2f} | "
                     f"{r['sam_over_adamw']:.2f} | {r['forward_s']:.3f} | {r['peak_gb_per_gpu']:.1f} | "
                     f"{r['peak_over_weights_per_gpu']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="7b,13b", help="comma list of " + ", ".join(SHAPES))
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    dist.init_from_env()
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = [bench(name, args, device, dtype) for name in args.config.split(",")]
    if dist.is_main():
        print(json.dumps(rows, indent=1))
        if not args.no_readme:
            (ROOT / "benchmarks" / "results_gpu_fsdp.json").write_text(json.dumps(rows, indent=1))
            from benchmarks._readme import replace_block

            replace_block("bench-gpu-fsdp", table(rows))
    dist.shutdown()


if __name__ == "__main__":
    main()
