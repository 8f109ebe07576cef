"""The batch run behind `landscape correlate`: every checkpoint of a manifest measured, correlated, reported.

Every measurement goes through the results store, keyed by (checkpoint fingerprint, kind, the
config's :meth:`~landscape.foundation.configs.Config.numbers` + data fingerprint + library
version), so a killed batch resumes where it stopped and a re-run recomputes nothing.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import landscape
from landscape.foundation import params as P
from landscape.foundation.configs import LoadConfig
from landscape.foundation.errors import UserError
from landscape.study.correlate import correlate_table
from landscape.study.manifest import COVARIATE_LABELS, LABEL_KEYS, Manifest, load_manifest


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "ckpt"


def _surface_key(m: Manifest, device_type: str, data_fp: str) -> dict:
    """What a stored surface depends on: the config's numbers, and the switches that change its
    bytes (several points per pass; directions drawn on a GPU)."""
    cfg = m.surface
    key = {**cfg.numbers(), "data": data_fp, "version": landscape.__version__}
    if cfg.points_per_pass != 1:  # other float rounding: another stored result
        key["points_per_pass"] = cfg.points_per_pass
    if device_type != "cpu" and cfg.directions != "held":  # may draw on the device: other numbers
        key["directions"] = cfg.directions
    return key


def measure_flatness(ck, m: Manifest, store, surface_dir: Path, label: str, progress: bool = False) -> dict:
    """Sharpness metrics and surface metrics of one loaded checkpoint, through the store."""
    from landscape.foundation import data
    from landscape.measures import sharpness

    bs = data.batches_for(ck, m.data)
    out: dict = {}
    if m.sharpness is not None:
        key = {**m.sharpness.numbers(), "data": bs.fingerprint, "version": landscape.__version__}
        r = store.cached(ck.fingerprint, "sharpness", key,
                         lambda: sharpness.measure(ck.model, bs, m.sharpness, progress=progress))
        out["loss"] = r["loss"]
        for n in m.sharpness.metrics:
            out[n] = r["metrics"].get(sharpness.RESULT_KEYS[n])
        out["eigenvalues"] = r["metrics"].get("eigenvalues")
        out["cost"] = r["cost"]
    else:  # no sharpness asked: the task loss alone (one no-grad pass), for the trade-off and covariates
        from landscape.foundation.loss import evaluate

        key = {"data": bs.fingerprint, "version": landscape.__version__}
        out["loss"] = store.cached(ck.fingerprint, "loss", key, lambda: {"loss": evaluate(ck.model, bs).loss})["loss"]
    if m.surface is not None:
        out.update(_surface_metrics(ck, m, bs, store, surface_dir / f"{_slug(label)}.h5", label, progress))
    return out


def _surface_metrics(ck, m: Manifest, bs, store, h5: Path, label: str, progress: bool) -> dict:
    from landscape.foundation.configs import SURFACE_METRICS
    from landscape.measures import surface as S

    key = _surface_key(m, ck.device.type, bs.fingerprint)
    # the h5 is the report's figure: a stored row counts only while its file is there
    sm = store.get(ck.fingerprint, "surface", key) if h5.is_file() else None
    if sm is None:
        h5.unlink(missing_ok=True)  # ours, in our surfaces folder; stale if the store has no row
        t = time.perf_counter()
        S.surface(ck.model, bs, h5, m.surface, progress=progress,
                  meta={"checkpoint": str(ck.path), "label": label, "fingerprint": ck.fingerprint})
        sm = S.surface_metrics(h5)
        store.put(ck.fingerprint, "surface", key, sm, time.perf_counter() - t)
    return {**{k: sm.get(k) for k in SURFACE_METRICS}, "surface_file": str(h5)}


def predictor_session(base_ck, m: Manifest):
    """The base model on the predictors' (general) data, or None when the manifest asks for none."""
    if m.predictors is None:
        return None
    from landscape.foundation import data
    from landscape.measures.predictors import Session, kl_batches

    return Session(base_ck.model, data.batches_for(base_ck, m.predict_data), m.predictors,
                   kl_batches(base_ck, m.predictors, m.predict_data))


def measure_predictors(ck, session, m: Manifest, store, base_fp: str, progress: bool = False) -> dict:
    """The forgetting predictors of the loaded fine-tune ``ck`` against the session's base, through the
    store. ``ck`` is a one-item list the checkpoint is popped from once Δw is formed, so that its
    weights are freed before the measurement (at 1.5B they are 7 GB of a 24 GB machine)."""
    key = {**m.predictors.numbers(), "data": session.batches.fingerprint, "base": base_fp,
           "kl_data": session.kl_batches.fingerprint if session.kl_batches is not None else None,
           "version": landscape.__version__}
    P.release_memory()  # the flatness graphs' freed pages, before the predictors' own
    fp = ck[0].fingerprint
    hit = store.get(fp, "predictors", key)
    if hit is not None:
        return {**hit, "cached": True}
    t0 = time.perf_counter()
    delta = session.delta(dict(ck.pop().model.named_parameters()))
    P.release_memory()
    result = session.measure(delta=delta, progress=progress)
    store.put(fp, "predictors", key, result, time.perf_counter() - t0)
    return {**result, "cached": False}


def _covariates(rows: list[dict], names) -> dict:
    """One value per row for each covariate: a metric, ``task_loss`` or a numeric label."""
    out = {}
    for c in names:
        vals = [r.get(c) if c in COVARIATE_LABELS else r["flatness"].get("loss" if c == "task_loss" else c)
                for r in rows]
        out[c] = [float("nan") if v is None else float(v) for v in vals]
    return out


