"""Flatness against forgetting over many checkpoints: statistics, the manifest, the batch run.

Statistics (:func:`correlation`): Pearson r, Spearman ρ and Kendall τ-b with scipy's two-sided
p-values, n, and percentile-bootstrap 95% intervals (pairs resampled with replacement, seeded;
resamples where a side is constant are dropped and counted). With n < 3 or a constant side the
coefficients are ``None`` and ``reason`` says why. Metrics are ranked by |Spearman ρ| against the
average forgetting: rank correlation is what "flatter ⇒ forgets less" claims, and it does not
assume a linear scale across metrics whose units differ by orders of magnitude.

The manifest (YAML) names the base, the tuned checkpoints with their labels, the flatness metrics
and the data they are measured on, and the suites that measure forgetting::

    base: runs/demo/base
    suites: [../../data/suites]           # optional; default the embedded suites
    flatness:
      data: ../../data/tasks/reverse/eval.jsonl
      batch_size: 8
      num_batches: 4
      metrics: [lambda_max, trace, eps, sam, avg, surface_curvature]
      top_k: 3
      surface: {x: "-1:1:11", y: "-1:1:11"}   # optional; needed by surface_* metrics; also
                                              # directions: auto|held|regenerated, points_per_pass: K
    checkpoints:
      - {path: ft/adamw-lr1e-3, label: adamw lr 1e-3, optimizer: adamw, lr: 1e-3, epochs: 1, dataset: reverse}
      - {path: ft/sam-rho0.05, label: sam ρ 0.05, optimizer: sam, rho: 0.05, lr: 1e-3, epochs: 1}

Relative paths are relative to the manifest's directory. Every measurement goes through the
results store (one row per checkpoint fingerprint, kind, config), so a killed batch resumes where
it stopped and a re-run recomputes nothing.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import numpy as np

import landscape
from landscape.errors import UserError

SHARPNESS_KEYS = {"lambda_max": "lambda_max", "lambda_min": "lambda_min", "trace": "hessian_trace",
                  "eps": "eps_sharpness", "eps_subspace": "eps_subspace_sharpness", "sam": "sam_sharpness",
                  "asam": "asam_sharpness", "avg": "avg_sharpness"}
SURFACE_KEYS = ("surface_curvature", "average_gradient", "mean_absolute_gradient", "center_curvature",
                "max_increase")
ALL_METRICS = tuple(SHARPNESS_KEYS) + SURFACE_KEYS
DEFAULT_METRICS = ("lambda_max", "trace", "eps", "sam", "avg", "surface_curvature")
LABEL_KEYS = ("optimizer", "rho", "lr", "epochs", "steps", "dataset")


# --------------------------------------------------------------------------------------------
# Statistics

def _kendall_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall τ-b for each row of (B, n) arrays (vectorised over the rows)."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    num = (sx * sy).sum(axis=(1, 2))
    den = np.sqrt((sx != 0).sum(axis=(1, 2)) * (sy != 0).sum(axis=(1, 2)).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=1) / den, np.nan)


def correlation(x, y, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Pearson, Spearman and Kendall (τ-b) of paired samples, with p-values and bootstrap CIs."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(len(x))
    out: dict = {"n": n}
    names = ("pearson", "spearman", "kendall")
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        out["reason"] = "fewer than 3 finite pairs" if n < 3 else "one side is constant"
        for k in names:
            out[k] = {"r": None, "p": None, "ci": [None, None]}
        return out
    point = {"pearson": stats.pearsonr(x, y), "spearman": stats.spearmanr(x, y), "kendall": stats.kendalltau(x, y)}
    g = np.random.default_rng(seed)
    idx = g.integers(0, n, size=(n_boot, n))
    bx, by = x[idx], y[idx]
    boots = {"pearson": _pearson_rows(bx, by),
             "spearman": _pearson_rows(stats.rankdata(bx, axis=1), stats.rankdata(by, axis=1)),
             "kendall": _kendall_b(bx, by)}
    a = (1 - level) / 2
    for k in names:
        r, p = point[k]
        b = boots[k][np.isfinite(boots[k])]
        ci = [float(np.quantile(b, a)), float(np.quantile(b, 1 - a))] if len(b) else [None, None]
        out[k] = {"r": float(r), "p": float(p), "ci": ci, "boot_used": int(len(b))}
    out["n_boot"] = n_boot
    return out


def correlate_table(rows: list[dict], metrics: list[str], targets: dict[str, list], n_boot: int = 2000,
                    seed: int = 0) -> dict:
    """For every metric × forgetting target: :func:`correlation`; plus the ranking on ``average``."""
    out: dict = {}
    for m in metrics:
        xs = [r["flatness"].get(m) for r in rows]
        xs = [np.nan if v is None else v for v in xs]
        out[m] = {t: correlation(xs, [np.nan if v is None else v for v in ys], n_boot=n_boot, seed=seed)
                  for t, ys in targets.items()}
    ranking = []
    for m in metrics:
        c = out[m].get("average", {})
        rho = c.get("spearman", {}).get("r")
        ranking.append({"metric": m, "spearman": rho, "p": c.get("spearman", {}).get("p"),
                        "kendall": c.get("kendall", {}).get("r"), "pearson": c.get("pearson", {}).get("r"),
                        "n": c.get("n")})
    ranking.sort(key=lambda r: -abs(r["spearman"]) if r["spearman"] is not None else 1.0)
    return {"correlations": out, "ranking": ranking}


# --------------------------------------------------------------------------------------------
# Manifest

def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "ckpt"


def load_manifest(path: str | os.PathLike) -> dict:
    """Parse and validate; relative paths resolved against the manifest's directory."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such manifest")
    try:
        m = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(m, dict):
        raise UserError(f"{p}: the manifest must be a mapping with base, checkpoints, flatness")
    unknown = set(m) - {"base", "checkpoints", "flatness", "suites", "categories", "title", "bootstrap", "seed"}
    if unknown:
        raise UserError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}")
    root = p.resolve().parent

    def rel(x, what):
        if not isinstance(x, str) or not x:
            raise UserError(f"{p}: {what} must be a path string")
        q = Path(x)
        return q if q.is_absolute() else root / q

    if "base" not in m:
        raise UserError(f"{p}: missing 'base'")
    base = rel(m["base"], "base")
    cks = m.get("checkpoints")
    if not isinstance(cks, list) or not cks:
        raise UserError(f"{p}: 'checkpoints' must be a non-empty list")
    out_cks, labels = [], set()
    for i, c in enumerate(cks):
        if isinstance(c, str):
            c = {"path": c}
        if not isinstance(c, dict) or "path" not in c:
            raise UserError(f"{p}: checkpoint {i + 1} needs a 'path'")
        bad = set(c) - {"path", "label", *LABEL_KEYS}
        if bad:
            raise UserError(f"{p}: checkpoint {i + 1}: unknown key(s) {', '.join(sorted(bad))}")
        path = rel(c["path"], f"checkpoint {i + 1} path")
        if not path.exists():
            raise UserError(f"{p}: checkpoint {i + 1}: {path} does not exist")
        label = str(c.get("label") or Path(c["path"]).name)
        if label in labels:
            raise UserError(f"{p}: two checkpoints share the label {label!r}")
        labels.add(label)
        out_cks.append({"path": path, "label": label, **{k: c.get(k) for k in LABEL_KEYS}})
    fl = m.get("flatness") or {}
    if not isinstance(fl, dict):
        raise UserError(f"{p}: 'flatness' must be a mapping")
    bad = set(fl) - {"data", "batch_size", "num_batches", "max_length", "metrics", "top_k", "surface", "trace_samples",
                     "eps", "rho", "sigma", "seed"}
    if bad:
        raise UserError(f"{p}: flatness: unknown key(s) {', '.join(sorted(bad))}")
    metrics = fl.get("metrics") or list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [s.strip() for s in metrics.split(",") if s.strip()]
    unknown = [x for x in metrics if x not in ALL_METRICS]
    if unknown:
        raise UserError(f"{p}: unknown metric(s) {', '.join(map(str, unknown))}; choose from {', '.join(ALL_METRICS)}")
    surf = fl.get("surface")
    if any(x in SURFACE_KEYS for x in metrics) and not surf:
        surf = {"x": "-1:1:11"}
    if surf is not None:
        from landscape.surface import DIRECTION_MODES, parse_grid

        if not isinstance(surf, dict) or "x" not in surf or set(surf) - {"x", "y", "directions", "points_per_pass"}:
            raise UserError(f"{p}: flatness.surface must be {{x: MIN:MAX:N[, y: MIN:MAX:N][, directions: "
                            "auto|held|regenerated][, points_per_pass: K]}}")
        if surf.get("directions", "auto") not in DIRECTION_MODES:
            raise UserError(f"{p}: flatness.surface.directions must be auto, held or regenerated")
        ppp = surf.get("points_per_pass", 1)
        if isinstance(ppp, bool) or not isinstance(ppp, int) or not 1 <= ppp <= 4096:
            raise UserError(f"{p}: flatness.surface.points_per_pass must be an integer from 1 to 4096")
        try:
            for ax in ("x", "y"):
                if surf.get(ax):
                    parse_grid(str(surf[ax]), ax)
        except UserError as e:
            raise UserError(f"{p}: flatness.surface grid: {e}") from None
    suites = m.get("suites")
    if suites is not None:
        suites = [rel(s, "suite") for s in (suites if isinstance(suites, list) else [suites])]
    flat = {"data": rel(fl["data"], "flatness.data") if fl.get("data") else None,
            "batch_size": int(fl.get("batch_size", 8)), "num_batches": fl.get("num_batches", 4),
            "max_length": fl.get("max_length"), "metrics": list(metrics), "top_k": int(fl.get("top_k", 3)),
            "surface": surf, "trace_samples": int(fl.get("trace_samples", 20)), "eps": float(fl.get("eps", 1e-3)),
            "rho": float(fl.get("rho", 0.05)), "sigma": float(fl.get("sigma", 0.01)), "seed": int(fl.get("seed", 0))}
    return {"path": str(p), "title": str(m.get("title") or f"flatness vs forgetting: {p.name}"), "base": base,
            "checkpoints": out_cks, "flatness": flat, "suites": suites,
            "categories": rel(m["categories"], "categories") if m.get("categories") else None,
            "bootstrap": int(m.get("bootstrap", 2000)), "seed": int(m.get("seed", 0))}


