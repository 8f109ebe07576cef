"""The memory plan against the measured peak: four commands at three model sizes.

    python benchmarks/plans.py [--sizes toy,smollm2,big] [--only ROW,ROW] [--no-readme]

Sizes: ``toy`` — a 4.0M-parameter Llama (hidden 256, 6 layers) built from a config; ``smollm2`` —
SmolLM2-135M (``runs/smollm2``, from ``make real``); ``big`` — the TinyLlama-1.1B shape of
``benchmarks/big.py`` (random weights, 4.4 GB in float32). Each size gets a "tuned" copy with every
weight moved by 1e-3·N(0, 1), for ``predict``. Rows: λ_max (``sharpness``, auto HVPs, 3 Lanczos
steps), SAM sharpness, a 5-point 1-D ``surface``, ``predict`` (no λ_max, a 2-point line, no tuned
curvature: what the 1.1B row of big.py runs) and two steps of ``finetune --optimizer sam`` (the second
step is the first to hold AdamW's moments beside SAM's saved weights). Each command runs twice in a
fresh process: ``--dry-run`` (the plan) and for real (its peak RSS, read by the parent from
RUSAGE_CHILDREN), one batch of 4 × ≤48 tokens of data/real/general.jsonl. Writes
benchmarks/results_plans.json and the README block between the ``bench-plans`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import big  # noqa: E402

TOY = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=4,
           num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False)


def tuned_copy(src: Path, dst: Path, seed: int = 1) -> Path:
    """``src`` with every weight moved by 1e-3·N(0, 1) (a stand-in fine-tune for ``predict``)."""
    import torch

    from landscape.foundation import checkpoint

    if (dst / "model.safetensors").exists():
        return dst
    ck = checkpoint.load_checkpoint(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ck.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-3)
    checkpoint.save_checkpoint(ck.model, ck.tokenizer, dst)
    return dst


def sizes(out: Path) -> dict:
    """name → (base, tuned)."""
    toy_base = big.build(out / "toy", shape={**TOY, "vocab_size": None}, name="toy")
    got = {"toy": (toy_base, out / "toy" / "tuned")}
    smol = ROOT / "runs" / "smollm2"
    if (smol / "model.safetensors").exists():
        got["smollm2"] = (smol, tuned_copy(smol, out / "smollm2-tuned"))
    got["big"] = (big.build(ROOT / "runs" / "big"), ROOT / "runs" / "big" / "tuned")
    return got


def rows(base: Path, tuned: Path, out: Path) -> dict:
    lc = [str(ROOT / ".venv" / "bin" / "landscape")]
    q = ["--json", "--quiet"]
    return {
        "lambda_max": lc + ["sharpness", str(base), *big.BATCH, "--metrics", "lambda_max", "--max-iter", "3", *q],
        "sam_sharpness": lc + ["sharpness", str(base), *big.BATCH, "--metrics", "sam", *q],
        "surface_1d_5": lc + ["surface", str(base), *big.BATCH, "--x", "-1:1:5", "--out", str(out / "surface.h5"), *q],
        "predict": lc + ["predict", str(base), str(tuned), *big.BATCH, "--no-lambda-max", "--line", "0:1:2",
                         "--no-at-tuned", *q],
        "finetune_sam_2_steps": lc + ["finetune", str(base), "--data", str(big.DATA), "--optimizer", "sam",
                                      "--max-steps", "2", "--batch-size", "4", "--max-length", "48",
                                      "--out", str(out / "ft"), "--overwrite", *q],
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "plans"))
    ap.add_argument("--sizes", default="toy,smollm2,big")
    ap.add_argument("--only", default=None, help="comma list of rows")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--no-readme", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = ROOT / "benchmarks" / "results_plans.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    results["machine"] = f"{os.cpu_count()} cores"
    for size, (base, tuned) in sizes(out).items():
        if size not in a.sizes.split(","):
            continue
        weights = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**30
        for name, cmd in rows(base, tuned, out / size).items():
            if a.only and name not in a.only.split(","):
                continue
            (out / size).mkdir(parents=True, exist_ok=True)
            print(f"[plans] {size} {name}", flush=True)
            run = big.measure(cmd, True, a.timeout)
            plan = run.get("plan") or {}
            row = {"weights_gb": round(weights, 3), "planned_gb": plan.get("peak_gb"), "plan": plan,
                   "rc": run["rc"], "seconds": run["seconds"], "peak_rss_gb": run["peak_rss_gb"],
                   "error": run["stderr_tail"] if run["rc"] else None, "command": run["command"]}
            if row["planned_gb"] and row["peak_rss_gb"]:
                row["planned_over_measured"] = round(row["planned_gb"] / row["peak_rss_gb"], 3)
            results.setdefault("rows", {}).setdefault(size, {})[name] = row
            print(f"[plans] {size} {name}: rc {row['rc']}, {row['seconds']} s, peak {row['peak_rss_gb']} GB, "
                  f"planned {row['planned_gb']} GB", flush=True)
            res_path.write_text(json.dumps(results, indent=1, default=str))
    if not a.no_readme:
        write_readme(results)
    return results


def write_readme(results: dict) -> None:
    lines = ["| size | command | exit | time (s) | peak RSS (GB) | planned (GB) | planned / measured | plan's choices |",
             "|---|---|---|---|---|---|---|---|"]
    for size, rs in results.get("rows", {}).items():
        for name, r in rs.items():
            ch = ", ".join(f"{k} {v}" for k, v in (r.get("plan") or {}).get("choices", {}).items()
                           if k in ("hvp_method", "directions", "optimizer", "vectors"))
            lines.append(f"| {size} ({r['weights_gb']} GB) | `{name}` | {r['rc']} | {r['seconds']} | {r['peak_rss_gb']} | "
                         f"{r['planned_gb']} | {r.get('planned_over_measured', '')} | {ch} |")
    from benchmarks._readme import replace_block

    replace_block("bench-plans", "\n".join(lines))


if __name__ == "__main__":
    main()
