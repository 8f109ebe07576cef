"""Memory plans for GPUs this machine does not have: Llama-2 shapes from their configs, bf16.

    python benchmarks/gpu_plans.py [--only ROW,ROW] [--table-only]

Each row is one ``landscape sharpness CONFIG_DIR --dry-run --dtype bfloat16 --device-memory GB ...``
on a directory holding only config.json (no weight is read: the model is built on the meta device,
its activations probed on 1- and 2-block CPU copies). Plans, not measurements: no GPU has run them.
Writes benchmarks/results_gpu_plans.json and the docs block between the ``gpu-plans`` markers;
``--table-only`` re-renders the block from the committed JSON. About 15 minutes on 2 cores (the
activation probes of the 70B's blocks).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMMON = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000, max_position_embeddings=4096,
              rms_norm_eps=1e-5, tie_word_embeddings=False)
MODELS = {  # Llama-2 shapes (the 70B with grouped-query attention, 8 KV heads)
    "Llama-2-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32),
    "Llama-2-13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40),
    "Llama-2-70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8),
}
MACHINES = {"Llama-2-7B": ("1 × 80 GB", ["--device-memory", "80"]),
            "Llama-2-13B": ("1 × 141 GB", ["--device-memory", "141"]),
            "Llama-2-70B": ("8 × 80 GB, FSDP2", ["--device-memory", "80", "--shard", "fsdp", "--world-size", "8"])}
COLUMNS = {  # column → the arguments beyond the machine's
    "all metrics (defaults)": [],
    "λ_max": ["--metrics", "lambda_max"],
    "λ_max, 4 × 512": ["--metrics", "lambda_max", "--max-length", "512", "--batch-size", "4"],
    "λ_max, 4 × 512, --grad-checkpointing": ["--metrics", "lambda_max", "--max-length", "512", "--batch-size", "4",
                                            "--grad-checkpointing"],
}


def plan(model: str, column: str, root: Path) -> dict:
    from click.testing import CliRunner

    from landscape.cli.main import cli

    d = root / model
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({**COMMON, **MODELS[model]}))
    args = ["sharpness", str(d), "--dry-run", "--json", "--dtype", "bfloat16", *MACHINES[model][1], *COLUMNS[column]]
    r = CliRunner().invoke(cli, args)
    if r.exit_code != 0:
        return {"model": model, "column": column, "args": args[2:], "refused": r.output.strip().splitlines()[-1]}
    p = json.loads(r.stdout)["plan"]
    return {"model": model, "column": column, "args": ["landscape", "sharpness", "CONFIG_DIR", *args[2:]],
            "peak_gb": p["peak_gb"], "fits": p["target"]["fits"], "free_gb": p["target"]["free_gb"],
            "choices": p["choices"]}


def _cell(r: dict | None) -> str:
    if r is None:
        return "—"
    if "refused" in r:
        return "refused"
    notes = [k for k, v in (("originals on host", r["choices"].get("originals") == "host"),
                            ("q/z on disk", r["choices"].get("lanczos_q") == "disk")) if v]
    rank = " a rank" if "FSDP" in MACHINES[r["model"]][0] else ""
    verdict = f"**{r['peak_gb']:.1f} GB{rank}: fits**" if r["fits"] else f"{r['peak_gb']:.1f} GB{rank}: does not fit"
    return verdict + (f" ({', '.join(notes)})" if notes else "")


def table(data: dict) -> str:
    rows = {(r["model"], r["column"]): r for r in data["rows"]}
    lines = ["| model (bf16) | devices | " + " | ".join(COLUMNS) + " |", "|---" * (2 + len(COLUMNS)) + "|"]
    for m in MODELS:
        lines.append(f"| {m} | {MACHINES[m][0]} | " + " | ".join(_cell(rows.get((m, c))) for c in COLUMNS) + " |")
    env = data["environment"]
    lines.append("")
    lines.append(f"`python benchmarks/gpu_plans.py` ({data['date']}; landscape {env['landscape']}, torch {env['torch']}, "
                 f"transformers {env['transformers']}; plans made on {env['machine']}, no GPU).")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="comma list of MODEL/COLUMN-index rows, e.g. Llama-2-7B/0")
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args(argv)
    out = ROOT / "benchmarks" / "results_gpu_plans.json"
    if a.table_only:
        data = json.loads(out.read_text())
    else:
        import datetime

        import torch
        import transformers

        import landscape

        data = json.loads(out.read_text()) if out.exists() and a.only else {"rows": []}
        wanted = None if a.only is None else set(a.only.split(","))
        with tempfile.TemporaryDirectory() as tmp:
            for m in MODELS:
                for i, c in enumerate(COLUMNS):
                    if wanted is not None and f"{m}/{i}" not in wanted:
                        continue
                    r = plan(m, c, Path(tmp))
                    print(json.dumps(r), flush=True)
                    data["rows"] = [x for x in data["rows"] if (x["model"], x["column"]) != (m, c)] + [r]
        data["date"] = datetime.date.today().isoformat()
        data["environment"] = {"landscape": landscape.__version__, "torch": torch.__version__.split("+")[0],
                               "transformers": transformers.__version__,
                               "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}"}
        out.write_text(json.dumps(data, indent=1) + "\n")
    from benchmarks._readme import replace_block

    replace_block("gpu-plans", table(data))
    return data


if __name__ == "__main__":
    main()