# --------------------------------------------------------------------------------------------
# The batch

def measure_flatness(ck, fl: dict, store, surface_dir: Path, label: str, progress: bool = False) -> dict:
    """Sharpness metrics and surface metrics of one loaded checkpoint, through the store."""
    from landscape import data, sharpness, surface as S
    from landscape.demo import default_eval_data

    bs = data.batches_for(ck, fl["data"] or default_eval_data(), batch_size=fl["batch_size"],
                          max_length=fl["max_length"], num_batches=fl["num_batches"]).to(ck.device)
    out: dict = {}
    names = [m for m in fl["metrics"] if m in SHARPNESS_KEYS]
    if "lambda_max" not in names and fl["top_k"] > 1:
        names.append("lambda_max")
    if names:
        cfg = {"metrics": sorted(names), "top_k": fl["top_k"], "trace_samples": fl["trace_samples"],
               "eps": fl["eps"], "rho": fl["rho"], "sigma": fl["sigma"], "seed": fl["seed"],
               "data": bs.fingerprint, "version": landscape.__version__}
        r = store.cached(ck.fingerprint, "sharpness", cfg, lambda: sharpness.measure(
            ck.model, bs, metrics=names, top_k=fl["top_k"], trace_samples=fl["trace_samples"], eps=fl["eps"],
            rho=fl["rho"], sigma=fl["sigma"], seed=fl["seed"], progress=progress))
        out["loss"] = r["loss"]
        for n in names:
            out[n] = r["metrics"].get(SHARPNESS_KEYS[n])
        out["eigenvalues"] = r["metrics"].get("eigenvalues")
        out["cost"] = r["cost"]
    if fl["surface"]:
        surf = fl["surface"]
        x = S.parse_grid(str(surf["x"]), "x")
        y = S.parse_grid(str(surf["y"]), "y") if surf.get("y") else None
        h5 = surface_dir / f"{_slug(label)}.h5"
        cfg = {"x": str(surf["x"]), "y": str(surf.get("y")), "seed": fl["seed"], "data": bs.fingerprint,
               "version": landscape.__version__}
        kw = {"directions": surf.get("directions", "auto"), "points_per_pass": surf.get("points_per_pass", 1)}
        if kw["points_per_pass"] != 1:  # other float rounding: another stored result
            cfg["points_per_pass"] = kw["points_per_pass"]
        if ck.device.type != "cpu" and kw["directions"] != "held":  # may draw on the device: other numbers
            cfg["directions"] = kw["directions"]

        def compute():
            S.surface(ck.model, bs, h5, x, y, seed=fl["seed"], progress=progress, **kw,
                      meta={"checkpoint": str(ck.path), "label": label, "fingerprint": ck.fingerprint})
            return S.surface_metrics(h5)

        # the h5 is the report's figure: a stored row counts only while its file is there
        sm = store.get(ck.fingerprint, "surface", cfg) if h5.is_file() else None
        if sm is None:
            h5.unlink(missing_ok=True)  # ours, in our surfaces folder; stale if the store has no row
            t = time.perf_counter()
            sm = compute()
            store.put(ck.fingerprint, "surface", cfg, sm, time.perf_counter() - t)
        for k in SURFACE_KEYS:
            out[k] = sm.get(k)
        out["surface_file"] = str(h5)
    return out


