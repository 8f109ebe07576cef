"""What LandscapeCallback costs a fine-tune: `landscape finetune` with and without `--probe-every`.

    python benchmarks/probe.py [--only demo,smollm2] [--no-readme]

For each model, the same AdamW fine-tune runs twice in fresh processes — without the probe, and with
``--probe-every E`` at the default probe settings (metrics loss and λ_max, one batch of 8 sequences,
≤ 20 HVPs per λ_max) — and the table shows seconds per training step, seconds per probe, their ratio,
the share of the probed run spent measuring, and whether the two runs' weights are bit-identical.
Writes benchmarks/results_probe.json and the README block between the ``probe-cost`` markers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETUPS = {
    "demo": {"base": "runs/demo/base", "data": "data/tasks/reverse/train.jsonl", "probe": "data/eval.jsonl",
             "steps": 100, "every": 25, "batch": 8},
    "smollm2": {"base": "runs/smollm2", "data": "data/real/tasks/reverse/train.jsonl",
                "probe": "data/real/general.jsonl", "steps": 20, "every": 10, "batch": 8},
}


def finetune(s: dict, out: Path, probe: bool) -> dict:
    cmd = [sys.executable, "-m", "landscape.cli", "finetune", str(ROOT / s["base"]), "--data",
           str(ROOT / s["data"]), "--out", str(out), "--max-steps", str(s["steps"]), "--batch-size", str(s["batch"]),
           "--eval-fraction", "0", "--lr", "1e-4", "--json", "--quiet"]
    if probe:
        cmd += ["--probe-every", str(s["every"]), "--probe-data", str(ROOT / s["probe"])]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"finetune failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return {"wall": time.perf_counter() - t0, **json.loads(p.stdout)}


def row(name: str, s: dict) -> dict:
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as d:
        plain = finetune(s, Path(d) / "plain", probe=False)
        probed = finetune(s, Path(d) / "probed", probe=True)
        traj = json.loads((Path(d) / "probed" / "trajectory.json").read_text())
        a, b = (load_file(Path(d) / k / "model.safetensors") for k in ("plain", "probed"))
        same = all((a[k] == b[k]).all().item() for k in a)
    per_step = plain["seconds"] / s["steps"]
    cost = traj["cost"]
    per_probe = cost["probe_seconds"] / cost["probes"]
    hvps = [r.get("lambda_max_hvps") for r in traj["records"]]
    return {"model": name, "steps": s["steps"], "every": s["every"], "probes": cost["probes"],
            "seconds_per_step": round(per_step, 3), "seconds_per_probe": round(per_probe, 3),
            "probe_over_step": round(per_probe / per_step, 2), "share": round(cost["share"], 3),
            "share_every_100": round(per_probe / (per_probe + 100 * per_step), 3),
            "lambda_max_hvps": hvps, "weights_identical": same}


def table(rows: list[dict]) -> str:
    lines = ["| model | steps, probe every | s / step | s / probe | probe / step | share of the run | "
             "share at every 100 | HVPs per λ_max | weights = unprobed run |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['steps']}, {r['every']} | {r['seconds_per_step']} | {r['seconds_per_probe']} | "
                     f"{r['probe_over_step']} | {100 * r['share']:.1f}% | {100 * r['share_every_100']:.1f}% | "
                     f"{', '.join(map(str, r['lambda_max_hvps']))} | {'yes' if r['weights_identical'] else 'NO'} |")
    return "\n".join(lines) + ("\n\n`python benchmarks/probe.py` (2 cores, float32, default probe: loss + λ_max on "
                               "one batch of 8; 'share at every 100' extrapolates the measured per-probe cost).")


def main(argv=None) -> list:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(SETUPS))
    ap.add_argument("--no-readme", action="store_true")
    a = ap.parse_args(argv)
    rows = [row(n, SETUPS[n]) for n in a.only.split(",")]
    (ROOT / "benchmarks" / "results_probe.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    if not a.no_readme:
        from benchmarks._readme import replace_block

        replace_block("probe-cost", table(rows))
    return rows


if __name__ == "__main__":
    main()
