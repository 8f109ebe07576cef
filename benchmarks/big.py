"""The paper's smallest model size on this machine: a TinyLlama-1.1B-shaped Llama, random weights.

    python benchmarks/big.py [--out runs/big] [--only ROW,ROW] [--timeout S] [--no-readme]

Builds the checkpoint on the fly from a config (hidden 2048, 22 layers, 32 heads / 4 KV heads,
intermediate 5632, vocabulary 32000: 1.10B parameters, 4.4 GB in float32) — nothing is downloaded;
random weights are fine for memory and time, not for science. Each row is one `landscape` command
in a fresh process (``*_fsdp2`` rows: under ``torchrun --nproc-per-node 2`` with ``--shard fsdp``;
their peak is the largest one process reached), as a user would type it, on one batch of 4 × ≤48 tokens of data/real/general.jsonl
(a word-level tokenizer built from that file), with its wall time, peak RSS (``ru_maxrss`` of the
child) over the weights, its exit status (2 = refused with one line, 137 = killed by the OS) and, where
the command has ``--dry-run``, the plan's predicted peak. Writes benchmarks/results_big.json and the
README block between the ``bench-big`` markers. Rows run one after another, each under ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
                 tie_word_embeddings=False)
DATA = ROOT / "data" / "real" / "general.jsonl"
BATCH = ["--data", str(DATA), "--batch-size", "4", "--num-batches", "1", "--max-length", "48"]


def build(out: Path, seed: int = 0, shape: dict | None = None, name: str = "tinyllama-shape") -> Path:
    """The 1.1B-shaped checkpoint (or another ``shape``; ``vocab_size`` None: the tokenizer's) and a copy
    moved by 1e-3·N(0,1) per weight for `predict` (``out/tuned``)."""
    import torch
    import transformers

    from landscape.foundation import toy

    shape = dict(shape or TINYLLAMA)
    base = out / name
    if (base / "model.safetensors").exists() and (out / "tuned" / "model.safetensors").exists():
        return base
    texts = [json.loads(line)["text"] for line in DATA.read_text().splitlines() if line.strip()]
    tok = toy.build_word_tokenizer(texts)
    shape["vocab_size"] = shape.get("vocab_size") or len(tok)
    cfg = transformers.LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(base)
    tok.save_pretrained(base)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():  # a "fine-tune": every weight moved a little, in place
            p.add_(torch.randn(p.shape, generator=g) * 1e-3)
    model.save_pretrained(out / "tuned")
    tok.save_pretrained(out / "tuned")
    return base


def rows(base: Path, out: Path) -> dict:
    lc = [str(ROOT / ".venv" / "bin" / "landscape")] if (ROOT / ".venv" / "bin" / "landscape").exists() else \
        [sys.executable, "-m", "landscape.cli.main"]
    suite = sorted((ROOT / "data" / "suites").glob("*.jsonl"))[0]
    return {
        "loss": (lc + ["loss", str(base), *BATCH, "--json"], False),
        "lambda_max_min": (lc + ["sharpness", str(base), *BATCH, "--metrics", "lambda_max,lambda_min", "--tol", "1e-3",
                                 "--json", "--quiet"], True),
        "trace_30": (lc + ["sharpness", str(base), *BATCH, "--metrics", "trace", "--trace-samples", "30", "--json",
                           "--quiet"], True),
        "sam_sharpness": (lc + ["sharpness", str(base), *BATCH, "--metrics", "sam", "--json", "--quiet"], True),
        "surface_1d_5": (lc + ["surface", str(base), *BATCH, "--x", "-1:1:5", "--out", str(out / "surface.h5"),
                               "--json", "--quiet"], False),
        "predict": (lc + ["predict", str(base), str(out / "tuned"), *BATCH, "--no-lambda-max", "--line", "0:1:2",
                          "--no-at-tuned", "--json", "--quiet"], False),
        "forgetting_1_suite": (lc + ["forgetting", str(base), str(out / "tuned"), "--suite", str(suite), "--json", "--quiet"], False),
        "sam_finetune_1_step": (lc + ["finetune", str(base), "--data", str(DATA), "--optimizer", "sam",
                                      "--max-steps", "1", "--batch-size", "4", "--max-length", "48",
                                      "--out", str(out / "ft"), "--overwrite", "--quiet"], False),
        **sharded_rows(base, out),
    }


def sharded_rows(base: Path, out: Path) -> dict:
    """The same commands with the model FSDP2-sharded over two processes (``--shard fsdp``), beside a
    one-process reference where the table above has none (a short λ_max: 8 Lanczos steps)."""
    lc = [str(ROOT / ".venv" / "bin" / "landscape")]
    tr = [str(ROOT / ".venv" / "bin" / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "landscape.cli"]
    lam = ["--metrics", "lambda_max", "--max-iter", "8", "--hvp-method", "fd", "--json", "--quiet"]
    fsdp = ["--shard", "fsdp"]
    return {
        "loss_fsdp2": (tr + ["loss", str(base), *BATCH, "--json", *fsdp], False),
        "sam_sharpness_fsdp2": (tr + ["sharpness", str(base), *BATCH, "--metrics", "sam", "--json", "--quiet", *fsdp],
                                False),
        "lambda_max_8": (lc + ["sharpness", str(base), *BATCH, *lam], False),
        "lambda_max_8_fsdp2": (tr + ["sharpness", str(base), *BATCH, *lam, *fsdp], False),
        "surface_1d_5_fsdp2": (tr + ["surface", str(base), *BATCH, "--x", "-1:1:5", "--out",
                                     str(out / "surface_fsdp.h5"), "--json", "--quiet", *fsdp], False),
    }


# runs the command and prints its own peak RSS (KiB) as the last line of stderr
PEAK = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
        "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(128 - rc if rc < 0 else rc)")


def _last_error(stderr: str) -> str:
    """The command's own one-line error (under torchrun it is followed by the launcher's report), else
    the last line."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


