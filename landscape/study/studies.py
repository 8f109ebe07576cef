"""A forgetting study end to end: fine-tunes of a base, their flatness and forgetting, the correlations.

A :class:`StudySpec` names the task, the fine-tunes (optimizer, learning rate, steps, ρ), the
flatness measurements (a manifest ``flatness`` section) and the SAM-vs-AdamW comparisons;
:func:`run_study` makes every fine-tune (reusing one whose config, base and data are unchanged),
writes the manifest, runs it through :func:`landscape.study.runner.run_manifest` (the store makes a
re-run free) and scores how well each fine-tune learned its task. The toy demo and the real-model
study are two specs (:mod:`landscape.study.demo`, :mod:`landscape.study.real`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from landscape.foundation import checkpoint
from landscape.foundation.configs import FinetuneConfig, LoadConfig
from landscape.foundation.io import write_text


@dataclass(frozen=True)
class StudySpec:
    name: str
    title: str
    task_dir: Path  # relative to the data root: train.jsonl, eval.jsonl
    suites: Path  # relative to the data root: *.jsonl + categories.json
    runs: tuple  # (label, optimizer, lr, steps, rho[, LoRA rank]): a rank makes it a LoRA run (a PEFT adapter)
    fast_runs: tuple  # labels kept by fast=True
    finetune: FinetuneConfig  # shared settings of every fine-tune
    flatness: dict  # the manifest's flatness section (data and suites are filled in)
    fast_flatness: dict = field(default_factory=dict)  # overrides of ``flatness`` for fast=True
    comparisons: tuple = ()  # (sam label, adamw label, what is matched)
    task_scoring_batch: int = 32
    predictors: dict | None = None  # the manifest's predictors section (its data relative to the data root)
    fast_predictors: dict = field(default_factory=dict)  # overrides of ``predictors`` for fast=True
    covariates: tuple = ()  # partial correlations control for these (manifest ``covariates``)
    seeds: tuple = (0,)  # the fine-tunes' seeds (data order, LoRA init): the first for every run,
    seeded: tuple = ()  # and all of them for these labels (the settings that carry a claim)
    fast_seeded: tuple = ()  # ``seeded`` for fast=True
    # probes during the fine-tunes of the ``seeded`` settings (ProbeConfig fields; task data and suites
    # are the study's): each run's trajectory of (task loss, forgetting) points, a frontier per family
    probe: dict | None = None
    fast_probe: dict = field(default_factory=dict)  # overrides of ``probe`` for fast=True
    # fine-tunes run side by side in this many one-thread processes (at most the CPU count): for models
    # too small to use two threads well; results do not depend on it (a test holds it bit for bit)
    finetune_workers: int = 1
    # each fine-tune in a fresh process (one at a time unless ``finetune_workers``), so that what it
    # allocated goes back to the OS: in one process a 135M model's fine-tunes left the study holding
    # 21 GB (freed memory the allocator keeps, fragmented), and the plan refused the 14th fine-tune
    finetune_isolated: bool = False
    # the precision the full fine-tunes train in (their weights, AdamW's moments: bf16 with stochastic
    # rounding, as users train models that do not fit in float32); LoRA adapters train in float32 over
    # the base's values. The base is then stored in it, so every checkpoint's weights lie on one grid;
    # measurements load them in float32 (exact) and compute in float32.
    dtype: str = "float32"


def _finetuned(base: Path, base_fp: str, out: Path, data: Path, run: FinetuneConfig, probe, dtype: str,
               progress: bool) -> str:
    """Fine-tune unless ``out`` already holds this exact run (same base, data and config, and the
    trajectory of the same probes when ``probe``, a ProbeConfig, is given); an interrupted run of the
    same settings (``out.partial`` with its saved state) is continued, any other one replaced."""
    from landscape.foundation.errors import UserError
    from landscape.training.callback import LandscapeCallback
    from landscape.training.finetune import _has_state, finetune

    if _done(base, base_fp, out, data, run, probe, dtype):
        return "reused"
    partial = out.with_name(out.name + ".partial")
    load = LoadConfig(device="cpu", dtype="float32" if run.lora else dtype)
    callback = (lambda: LandscapeCallback(config=probe)) if probe is not None else (lambda: None)
    if _has_state(partial):
        try:
            finetune(base, data, out, run.replace(resume=True), load=load, progress=progress, probe=callback())
            return "resumed"
        except UserError:  # another run's state (other settings): start this one afresh
            pass
    shutil.rmtree(partial, ignore_errors=True)
    finetune(base, data, out, run, load=load, progress=progress, probe=callback())
    return "trained"


def finetune_all(jobs: dict, workers: int, progress: bool, isolated: bool = False) -> dict:
    """{label: "trained" | "resumed" | "reused"} for every job (the arguments of :func:`_finetuned` but progress):
    in this process; or side by side in ``workers`` one-thread processes; or (``isolated``) each in a
    fresh process of its own, with this process's threads. Pools are spawned (no forked torch state)
    and show one progress bar over the runs."""
    if workers <= 1 and not isolated:
        return {label: _finetuned(*args, progress) for label, args in jobs.items()}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch
    from landscape.foundation.progress import tqdm

    order = list(jobs)
    reused = [label for label, args in jobs.items() if isolated and _done(*args)]  # no process for these
    jobs = {label: args for label, args in jobs.items() if label not in reused}
    pool = ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn"),
                               initializer=_one_thread if workers > 1 else _threads,
                               initargs=() if workers > 1 else (torch.get_num_threads(),),
                               max_tasks_per_child=1 if isolated else None)
    with pool:
        futures = {pool.submit(_finetuned, *args, False): label for label, args in jobs.items()}
        done = {futures[f]: f.result() for f in tqdm(as_completed(futures), total=len(futures), desc="fine-tunes",
                                                      disable=not progress)}
    done.update({label: "reused" for label in reused})
    return {label: done[label] for label in order}


def _done(base: Path, base_fp: str, out: Path, data: Path, run: FinetuneConfig, probe, dtype: str = "float32") -> bool:
    """``out`` already holds this exact run (what :func:`_finetuned` would reuse)."""
    return _reusable(out, base_fp, run, dtype) and (probe is None or _trajectory_of(out, probe) is not None)


def _one_thread() -> None:
    _threads(1)


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _reusable(out: Path, base_fp: str, run: FinetuneConfig, dtype: str = "float32") -> bool:
    try:
        have = json.loads((out / "finetune_config.json").read_text())
        # the settings that change the weights (not where the eval file lies); a setting added after
        # that run was written had its default then; and the precision it trained in
        keys = {**run.numbers(), **({"eval_fraction": run.eval_fraction} if run.eval_data is None else {})}
        theirs = {**FinetuneConfig().as_dict(), **have["settings"]}
        return ({k: theirs[k] for k in keys} == keys and have["base_fingerprint"] == base_fp
                and have.get("dtype", "float32") == ("float32" if run.lora else dtype))
    except (ValueError, KeyError, OSError):
        return False


def _trajectory_of(out: Path, probe) -> dict | None:
    """The run's trajectory when it was measured with exactly these probe settings."""
    try:
        doc = json.loads((out / "trajectory.json").read_text())
    except (ValueError, OSError):
        return None
    return doc if _portable(doc.get("config")) == _portable(probe.as_dict()) else None


