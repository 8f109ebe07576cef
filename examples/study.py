"""The demo's study through the library API: fine-tune, measure flatness and forgetting, correlate.

    python examples/study.py [--out runs/example]

Uses the embedded data and the demo base model (built on first use, ~100 s on 2 CPU cores).
"""

import argparse
from pathlib import Path

import yaml

from landscape.foundation.configs import FinetuneConfig
from landscape.foundation.data import data_dir
from landscape.measures import forgetting
from landscape.study import demo, runner
from landscape.training import finetune

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/example")
out = Path(ap.parse_args().out)
data = data_dir()
base = out / "base"
demo.ensure_demo_model(base, steps=demo.DEMO_TRAIN["steps"])

# 1. four fine-tunes of the base on the `count` task: AdamW at two learning rates, SAM, ASAM
common = FinetuneConfig(max_steps=150, batch_size=16, eval_data=str(data / "tasks/count/eval.jsonl"))
runs = {"adamw-1e-3": common.replace(optimizer="adamw", lr=1e-3), "adamw-3e-3": common.replace(optimizer="adamw", lr=3e-3),
        "sam-0.05": common.replace(optimizer="sam", lr=1e-3, rho=0.05),
        "asam-1.0": common.replace(optimizer="asam", lr=1e-3, rho=1.0)}
for name, cfg in runs.items():
    if not (out / name).exists():
        finetune.finetune(base, data / "tasks/count/train.jsonl", out / name, cfg)

# 2. forgetting of each against the base (the base is scored once)
for r in forgetting.forgetting(base, [out / n for n in runs]):
    print(f"{Path(r['tuned']).name:<12} forgot {r['average']['delta']:.3f} average accuracy")

# 3. flatness vs forgetting over all four: a manifest (the same keys as the configs' fields),
#    statistics + the HTML report
manifest = {"title": "example study", "base": "base",
            "flatness": {"data": str(data / "tasks/count/eval.jsonl"), "batch_size": 8, "num_batches": 4,
                         "metrics": ["lambda_max", "trace", "sam"], "top_k": 3, "trace_samples": 10},
            "checkpoints": [{"path": n, "label": n, "optimizer": c.optimizer, "rho": c.rho, "lr": c.lr, "steps": 150,
                             "dataset": "count"} for n, c in runs.items()],
            "bootstrap": 1000}
(out / "manifest.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True))
res = runner.run_manifest(out / "manifest.yaml", out / "report.html")
for row in res["ranking"]:
    print(f"{row['metric']:<12} Spearman ρ vs forgetting {row['spearman']}")
print("report:", res["report"])
