"""What LandscapeCallback costs a fine-tune: `landscape finetune` with and without `--probe-every`.

    python benchmarks/probe.py [--only demo,smollm2] [--no-readme]

For each model, the same AdamW fine-tune runs in fresh processes — without the probe, and with
``--probe-every E`` for each probe set (``--metrics``: the default, loss + the forgetting meter; and
loss + λ_max, ≤ 20 HVPs per λ_max, the default before 2026-12-06), one batch of 8 sequences — and the
table shows seconds per training step, seconds per probe, their ratio, the share of the probed run spent
measuring (and extrapolated to a probe every 50 and every 100 steps), and whether the probed run's
weights are bit-identical to the unprobed one's.
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


METRICS = ("loss,meter", "loss,lambda_max")


def finetune(s: dict, out: Path, probe: str | None) -> dict:
    cmd = [sys.executable, "-m", "landscape.cli", "finetune", str(ROOT / s["base"]), "--data",
           str(ROOT / s["data"]), "--out", str(out), "--max-steps", str(s["steps"]), "--batch-size", str(s["batch"]),
           "--eval-fraction", "0", "--lr", "1e-4", "--json", "--quiet"]
    if probe:
        cmd += ["--probe-every", str(s["every"]), "--probe-data", str(ROOT / s["probe"]), "--probe-metrics", probe]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"finetune failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return {"wall": time.perf_counter() - t0, **json.loads(p.stdout)}


def rows_of(name: str, s: dict, metrics=METRICS) -> list[dict]:
    """One unprobed run, then one probed run per probe set, each against it."""
    from safetensors.torch import load_file

    out = []
    with tempfile.TemporaryDirectory() as d:
        plain = finetune(s, Path(d) / "plain", probe=None)
        a = load_file(Path(d) / "plain" / "model.safetensors")
        per_step = plain["seconds"] / s["steps"]
        for i, m in enumerate(metrics):
            finetune(s, Path(d) / f"probed{i}", probe=m)
            traj = json.loads((Path(d) / f"probed{i}" / "trajectory.json").read_text())
            b = load_file(Path(d) / f"probed{i}" / "model.safetensors")
            cost = traj["cost"]
            per_probe = cost["probe_seconds"] / cost["probes"]
            out.append({"model": name, "metrics": m, "steps": s["steps"], "every": s["every"], "probes": cost["probes"],
                        "seconds_per_step": round(per_step, 3), "seconds_per_probe": round(per_probe, 3),
                        "probe_seconds": [r["probe_seconds"] for r in traj["records"]],
                        "probe_over_step": round(per_probe / per_step, 2), "share": round(cost["share"], 3),
                        "share_every_50": round(per_probe / (per_probe + 50 * per_step), 3),
                        "share_every_100": round(per_probe / (per_probe + 100 * per_step), 3),
                        "lambda_max_hvps": [r.get("lambda_max_hvps") for r in traj["records"]],
                        "weights_identical": all((a[k] == b[k]).all().item() for k in a)})
    return out


def table(rows: list[dict]) -> str:
    lines = ["| model | probe | steps, probe every | s / step | s / probe | probe / step | share of the run | "
             "share at every 50 | at every 100 | HVPs per λ_max | weights = unprobed run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hvps = [h for h in r["lambda_max_hvps"] if h is not None]
        e50 = r.get("share_every_50")
        lines.append(f"| {r['model']} | {r.get('metrics', 'loss,lambda_max')} | {r['steps']}, {r['every']} | "
                     f"{r['seconds_per_step']} | {r['seconds_per_probe']} | {r['probe_over_step']} | "
                     f"{100 * r['share']:.1f}% | {'—' if e50 is None else f'{100 * e50:.1f}%'} | "
                     f"{100 * r['share_every_100']:.1f}% | {', '.join(map(str, hvps)) or '—'} | "
                     f"{'yes' if r['weights_identical'] else 'NO'} |")
    return "\n".join(lines) + ("\n\n`python benchmarks/probe.py` (2 cores, float32, one probe batch of 8; the "
                               "meter's first probe also takes the step-0 gradient; 'share at every N' "
                               "extrapolates the mean per-probe cost).")


def main(argv=None) -> list:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(SETUPS))
    ap.add_argument("--metrics", default=";".join(METRICS), help="probe sets, ';'-separated (rows of other sets "
                                                                    "already in the results are kept)")
    ap.add_argument("--no-readme", action="store_true")
    a = ap.parse_args(argv)
    sets = tuple(a.metrics.split(";"))
    new = [r for n in a.only.split(",") for r in rows_of(n, SETUPS[n], sets)]
    path = ROOT / "benchmarks" / "results_probe.json"
    old = json.loads(path.read_text()) if path.is_file() else []
    done = {(r["model"], r["metrics"]) for r in new}
    kept = [r for r in old if (r["model"], r.get("metrics", "loss,lambda_max")) not in done]
    rows = sorted(new + kept, key=lambda r: (list(SETUPS).index(r["model"]), METRICS.index(r.get("metrics", METRICS[1]))
                                             if r.get("metrics", METRICS[1]) in METRICS else 9))
    path.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    if not a.no_readme:
        from benchmarks._readme import replace_block

        replace_block("probe-cost", table(rows))
    return rows


if __name__ == "__main__":
    main()
