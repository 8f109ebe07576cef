"""A LoRA fine-tune and a full fine-tune of the demo base, and what the general loss predicts about each.

    python examples/lora_forgetting.py [--out runs/example-lora]

Library calls only: `finetune` (full, then LoRA rank 8 into a PEFT adapter dir), `forgetting` on the
embedded suites, `predict` on held-out general text (the base's curvature along each update Δw).
"""

import argparse
from pathlib import Path

from landscape.foundation.configs import DataConfig, FinetuneConfig, LoadConfig
from landscape.foundation.data import data_dir
from landscape.measures import forgetting, predictors
from landscape.study import demo
from landscape.training import finetune

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/example-lora")
out = Path(ap.parse_args().out)
data = data_dir()
base = out / "base"
demo.ensure_demo_model(base, steps=demo.DEMO_TRAIN["steps"])
cpu = LoadConfig(device="cpu")

# 1. the same task, the same steps: every weight (AdamW lr 1e-3) or a rank-8 adapter (lr 3e-3)
common = FinetuneConfig(max_steps=150, batch_size=16, eval_data=str(data / "tasks/count/eval.jsonl"), overwrite=True)
runs = {"full": common.replace(lr=1e-3), "lora-r8": common.replace(lr=3e-3, lora=8)}
for name, cfg in runs.items():
    s = finetune.finetune(base, data / "tasks/count/train.jsonl", out / name, cfg, load=cpu)
    print(f"{name}: eval loss on the task {s['eval_loss']:.3f}")

# 2. forgetting on the embedded suites (the adapter dir is loaded merged into its base)
paths = [out / n for n in runs]
for r in forgetting.forgetting(base, paths, load=cpu):
    print(f"{Path(r['tuned']).name}: average accuracy lost {r['average']['delta']:.3f}")

# 3. the predictors: the general loss at the base along each Δw (a LoRA run's Δw is its merged update)
res = predictors.predict(base, paths, data=DataConfig(data=str(data / "eval.jsonl"), num_batches=4), load=cpu)
print(f"λ_max of the general Hessian at the base: {res['lambda_max_base']['lambda_max']:.3g}")
for r in res["results"]:
    m = r["metrics"]
    print(f"{Path(r['tuned']).name}: ‖Δw‖ {m['delta_norm']:.3g}, κ along Δw {m['kappa_base']:.3g}, "
          f"F̂ {m['quad_pred']:.3g} vs measured F {m['general_loss_increase']:.3g} (line R² {r['line']['r2']:.2f})")