def _targets(rows: list[dict]) -> dict:
    """Forgetting targets, one value per checkpoint: the average (the mean of the category means: Li et
    al. 2024), the plain mean over the suites (Biderman et al. 2024) where the categories are unequal,
    and each category's."""
    targets = {"average": [r["forgetting"]["average"]["delta"] if r["forgetting"]["average"] else None for r in rows]}
    means = [(r["forgetting"].get("suite_mean") or {}).get("delta") for r in rows]
    if any(v is not None for v in means) and means != targets["average"]:
        targets["suite_mean"] = means
    for c in sorted({c for r in rows for c in r["forgetting"]["categories"]}):
        targets[f"category:{c}"] = [r["forgetting"]["categories"].get(c, {}).get("delta") for r in rows]
    return targets


def run_manifest(manifest: str | os.PathLike | Manifest, out_html: str | os.PathLike, store_path=None,
                 load: LoadConfig | None = None, progress: bool = False, write: bool = True) -> dict:
    """Measure flatness and forgetting of every checkpoint, correlate, write the report (+ .json)."""
    from landscape.foundation.progress import tqdm

    from landscape.foundation import checkpoint
    from landscape.foundation.store import Store
    from landscape.measures import forgetting as FG

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    load, out_html = load or LoadConfig(), Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{out_html}: the report is an .html file")
    for c in [{"path": m.base}, *m.checkpoints]:
        checkpoint.inspect_checkpoint(c["path"])
    suites = FG.load_suites(m.suites, m.categories)
    store = Store(store_path or out_html.with_name(out_html.stem + ".sqlite"))
    surface_dir = out_html.with_name(out_html.stem + "_surfaces")
    surface_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base_ck = checkpoint.load_checkpoint(m.base, load)
    base_scores = FG.evaluate_checkpoint(base_ck, suites, store)
    base_fp = base_ck.fingerprint
    base_flat = measure_flatness(base_ck, m, store, surface_dir, "base", progress)
    session = predictor_session(base_ck, m)  # keeps the base model while the fine-tunes are measured
    del base_ck
    info = m.metric_info()
    rows = []
    for c in tqdm(m.checkpoints, desc="checkpoints", disable=not progress):
        held = [checkpoint.load_checkpoint(c["path"], load)]  # the predictors drop it once Δw is formed
        fp = held[0].fingerprint
        fg = FG.compare(base_scores, FG.evaluate_checkpoint(held[0], suites, store), suites)
        flat = measure_flatness(held[0], m, store, surface_dir, c["label"], progress)
        pred = measure_predictors(held, session, m, store, base_fp, progress) if session else None
        if pred:
            flat.update({k: pred["metrics"].get(k) for k in m.metrics if info[k]["kind"] == "predictor"})
        rows.append({**{k: c[k] for k in ("label", *LABEL_KEYS)}, "path": str(c["path"]),
                     "fingerprint": fp, "flatness": flat, "forgetting": fg, "predictors": pred})
        del held
        P.release_memory()
    lam = next((r["predictors"].get("lambda_max_run") for r in rows if r["predictors"]), None)
    del session
    targets = _targets(rows)
    # seed repeats of one setting (label ``setting``) are resampled together, not as independent checkpoints
    groups = [r.get("setting") or r["label"] for r in rows]
    stats = correlate_table(rows, m.metrics, targets, n_boot=m.bootstrap, seed=m.seed,
                            covariates=_covariates(rows, m.covariates), groups=groups)
    clusters = len(set(groups))
    stats["bootstrap_over"] = "checkpoints" if clusters == len(rows) else f"settings ({clusters} clusters)"
    result = {"title": m.title, "manifest": m.path, "base": str(m.base), "base_fingerprint": base_fp,
              "base_flatness": base_flat, "base_scores": base_scores, "metrics": m.metrics, "metric_info": info,
              "lambda_max_base_general": lam,
              "targets": list(targets), "checkpoints": rows, **stats, "flatness_config": m.flatness_config,
              "tradeoff": manifest_tradeoff(rows, m.bootstrap, m.seed),
              "seconds": round(time.perf_counter() - t0, 2), "version": landscape.__version__,
              "store": str(store.path), "report": str(out_html)}
    if write:
        _write(result, out_html)
    return result


def manifest_tradeoff(rows: list[dict], n_boot: int, seed: int) -> dict:
    """Forgetting at matched learning (minus the task loss on ``flatness.data``: higher = learned more)
    between checkpoint families (label ``family``, else ``optimizer``): every family against AdamW
    (or the first family), LoRA families also against ``adamw-lora``."""
    from landscape.study.tradeoff import tradeoff

    pts = [{"label": r["label"], "family": str(r.get("family") or r.get("optimizer") or "all"), "seed": r.get("seed"),
            "setting": r.get("setting"), "task": -r["flatness"]["loss"], "forgetting": r["forgetting"]["average"]["delta"]}
           for r in rows if r["flatness"].get("loss") is not None and r["forgetting"].get("average")]
    fams = sorted({p["family"] for p in pts})
    if not fams:
        return {"task": "-task_loss", "families": {}, "pairs": []}
    ref = "adamw" if "adamw" in fams else fams[0]
    pairs = [(f, ref) for f in fams if f != ref]
    pairs += [(f, "adamw-lora") for f in fams if f.endswith("-lora") and f != "adamw-lora" and "adamw-lora" in fams]
    return tradeoff(pts, pairs, task_name="-task_loss", n_boot=n_boot, seed=seed)


def _write(result: dict, out_html: Path) -> None:
    """The HTML report and its JSON beside it (rank 0 only under torchrun), both atomically."""
    from landscape.foundation import distributed as dist
    from landscape.foundation.io import write_json
    from landscape.study.report import correlation_report

    if dist.is_main():
        correlation_report(result, out_html)
        write_json(out_html.with_suffix(".json"), result)