def run_row(cmd: list, timeout: int) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, timeout=timeout,
                           cwd=ROOT)
        rc, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = "timeout", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), ""
    lines = stderr.strip().splitlines()
    peak = int(lines.pop().split()[1]) if lines and lines[-1].startswith("PEAK_KIB") else None
    stderr = "\n".join(lines)
    row = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_gb": round(peak * 1024 / 2**30, 2) if peak else None,
           "stderr_tail": _last_error(stderr)}
    try:
        row["result"] = json.loads(stdout)
    except (json.JSONDecodeError, TypeError):
        row["stdout_tail"] = (stdout or "").strip()[-300:]
    return row


def measure(cmd: list, has_plan: bool, timeout: int) -> dict:
    """One row: the command as typed, its ``--dry-run`` plan (``has_plan``) and the run itself."""
    row = {"command": "landscape " + " ".join(Path(c).name if c.startswith(str(ROOT)) else c for c in cmd[1:])}
    if has_plan:
        plan = run_row(cmd + ["--dry-run"], 900)
        row["plan"] = (plan.get("result") or {}).get("plan")
    row.update(run_row(cmd, timeout))
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "big"))
    ap.add_argument("--only", default=None, help="comma list of rows")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--no-readme", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base = build(out)
    weights_gb = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**30
    res_path = ROOT / "benchmarks" / "results_big.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    results.update(weights_gb=round(weights_gb, 2), config=TINYLLAMA, machine=f"{os.cpu_count()} cores")
    table = rows(base, out)
    for name, (cmd, has_plan) in table.items():
        if a.only and name not in a.only.split(","):
            continue
        print(f"[big] {name}: {' '.join(cmd[1:])}", flush=True)
        row = measure(cmd, has_plan, a.timeout)
        row["peak_over_weights"] = round(row["peak_rss_gb"] / weights_gb, 2) if row.get("peak_rss_gb") else None
        results.setdefault("rows", {})[name] = row
        print(f"[big] {name}: rc {row['rc']}, {row['seconds']} s, peak {row['peak_rss_gb']} GB"
              + (f", planned {row['plan']['peak_gb']} GB" if row.get("plan") else ""), flush=True)
        res_path.write_text(json.dumps(results, indent=1, default=str))
    if not a.no_readme:
        write_readme(results)
    return results


def write_readme(results: dict) -> None:
    """The README block between the bench-big markers."""
    lines = ["| command | exit | time (s) | peak RSS (GB) | peak / weights | planned peak (GB) | result |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.get("rows", {}).items():
        if name.endswith("_fsdp2"):
            continue
        res = r.get("result") or {}
        m = res.get("metrics") or {}
        shown = {k: m[k] for k in ("lambda_max", "lambda_min", "hessian_trace", "sam_sharpness") if k in m}
        if "loss" in res and not shown:
            shown["loss"] = res["loss"]
        text = ", ".join(f"{k} {v:.4g}" for k, v in shown.items() if isinstance(v, (int, float)))
        if r.get("rc") not in (0, None) and r.get("stderr_tail"):
            text = r["stderr_tail"][:120].replace("|", "/")
        plan = r.get("plan") or {}
        lines.append(f"| `{name}` | {r.get('rc')} | {r.get('seconds')} | {r.get('peak_rss_gb')} | "
                     f"{r.get('peak_over_weights')} | {plan.get('peak_gb', '')} | {text} |")
    from benchmarks._readme import replace_block

    replace_block("bench-big", "\n".join(lines))
    replace_block("bench-fsdp", "\n".join(fsdp_table(results.get("rows", {}))))


def _shown(r: dict) -> str:
    res = r.get("result") or {}
    m = res.get("metrics") or {}
    v = next((m[k] for k in ("lambda_max", "sam_sharpness") if k in m), res.get("loss"))
    return f"{v:.6g}" if isinstance(v, (int, float)) else ""


def fsdp_table(rows: dict) -> list[str]:
    """One process against two FSDP2 processes, per command: time, peak RSS per process, result."""
    lines = ["| command | 1 process: s | peak GB | 2 × fsdp: s | peak GB per process | ratio | result 1 / 2 |",
             "|---|---|---|---|---|---|---|"]
    for name, two in rows.items():
        one = rows.get(name[:-len("_fsdp2")]) if name.endswith("_fsdp2") else None
        if one is None:
            continue
        ratio = (round(two["peak_rss_gb"] / one["peak_rss_gb"], 2)
                 if two.get("peak_rss_gb") and one.get("peak_rss_gb") and two.get("rc") == 0 else "")
        shown = f"{_shown(one)} / {_shown(two)}" if two.get("rc") == 0 else \
            f"rc {two.get('rc')}: {two.get('stderr_tail', '')[:160]}".replace("|", "/")
        peak = two.get("peak_rss_gb") if two.get("rc") == 0 else "—"
        lines.append(f"| `{name[:-6]}` | {one.get('seconds')} | {one.get('peak_rss_gb')} | {two.get('seconds')} | "
                     f"{peak} | {ratio} | {shown} |")
    return lines


if __name__ == "__main__":
    main()