PROBE_PATHS = ("probe_data", "probe_task_data", "probe_suites")


def _portable(cfg: dict | None) -> dict | None:
    """A probe config with its data paths cut to their last three parts (``data/real/suites``): a study
    run from another checkout of the same data (a worktree, a moved clone) reuses its trajectories —
    as its fine-tunes are reused by their settings, not by where the data lay."""
    if not isinstance(cfg, dict):
        return cfg
    cut = lambda p: "/".join(Path(p).parts[-3:]) if isinstance(p, str) else p  # noqa: E731
    return {k: ([cut(x) for x in v] if isinstance(v, (list, tuple)) else cut(v)) if k in PROBE_PATHS else v
            for k, v in cfg.items()}


def probe_config(spec: StudySpec, root: Path, fast: bool):
    """The ProbeConfig of the study's fine-tunes (None without probes)."""
    from landscape.foundation.configs import ProbeConfig

    if spec.probe is None:
        return None
    return ProbeConfig.from_mapping({**spec.probe, **(spec.fast_probe if fast else {}),
                                     "probe_task_data": str(root / spec.task_dir / "eval.jsonl"),
                                     "probe_suites": (str(root / spec.suites),)}, "probe")


def _run(run: tuple) -> tuple:
    """(label, optimizer, lr, steps, rho, LoRA rank or None) of a spec's run."""
    return (*run, None) if len(run) == 5 else tuple(run)


