"""Adapter to EleutherAI's lm-evaluation-harness (optional extra ``[lmeval]``).

``score_lm_eval(ck, ["arc_easy", "hellaswag"])`` runs harness tasks on an already loaded checkpoint
(its model object and tokenizer are handed to ``lm_eval``'s ``HFLM``: nothing is reloaded, nothing
is trusted that our loader did not trust). Each task's primary metric is ``acc`` when the task has
one, else its first reported metric; results go through the same store cache as our own suites.

Real benchmarks need their datasets, which the harness fetches from the Hugging Face hub unless they
are cached locally; ``include`` adds a directory of the user's own task YAMLs (e.g. one written by
:func:`write_task_yaml` over a local jsonl suite, which needs no network at all).
"""

from __future__ import annotations

import os
from pathlib import Path

from landscape.foundation.errors import UserError
from landscape.foundation.io import write_text


def _require():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as e:
        raise UserError(f"lm-evaluation-harness is not installed ({e.name}); pip install 'landscape[lmeval]'") from None


def write_task_yaml(suite_path: str | os.PathLike, out_dir: str | os.PathLike, name: str | None = None) -> Path:
    """An lm-eval task over one of our multiple-choice jsonl suites (context, choices, answer)."""
    suite_path = Path(suite_path).resolve()
    name = name or f"landscape_{suite_path.stem}"
    out = Path(out_dir) / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text(out,
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {suite_path}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\n"
        "target_delimiter: ' '\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "  - metric: acc_norm\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )


def _primary(metrics: dict) -> tuple[str, dict]:
    vals = {k.split(",")[0]: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and "stderr" not in k and k != "alias"}
    if not vals:
        raise UserError("lm-eval returned no metric")
    key = "acc" if "acc" in vals else next(iter(vals))
    return key, vals


def score_lm_eval(ck, tasks, include=None, store=None, limit=None, batch_size: int = 16) -> dict:
    """{task: {"metric", "score", ...all numeric metrics}} for a loaded checkpoint."""
    _require()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from landscape.foundation.store import Store

    store = store or Store(None)
    manager = TaskManager(include_path=str(include) if include else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown lm-eval task {unknown[0]!r} (see `lm_eval --tasks list`, or give lm_eval_include DIR)")
    lm = None
    out = {}
    for task in tasks:
        cfg = {"task": task, "include": str(include) if include else None, "limit": limit,
               "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?"}
        if include:  # a local task: its files are part of the question
            for f in sorted(Path(include).glob("*.yaml")):
                cfg[f"yaml:{f.name}"] = f.read_text()

        def compute(task=task):
            nonlocal lm
            if lm is None:
                lm = HFLM(pretrained=ck.model, tokenizer=ck.tokenizer, batch_size=batch_size)
            res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit,
                                          log_samples=False, bootstrap_iters=0, verbosity="ERROR")
            key, vals = _primary(res["results"][task])
            n = vals.pop("sample_len", None)
            return {"metric": key, "score": float(vals[key]), **{k: float(v) for k, v in vals.items()},
                    "n": int(n) if n is not None else None}

        out[task] = store.cached(ck.fingerprint, "lm_eval", cfg, compute)
    return out