def run_manifest(manifest: str | os.PathLike | dict, out_html: str | os.PathLike, store_path=None,
                 device: str = "auto", dtype: str = "float32", progress: bool = False, write: bool = True) -> dict:
    """Measure flatness and forgetting of every checkpoint, correlate, write the report (+ .json)."""
    import json

    from landscape import checkpoint, forgetting as FG
    from landscape.store import Store

    m = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    out_html = Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out_html}: the report is an .html file")
    for c in [{"path": m["base"]}, *m["checkpoints"]]:
        checkpoint.inspect_checkpoint(c["path"])
    suites = FG.load_suites(m["suites"], m["categories"])
    store = Store(store_path or out_html.with_name(out_html.stem + ".sqlite"))
    surface_dir = out_html.with_name(out_html.stem + "_surfaces")
    surface_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    base_ck = checkpoint.load_checkpoint(m["base"], device=device, dtype=dtype)
    base_scores = FG.evaluate_checkpoint(base_ck, suites, store)
    base_fp = base_ck.fingerprint
    base_flat = measure_flatness(base_ck, m["flatness"], store, surface_dir, "base", progress)
    del base_ck
    rows = []
    for c in tqdm(m["checkpoints"], desc="checkpoints", disable=not progress):
        ck = checkpoint.load_checkpoint(c["path"], device=device, dtype=dtype)
        scores = FG.evaluate_checkpoint(ck, suites, store)
        fg = FG.compare(base_scores, scores, suites)
        flat = measure_flatness(ck, m["flatness"], store, surface_dir, c["label"], progress)
        rows.append({**{k: c[k] for k in ("label", *LABEL_KEYS)}, "path": str(c["path"]),
                     "fingerprint": ck.fingerprint, "flatness": flat, "forgetting": fg})
        del ck
    targets = {"average": [r["forgetting"]["average"]["delta"] if r["forgetting"]["average"] else None for r in rows]}
    cats = sorted({c for r in rows for c in r["forgetting"]["categories"]})
    for c in cats:
        targets[f"category:{c}"] = [r["forgetting"]["categories"].get(c, {}).get("delta") for r in rows]
    stats = correlate_table(rows, m["flatness"]["metrics"], targets, n_boot=m["bootstrap"], seed=m["seed"])
    result = {"title": m["title"], "manifest": m["path"], "base": str(m["base"]), "base_fingerprint": base_fp,
              "base_flatness": base_flat, "base_scores": base_scores, "metrics": m["flatness"]["metrics"],
              "targets": list(targets), "checkpoints": rows, **stats, "flatness_config": {
                  k: (str(v) if isinstance(v, Path) else v) for k, v in m["flatness"].items()},
              "seconds": round(time.perf_counter() - t0, 2), "version": landscape.__version__,
              "store": str(store.path), "report": str(out_html)}
    from landscape import distributed as dist

    if write and dist.is_main():  # under torchrun every rank took part; rank 0 writes
        from landscape.report import correlation_report

        correlation_report(result, out_html)
        tmp = out_html.with_name(f".{out_html.stem}.json.tmp")
        tmp.write_text(json.dumps(result, indent=1, default=_json_default))
        os.replace(tmp, out_html.with_suffix(".json"))
    return result


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(type(o).__name__)
