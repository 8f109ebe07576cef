"""The toy study's table in the manual, from a committed result: `landscape demo` run (or read), its
printed table kept with the command, the versions and the machine that produced it.

    python benchmarks/demo_study.py                      # runs `landscape demo --out runs/demo --json`
    python benchmarks/demo_study.py --from result.json   # a saved `landscape demo --json` output
    python benchmarks/demo_study.py --table-only         # re-render the block from the committed JSON

Writes benchmarks/results_demo.json (what the printed table needs, ~60 KB, not the whole 290 KB
result) and the block between the ``demo-table`` markers of docs/results/demo-study.md; tests/test_docs.py
checks that the block is exactly what this renders from the JSON, so the page cannot drift from it.
What reproduces: on one machine with the same versions and thread counts, the same table to the last
digit (the fine-tunes run one thread each from a seeded data order; tests/test_demo.py retrains two
and compares their bits); across machines or library versions, not bit for bit (float summation
order), so readings rest only on what holds across the seeds' intervals.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results_demo.json"
COMMAND = ["landscape", "demo", "--out", "runs/demo", "--json", "--quiet"]
# the fields of a checkpoint row and of the result that the printed table reads (cli/demo.py summary)
ROW_KEYS = ("label", "optimizer", "seed", "setting", "task_exact_match")
KEYS = ("study", "base", "report", "model", "finetunes", "finetune_seconds", "task", "metrics", "metric_info",
        "comparisons", "base_scores", "lambda_max_base_general", "covariates", "bootstrap_over", "ranking",
        "seconds", "lr_sweep")


def slim(r: dict) -> dict:
    """What the printed table needs of a `landscape demo --json` result."""
    out = {k: r.get(k) for k in KEYS}
    out["checkpoints"] = [{**{k: c.get(k) for k in ROW_KEYS},
                           "forgetting": {"average": c["forgetting"]["average"]},
                           "flatness": {m: v for m, v in c["flatness"].items() if isinstance(v, (int, float))}}
                          for c in r["checkpoints"]]
    trade = r.get("tradeoff") or {}
    out["tradeoff"] = {"pairs": [{"line": p["line"]} for p in trade.get("pairs") or []],
                       "families": {f: {"frontier": v.get("frontier")} for f, v in (trade.get("families") or {}).items()}}
    traj = r.get("trajectories") or {}
    out["trajectories"] = {"pairs": [{"line": p["line"]} for p in traj.get("pairs") or []],
                           **{k: traj.get(k) for k in ("probe_every", "runs", "plot")}}
    out["rankings"] = {t: rk[:1] for t, rk in (r.get("rankings") or {}).items()}  # the best of each target
    return out


def environment() -> dict:
    import torch
    import transformers

    import landscape

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    return {"landscape": landscape.__version__, "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": f"{cpu}, {os.cpu_count()} cores", "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": _cpu_flags()}


def _cpu_flags() -> list[str]:
    """The CPU features that decide how bf16 products round (two CPUs gave different bf16 runs)."""
    info = Path("/proc/cpuinfo")
    flags = next((ln.split(":", 1)[1].split() for ln in info.read_text().splitlines() if ln.startswith("flags")),
                 []) if info.exists() else []
    return sorted(set(flags) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})


def measured(data: dict) -> str:
    """"Measured DATE on MACHINE (versions): `COMMAND`" — the start of a study table's provenance line."""
    env = data["environment"]
    return (f"Measured {data['date']} on {env['machine']} (torch {env['torch']}, transformers "
            f"{env['transformers']}, Python {env['python']}, landscape {env['landscape']}): "
            f"`{' '.join(data['command'])}`")


def table(data: dict) -> str:
    """The block: the provenance line, then the table exactly as `landscape demo` printed it."""
    from landscape.cli.demo import summary

    head = (f"{measured(data)} on {data['started_from']}; {data['wall_seconds']:.0f} s "
            f"wall, peak RSS {data['peak_rss_gb']} GB. Rendered from `benchmarks/results_demo.json` by "
            "`python benchmarks/demo_study.py --table-only`.")
    return head + "\n\n```\n" + summary(data["result"]) + "\n```"


def _run(started_from: str) -> tuple[dict, float, float | None]:
    """`landscape demo --json` in a fresh process: (result, wall seconds, peak RSS GB of it and its children)."""
    import resource

    t0 = time.perf_counter()
    exe = Path(sys.executable).with_name("landscape")
    p = subprocess.run([str(exe), *COMMAND[1:]], cwd=ROOT, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KB → GB (Linux)
    return json.loads(p.stdout), wall, round(peak, 2)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="source", default=None, help="a saved `landscape demo --json` output")
    ap.add_argument("--wall-seconds", type=float, default=None, help="with --from: the run's wall time")
    ap.add_argument("--peak-rss-gb", type=float, default=None, help="with --from: the run's peak RSS")
    ap.add_argument("--started-from", default="an empty runs/demo holding the demo base",
                    help="what the run found in runs/demo")
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args(argv)
    if a.table_only:
        data = json.loads(OUT.read_text())
    else:
        if a.source:
            result, wall, peak = json.loads(Path(a.source).read_text()), a.wall_seconds, a.peak_rss_gb
        else:
            result, wall, peak = _run(a.started_from)
        data = {"date": time.strftime("%Y-%m-%d"), "command": COMMAND, "started_from": a.started_from,
                "wall_seconds": wall if wall is not None else result["seconds"], "peak_rss_gb": peak,
                "environment": environment(), "result": slim(result)}
        OUT.write_text(json.dumps(data, indent=1) + "\n")
    from benchmarks._readme import replace_block

    replace_block("demo-table", table(data))
    return data


if __name__ == "__main__":
    main()
