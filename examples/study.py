"""The demo's study through the library API: fine-tune, measure flatness and forgetting, correlate.

    python examples/study.py [--out runs/example]

Uses the embedded data and the demo base model (built on first use, ~100 s on 2 CPU cores).
"""

import argparse
from pathlib import Path

from landscape.study import correlate, demo
from landscape.training import finetune
from landscape.measures import forgetting

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/example")
out = Path(ap.parse_args().out)
data = demo.data_dir()
base = out / "base"
demo.ensure_demo_model(base, steps=demo.DEMO_TRAIN["steps"])

# 1. four fine-tunes of the base on the `count` task: AdamW at two learning rates, SAM, ASAM
runs = {"adamw-1e-3": dict(optimizer="adamw", lr=1e-3), "adamw-3e-3": dict(optimizer="adamw", lr=3e-3),
        "sam-0.05": dict(optimizer="sam", lr=1e-3, rho=0.05), "asam-1.0": dict(optimizer="asam", lr=1e-3, rho=1.0)}
for name, kw in runs.items():
    if not (out / name).exists():
        finetune.finetune(base, data / "tasks/count/train.jsonl", out / name, max_steps=150, batch_size=16,
                          eval_data=data / "tasks/count/eval.jsonl", **kw)

# 2. forgetting of each against the base (the base is scored once)
for r in forgetting.forgetting(base, [out / n for n in runs]):
    print(f"{Path(r['tuned']).name:<12} forgot {r['average']['delta']:.3f} average accuracy")

# 3. flatness vs forgetting over all four: statistics + the HTML report
manifest = {
    "path": "examples/study.py", "title": "example study", "base": base, "suites": None, "categories": None,
    "flatness": {"data": data / "tasks/count/eval.jsonl", "batch_size": 8, "num_batches": 4, "max_length": None,
                 "metrics": ["lambda_max", "trace", "sam"], "top_k": 3, "surface": {"x": "-1:1:11"},
                 "trace_samples": 10, "eps": 1e-3, "rho": 0.05, "sigma": 0.01, "seed": 0},
    "checkpoints": [{"path": out / n, "label": n, "optimizer": kw["optimizer"], "rho": kw.get("rho"),
                     "lr": kw["lr"], "epochs": None, "steps": 150, "dataset": "count"} for n, kw in runs.items()],
    "bootstrap": 1000, "seed": 0}
res = correlate.run_manifest(manifest, out / "report.html")
for row in res["ranking"]:
    print(f"{row['metric']:<12} Spearman ρ vs forgetting {row['spearman']:+.2f} (p {row['p']:.2g}, n {row['n']})")
print("report:", res["report"])