def expand(spec: StudySpec, fast: bool) -> list[dict]:
    """Every fine-tune of the study: each run (a setting) at the first seed, the ``seeded`` ones at
    every seed (label ``<setting>-seed<k>`` beyond the first, so a one-seed study's folders are reused)."""
    seeded = spec.fast_seeded if fast else spec.seeded
    out = []
    for label, opt, lr, steps, rho, rank in map(_run, spec.runs):
        if fast and label not in spec.fast_runs:
            continue
        for k, seed in enumerate(spec.seeds if label in seeded else spec.seeds[:1]):
            out.append({"label": label if k == 0 else f"{label}-seed{seed}", "setting": label, "seed": seed,
                        "optimizer": opt, "lr": lr, "steps": steps, "rho": rho, "lora": rank,
                        "family": f"{opt}-lora" if rank else opt, "probed": label in seeded})
    return out


def study_manifest(spec: StudySpec, out: Path, root: Path, runs: list[dict], fast: bool, base: Path) -> Path:
    """The study's manifest (YAML), written next to the fine-tunes (``base`` named relative to it)."""
    import yaml

    flat = {**spec.flatness, **(spec.fast_flatness if fast else {}), "data": str(root / spec.task_dir / "eval.jsonl")}
    m = {"title": spec.title, "base": os.path.relpath(base, out), "suites": [str(root / spec.suites)], "flatness": flat,
         "checkpoints": [{"path": f"ft/{r['label']}", "label": r["label"], "optimizer": r["family"], "lr": r["lr"],
                          "steps": r["steps"], "rho": r["rho"], "lora": r["lora"], "dataset": spec.task_dir.name,
                          "seed": r["seed"], "setting": r["setting"]} for r in runs],
         "bootstrap": 2000}
    if spec.predictors:
        pr = {**spec.predictors, **(spec.fast_predictors if fast else {})}
        # the data files are the data root's, not the study folder's (where the manifest lies)
        m["predictors"] = {**pr, **{k: str(root / pr[k]) for k in ("data", "kl_data") if pr.get(k)}}
        m["covariates"] = list(spec.covariates)
    return write_text(out / "manifest.yaml", yaml.safe_dump(m, sort_keys=False, allow_unicode=True))


def run_study(spec: StudySpec, base: Path, out: Path, root: Path, model: dict, fast: bool = False,
              progress: bool = False, store: Path | None = None) -> dict:
    """Fine-tune ``base`` per ``spec`` under ``out/ft``, measure, correlate; ``root`` holds the data;
    ``store`` the results store (default ``out/report.sqlite``: another study of the same base can
    share one, so the base is scored once)."""
    from landscape.measures import forgetting as FG
    from landscape.study.runner import run_manifest

    t0 = time.perf_counter()
    _check_data(spec, root)
    runs = expand(spec, fast)
    base_fp = checkpoint.fingerprint(base)  # hashed once, not once per fine-tune
    task, probe = root / spec.task_dir, probe_config(spec, root, fast)
    jobs = {r["label"]: (base, base_fp, out / "ft" / r["label"], task / "train.jsonl",
                         spec.finetune.replace(optimizer=r["optimizer"], lr=r["lr"], max_steps=r["steps"],
                                               rho=r["rho"] or 0.05, lora=r["lora"], seed=r["seed"],
                                               eval_data=str(task / "eval.jsonl"), overwrite=True),
                         probe if r["probed"] else None, spec.dtype) for r in runs}
    how = finetune_all(jobs, min(spec.finetune_workers, os.cpu_count() or 1), progress, spec.finetune_isolated)
    t_ft = time.perf_counter() - t0
    manifest = study_manifest(spec, out, root, runs, fast, base)
    res = run_manifest(manifest, out / "report.html", store_path=store, progress=progress)
    task_suite = FG.load_suite(task / "eval.jsonl")
    for r in res["checkpoints"]:  # how well each fine-tune learned its task (exact match on held-out items)
        ck = checkpoint.load_checkpoint(r["path"])
        r["task_exact_match"] = FG.score_suite(ck.model, ck.tokenizer, task_suite, spec.task_scoring_batch)["score"]
    return {"study": spec.name, "out": str(out), "base": str(base), "report": res["report"],
            "manifest": str(manifest), "model": model, "finetunes": how, "finetune_seconds": round(t_ft, 1),
            "task": spec.task_dir.name, "metrics": res["metrics"], "checkpoints": res["checkpoints"],
            "base_scores": res["base_scores"], "ranking": res["ranking"], "correlations": res["correlations"],
            "rankings": res["rankings"], "partial": res["partial"], "covariates": res["covariates"],
            "bootstrap_over": res.get("bootstrap_over"),
            "metric_info": res["metric_info"], "lambda_max_base_general": res["lambda_max_base_general"],
            "comparisons": comparisons(spec, res), "tradeoff": study_tradeoff(spec, res["checkpoints"]),
            "trajectories": trajectories(spec, out, runs, probe),
            "seconds": round(time.perf_counter() - t0, 1)}


