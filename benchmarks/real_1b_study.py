"""The 1.5B study's table in the manual, from a committed result: a saved
`landscape demo --model qwen2.5-coder-1.5b --json` output (two hours on 2 cores: not rerun here), kept
with the command, the versions, the machine, its wall time and peak memory.

    python benchmarks/real_1b_study.py --from q1b.json --wall-seconds S --peak-rss-gb G [--note TEXT] [--lr-sweep]
    python benchmarks/real_1b_study.py --table-only      # re-render the block from the committed JSON
    python benchmarks/real_1b_study.py --trajectories runs/qwen2.5-coder-1.5b-study [--trajectories-out F]
        # the fine-tunes alone

Writes benchmarks/results_real_1b_study.json and the block between the ``real-1b-table`` markers of
docs/results/real-1b-study.md (tests/test_docs.py checks the block against this rendering).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.demo_study import environment, measured, slim  # noqa: E402

OUT = ROOT / "benchmarks" / "results_real_1b_study.json"
TRAJECTORIES = ROOT / "benchmarks" / "results_real_1b_trajectories.json"
COMMAND = ["landscape", "demo", "--model", "qwen2.5-coder-1.5b", "--json"]


def table(data: dict) -> str:
    """The provenance line, then the summary exactly as `landscape demo` prints it."""
    from landscape.cli.demo import summary, sweep_summary

    head = (f"{measured(data)}; {data['wall_seconds'] / 60:.0f} min wall in all, peak RSS "
            f"{data['peak_rss_gb']} GB. {data.get('note') or ''} Rendered from "
            "`benchmarks/results_real_1b_study.json` by `python benchmarks/real_1b_study.py --table-only`.")
    return head.replace("  ", " ") + "\n\n```\n" + summary(data["result"]) + sweep_summary(data["result"]) + "\n```"


def trajectories(study: Path) -> dict:
    """Each fine-tune of the study folder: its settings, training summary and probe records (what the
    fine-tunes show before — or without — the checkpoints' measurements)."""
    runs = {}
    for d in sorted((study / "ft").iterdir()):
        if not (d / "training_log.json").is_file():
            continue
        log, cfg = (json.loads((d / f).read_text()) for f in ("training_log.json", "finetune_config.json"))
        traj = json.loads((d / "trajectory.json").read_text()) if (d / "trajectory.json").is_file() else {}
        keep = ("optimizer", "lr", "rho", "max_steps", "batch_size", "max_length", "lora", "seed")
        runs[d.name] = {"settings": {k: cfg["settings"][k] for k in keep}, "dtype": cfg.get("dtype"),
                        "summary": {k: log["summary"].get(k) for k in ("train_loss_first", "train_loss_last",
                                                                        "eval_loss", "seconds", "update_rounding")},
                        "records": [{k: v for k, v in r.items() if not k.startswith("forgetting/")}
                                    for r in traj.get("records", [])]}
    return {"date": time.strftime("%Y-%m-%d"), "command": ["python", "benchmarks/real_1b_study.py", "--trajectories",
                                                             str(study)], "environment": environment(), "runs": runs}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="source", help="a saved `landscape demo --model qwen2.5-coder-1.5b --json` output")
    ap.add_argument("--wall-seconds", type=float, help="the run's wall time (all its invocations)")
    ap.add_argument("--peak-rss-gb", type=float, help="the run's peak RSS")
    ap.add_argument("--note", default="", help="how the run went (interruptions, resumes)")
    ap.add_argument("--lr-sweep", action="store_true", help="the result is of the study run with --lr-sweep")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--trajectories", type=Path, help="a study folder: write its fine-tunes' records alone")
    ap.add_argument("--trajectories-out", type=Path, default=TRAJECTORIES, help="where --trajectories writes")
    a = ap.parse_args(argv)
    if a.trajectories:
        data = trajectories(a.trajectories)
        if a.trajectories_out != TRAJECTORIES:
            data["command"] += ["--trajectories-out", str(a.trajectories_out)]
        a.trajectories_out.write_text(json.dumps(data, indent=1) + "\n")
        return data
    if a.table_only:
        data = json.loads(OUT.read_text())
    else:
        if not (a.source and a.wall_seconds and a.peak_rss_gb):
            ap.error("--from, --wall-seconds and --peak-rss-gb are required (or --table-only)")
        result = json.loads(Path(a.source).read_text())
        command = COMMAND[:-1] + ["--lr-sweep", "--json"] if a.lr_sweep else COMMAND
        data = {"date": time.strftime("%Y-%m-%d"), "command": command, "wall_seconds": a.wall_seconds,
                "peak_rss_gb": a.peak_rss_gb, "note": a.note, "environment": environment(), "result": slim(result)}
        OUT.write_text(json.dumps(data, indent=1) + "\n")
    from benchmarks._readme import replace_block

    replace_block("real-1b-table", table(data))
    return data


if __name__ == "__main__":
    main()