def _check_data(spec: StudySpec, root: Path) -> None:
    """Every data file the study reads exists — checked before hours of fine-tunes, not after."""
    from landscape.foundation.errors import DataError

    pr = spec.predictors or {}
    files = [root / spec.task_dir / "train.jsonl", root / spec.task_dir / "eval.jsonl", root / spec.suites,
             *(root / pr[k] for k in ("data", "kl_data") if pr.get(k))]
    for f in files:
        if not f.exists():
            raise DataError(f"{f}: no such data file (study {spec.name})")


PAIRS = (("sam", "adamw"), ("asam", "adamw"), ("adamw-lora", "adamw"), ("sam-lora", "adamw-lora"))


def study_tradeoff(spec: StudySpec, checkpoints: list[dict]) -> dict:
    """Forgetting at matched task exact match between the optimizer families of the study's runs
    (:mod:`landscape.study.tradeoff`): a setting run over several seeds enters as its mean, and its seeds
    are what the bootstrap redraws."""
    from landscape.study.tradeoff import tradeoff

    rows = [{"label": c["label"], "family": c.get("optimizer") or "other", "seed": c.get("seed"),
             "setting": c.get("setting"), "task": c["task_exact_match"], "forgetting": c["forgetting"]["average"]["delta"]}
            for c in checkpoints if c.get("task_exact_match") is not None]
    return tradeoff(rows, _pairs(rows), task_name="EM")


def _pairs(rows: list[dict]) -> list[tuple]:
    """The family pairs of :data:`PAIRS` that ``rows`` both hold."""
    present = {r["family"] for r in rows}
    return [p for p in PAIRS if set(p) <= present]


def trajectories(spec: StudySpec, out: Path, runs: list[dict], probe) -> dict | None:
    """Every probe of every fine-tune as a (minus task loss, forgetting) point: each family's frontier
    over its runs' trajectories and the matched comparisons (a (setting, step) over seeds enters as its
    mean; its seeds are what the bootstrap redraws); ``out/trajectories.html`` draws them."""
    from landscape.foundation import distributed as dist
    from landscape.study.report import trajectories_page
    from landscape.study.tradeoff import trajectory_points, tradeoff

    if probe is None:
        return None
    rows, paths = [], []
    for r in filter(lambda r: r["probed"], runs):
        doc = _trajectory_of(out / "ft" / r["label"], probe)
        if doc is None:
            continue
        paths.append(out / "ft" / r["label"] / "trajectory.json")
        rows += [{**p, "setting": f"{r['setting']}@{p['step']}"}
                 for p in trajectory_points(doc, r["family"], r["seed"], label=r["label"])]
    res = tradeoff(rows, _pairs(rows), task_name="-task_loss")
    if paths and dist.is_main():
        res["plot"] = str(trajectories_page(res, paths, out / "trajectories.html",
                                            f"{spec.title}: measured during the fine-tunes"))
    return {**res, "probe_every": probe.probe_every, "runs": len(paths)}


def mean_difference(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """mean(a) − mean(b) over independent seeds with a Welch t interval (None with one seed on a side)."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"mean": [float(a.mean()), float(b.mean())], "n": [len(a), len(b)], "difference": float(a.mean() - b.mean()),
           "sd": [float(a.std(ddof=1)) if len(a) > 1 else None, float(b.std(ddof=1)) if len(b) > 1 else None],
           "ci": None}
    if len(a) > 1 and len(b) > 1:
        if a.var() + b.var() > 0:
            ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
            out["ci"] = [float(ci.low), float(ci.high)]
        else:  # no spread on either side (scipy's interval is NaN then): the difference itself
            out["ci"] = [out["difference"]] * 2
    return out


def _values(rows: list[dict], get) -> list[float]:
    return [v for v in map(get, rows) if v is not None]


def comparisons(spec: StudySpec, res: dict) -> list[dict]:
    """SAM against AdamW at what each pair matches (equal steps, equal compute = two passes per SAM step):
    each side's mean over its seeds, the difference with a Welch interval over seeds; at one seed a
    side, the difference's interval over the suites' items (seed variation not in it)."""
    from landscape.measures.forgetting import item_uncertainty

    by_setting: dict = {}
    for c in res["checkpoints"]:
        by_setting.setdefault(c.get("setting") or c["label"], []).append(c)
    comps = []
    for sam, adam, kind in spec.comparisons:
        if sam not in by_setting or adam not in by_setting:
            continue
        sides = (by_setting[sam], by_setting[adam])
        fg, lam, em = ([_values(x, get) for x in sides] for get in (
            lambda r: r["forgetting"]["average"]["delta"], lambda r: r["flatness"].get("lambda_max"),
            lambda r: r.get("task_exact_match")))
        one = [x[0]["forgetting"] for x in sides if len(x) == 1]  # one seed each: the items' interval
        items = (item_uncertainty(one[0]["suites"], one[0]["categories"], other=one[1]["suites"])
                 if len(one) == 2 and one[0].get("categories") else None)
        comps.append({"comparison": kind, "sam": sam, "adamw": adam, "n_seeds": [len(x) for x in sides],
                      "forgetting_difference_items": items,
                      "lambda_max": [float(np.mean(v)) if v else None for v in lam],
                      "lambda_max_difference": mean_difference(*lam) if all(lam) else None,
                      "forgetting": [float(np.mean(v)) for v in fg], "forgetting_difference": mean_difference(*fg),
                      "task_exact_match": [float(np.mean(v)) if v else None for v in em],
                      "task_exact_match_difference": mean_difference(*em) if all(em) else None})
    return comps


def across_tasks(first: dict, second: dict) -> dict:
    """Whether two studies of one base (two fine-tuning tasks) agree: each metric's Spearman ρ with
    forgetting on both (and whether its sign holds), the rank correlation of the two rankings, and the
    matched comparisons both tasks make (final checkpoints and trajectories), side by side."""
    from scipy import stats

    rho = [{r["metric"]: r for r in s["ranking"]} for s in (first, second)]
    rows = []
    for k in (k for k in rho[0] if k in rho[1]):
        a, b = rho[0][k]["spearman"], rho[1][k]["spearman"]
        rows.append({"metric": k, "spearman": [a, b], "ci": [rho[0][k].get("ci"), rho[1][k].get("ci")],
                     "n": [rho[0][k]["n"], rho[1][k]["n"]],
                     "same_sign": None if a is None or b is None else bool(np.sign(a) == np.sign(b))})
    both = [r["spearman"] for r in rows if r["same_sign"] is not None]
    agree = float(stats.spearmanr(*zip(*both)).statistic) if len(both) >= 3 else None

    def pairs(s: dict, key: str) -> dict:
        return {f"{c['a']} vs {c['b']}": c for c in ((s.get(key) or {}).get("pairs") or [])}

    matched = {}
    for key in ("tradeoff", "trajectories"):
        a, b = pairs(first, key), pairs(second, key)
        matched[key] = [{"pair": p, "lines": [a[p]["line"], b[p]["line"]],
                         "mean_difference": [a[p]["mean_difference"], b[p]["mean_difference"]],
                         "ci": [a[p].get("ci"), b[p].get("ci")]} for p in a if p in b]
    return {"tasks": [first["task"], second["task"]], "metrics": rows, "ranking_agreement": agree,
            "matched": matched}
