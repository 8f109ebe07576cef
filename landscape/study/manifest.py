"""The correlate manifest (YAML): which checkpoints, which flatness, which suites.

    base: runs/demo/base
    suites: [../../data/suites]           # optional; default the embedded suites
    flatness:
      data: ../../data/tasks/reverse/eval.jsonl     # DataConfig keys: data, batch_size, num_batches, max_length
      batch_size: 8
      num_batches: 4
      metrics: [lambda_max, trace, eps, sam, avg, surface_curvature]   # []: the task loss only
      top_k: 3                                      # any SharpnessConfig key: top_k, trace_samples, eps, rho, ...
      surface: {x: "-1:1:11", y: "-1:1:11"}         # any SurfaceConfig key; needed by surface_* metrics
    predictors:                                     # optional: forgetting predictors at the base (general data)
      data: ../../data/eval.jsonl                   # DataConfig keys, and any PredictConfig key: line, lambda_max, ...
      metrics: [kappa_base, quad_pred, bound]       # default: all of PREDICTOR_METRICS
    covariates: [delta_norm, task_loss, steps]      # optional: partial correlations controlling for these
    checkpoints:
      - {path: ft/adamw-lr1e-3, label: adamw lr 1e-3, optimizer: adamw, lr: 1e-3, epochs: 1, dataset: reverse}
      - {path: ft/sam-rho0.05, label: sam ρ 0.05, optimizer: sam, rho: 0.05, lr: 1e-3, epochs: 1}

``flatness`` metrics are measured at the tuned weights on ``flatness.data``; ``predictors`` metrics at
the base (or along Δw, or at the tuned weights: see :data:`~landscape.foundation.configs.PREDICTOR_METRICS`)
on ``predictors.data``. ``covariates`` names metrics, ``task_loss`` (the tuned checkpoint's loss on
``flatness.data``) or the checkpoints' numeric labels (steps, lr, rho, epochs). ``family`` (default: the
``optimizer`` label), ``seed`` and ``setting`` (one configuration repeated over seeds: it enters the
frontier as its mean) group checkpoints for the learning–forgetting trade-off
(:mod:`landscape.study.tradeoff`: forgetting at matched task loss, bootstrap over seeds).

The ``flatness`` keys are the fields of :class:`~landscape.foundation.configs.DataConfig`,
:class:`~landscape.foundation.configs.SharpnessConfig` and (under ``surface``)
:class:`~landscape.foundation.configs.SurfaceConfig`; a batch differs from the CLI only in a few
defaults (:data:`FLATNESS_DEFAULTS`). Relative paths are relative to the manifest's directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from landscape.foundation.configs import (PREDICTOR_METRICS, SHARPNESS_METRICS, SURFACE_METRICS, DataConfig,
                                          PredictConfig, SharpnessConfig, SurfaceConfig)
from landscape.foundation.errors import UserError

ALL_METRICS = SHARPNESS_METRICS + SURFACE_METRICS
DEFAULT_METRICS = ("lambda_max", "trace", "eps", "sam", "avg", "surface_curvature")
LABEL_KEYS = ("optimizer", "rho", "lr", "epochs", "steps", "dataset", "lora", "family", "seed", "setting")
TOP_KEYS = ("base", "checkpoints", "flatness", "predictors", "covariates", "suites", "categories", "title",
            "bootstrap", "seed")
COVARIATE_LABELS = ("steps", "lr", "rho", "epochs", "lora")  # numeric checkpoint labels usable as covariates
# Batches over many checkpoints default to a little more of the spectrum and fewer trace samples.
MIN_CHECKPOINTS = 2  # one checkpoint correlates with nothing; with 2 every correlation is null with its reason
FLATNESS_DEFAULTS = {"batch_size": 8, "num_batches": 4, "top_k": 3, "trace_samples": 20}
DEFAULT_SURFACE = {"x": "-1:1:11"}


@dataclass
class Manifest:
    path: str
    title: str
    base: Path
    checkpoints: list
    metrics: list
    data: DataConfig
    sharpness: SharpnessConfig | None  # None when no sharpness metric is asked for
    surface: SurfaceConfig | None  # None when no surface metric is asked for
    suites: list | None = None
    categories: Path | None = None
    bootstrap: int = 2000
    seed: int = 0
    predictors: PredictConfig | None = None  # None: no predictors section
    predict_data: DataConfig | None = None
    covariates: tuple = ()

    @property
    def flatness_config(self) -> dict:
        """Every setting of the flatness measurements (for the report's JSON)."""
        return {"metrics": self.metrics, **self.data.as_dict(),
                "sharpness": self.sharpness.as_dict() if self.sharpness else None,
                "surface": self.surface.as_dict() if self.surface else None,
                "predictors": {**self.predict_data.as_dict(), **self.predictors.as_dict()} if self.predictors else None,
                "covariates": list(self.covariates)}

    def metric_info(self) -> dict:
        """Where (base/tuned weights) and on what data each metric is measured, for every output."""
        def label(d: DataConfig | None) -> dict:
            path = d.data if d and d.data else None  # None: the embedded general eval data
            short = "/".join(Path(path).parts[-2:]) if path else "embedded eval.jsonl"
            return {"data": path or "embedded eval data", "data_label": short}

        info = {m: {"where": "tuned", **label(self.data), "kind": "flatness"} for m in self.metrics
                if m not in PREDICTOR_METRICS}
        for m in self.metrics:
            if m in PREDICTOR_METRICS:
                where, what = PREDICTOR_METRICS[m]
                on = DataConfig(data=self.predictors.kl_data) if m.endswith("_task") and self.predictors else \
                    self.predict_data
                info[m] = {"where": where, **label(on), "kind": "predictor", "what": what}
        return info


def _loader():
    """PyYAML's safe loader with YAML 1.2's floats: ``lr: 1e-4`` is 0.0001, not the string '1e-4'
    (YAML 1.1, which PyYAML follows, wants a dot: ``1.0e-4``)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
                                 list("-+0123456789."))
    return Loader


def _read(p: Path) -> dict:
    import yaml

    if not p.is_file():
        raise UserError(f"{p}: no such manifest")
    try:
        m = yaml.load(p.read_text(), Loader=_loader())  # noqa: S506 (a SafeLoader subclass)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(m, dict):
        raise UserError(f"{p}: the manifest must be a mapping with base, checkpoints, flatness")
    unknown = set(m) - set(TOP_KEYS)
    if unknown:
        raise UserError(f"{p}: unknown key(s) {', '.join(sorted(map(repr, unknown)))}")
    if "base" not in m:
        raise UserError(f"{p}: missing 'base'")
    return m


def _resolver(p: Path):
    root = p.resolve().parent

    def rel(x, what: str) -> Path:
        if not isinstance(x, str) or not x:
            raise UserError(f"{p}: {what} must be a path string")
        q = Path(x)
        return q if q.is_absolute() else root / q
    return rel


def _checkpoints(p: Path, cks, rel) -> list[dict]:
    if not isinstance(cks, list) or not cks:
        raise UserError(f"{p}: 'checkpoints' must be a non-empty list")
    if len(cks) < MIN_CHECKPOINTS:
        raise UserError(f"{p}: {len(cks)} checkpoint(s); a correlation over checkpoints needs at least "
                        f"{MIN_CHECKPOINTS} (use `landscape sharpness`, `forgetting` or `predict` for one)")
    out, labels = [], set()
    for i, c in enumerate(cks, 1):
        c = {"path": c} if isinstance(c, str) else c
        if not isinstance(c, dict) or "path" not in c:
            raise UserError(f"{p}: checkpoint {i} needs a 'path'")
        bad = set(c) - {"path", "label", *LABEL_KEYS}
        if bad:
            raise UserError(f"{p}: checkpoint {i}: unknown key(s) {', '.join(sorted(map(repr, bad)))}")
        path = rel(c["path"], f"checkpoint {i} path")
        if not path.exists():
            raise UserError(f"{p}: checkpoint {i}: {path} does not exist")
        label = str(c.get("label") or Path(c["path"]).name)
        if label in labels:
            raise UserError(f"{p}: two checkpoints share the label {label!r}")
        labels.add(label)
        out.append({"path": path, "label": label, **{k: c.get(k) for k in LABEL_KEYS}})
    return out


def _flatness(p: Path, fl, rel) -> tuple:
    """(metrics, DataConfig, SharpnessConfig | None, SurfaceConfig | None) from the flatness section."""
    if not isinstance(fl, dict):
        raise UserError(f"{p}: 'flatness' must be a mapping")
    fl = {**FLATNESS_DEFAULTS, **fl}
    metrics = fl.pop("metrics", None)  # [] : the task loss only (a model too large to measure more beside the base)
    metrics = list(DEFAULT_METRICS) if metrics is None else metrics
    if isinstance(metrics, str):
        metrics = [s.strip() for s in metrics.split(",") if s.strip()]
    if not isinstance(metrics, list):
        raise UserError(f"{p}: flatness.metrics must be a list of metric names")
    unknown = [x for x in metrics if x not in ALL_METRICS]
    if unknown:
        raise UserError(f"{p}: unknown metric(s) {', '.join(map(str, unknown))}; choose from {', '.join(ALL_METRICS)}")
    surf = fl.pop("surface", None)
    unknown = sorted(set(fl) - set(DataConfig.keys()) - set(SharpnessConfig.keys()))
    if unknown:
        known = ["metrics", "surface", *DataConfig.keys(), *(k for k in SharpnessConfig.keys() if k != "metrics")]
        raise UserError(f"{p}: flatness: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    data_keys = {k: fl.pop(k) for k in DataConfig.keys() if k in fl}
    if data_keys.get("data"):
        data_keys["data"] = str(rel(data_keys["data"], "flatness.data"))
    data = DataConfig.from_mapping(data_keys, f"{p}: flatness")
    sharp_names = sorted(m for m in metrics if m in SHARPNESS_METRICS)
    if sharp_names and "lambda_max" not in sharp_names and fl.get("top_k", 1) > 1:
        sharp_names.append("lambda_max")  # the report's spectra need the top eigenvalues
    sharp = SharpnessConfig.from_mapping({**fl, "metrics": sorted(sharp_names) or ["lambda_max"]}, f"{p}: flatness")
    if any(m in SURFACE_METRICS for m in metrics) and not surf:
        surf = dict(DEFAULT_SURFACE)
    surface = None
    if surf is not None:
        if not isinstance(surf, dict) or "x" not in surf:
            raise UserError(f"{p}: flatness.surface must be a mapping with at least x: MIN:MAX:N")
        surface = SurfaceConfig.from_mapping({"seed": sharp.seed, **surf}, f"{p}: flatness.surface")
    return metrics, data, (sharp if sharp_names else None), surface


def _predictors(p: Path, pr, rel) -> tuple:
    """(metrics, DataConfig, PredictConfig) of the predictors section (None: no section)."""
    if pr is None:
        return [], None, None
    if not isinstance(pr, dict):
        raise UserError(f"{p}: 'predictors' must be a mapping (data, metrics, and PredictConfig keys)")
    pr = dict(pr)
    metrics = pr.pop("metrics", None) or [m for m in PREDICTOR_METRICS
                                          if (m != "bound" or pr.get("lambda_max", True))
                                          and (PREDICTOR_METRICS[m][0] != "tuned" or pr.get("at_tuned", True))
                                          and (not m.endswith("_task") or pr.get("kl_data"))]
    if isinstance(metrics, str):
        metrics = [s.strip() for s in metrics.split(",") if s.strip()]
    unknown = [x for x in metrics if x not in PREDICTOR_METRICS]
    if not isinstance(metrics, list) or unknown:
        raise UserError(f"{p}: predictors.metrics: unknown metric(s) {', '.join(map(str, unknown))}; choose from "
                        f"{', '.join(PREDICTOR_METRICS)}")
    unknown = sorted(set(pr) - set(DataConfig.keys()) - set(PredictConfig.keys()))
    if unknown:
        raise UserError(f"{p}: predictors: unknown key(s) {', '.join(map(repr, unknown))}; known: metrics, "
                        f"{', '.join([*DataConfig.keys(), *PredictConfig.keys()])}")
    data_keys = {k: pr.pop(k) for k in DataConfig.keys() if k in pr}
    if data_keys.get("data"):
        data_keys["data"] = str(rel(data_keys["data"], "predictors.data"))
    data = DataConfig.from_mapping(data_keys, f"{p}: predictors")
    if pr.get("kl_data"):
        pr["kl_data"] = str(rel(pr["kl_data"], "predictors.kl_data"))
    cfg = PredictConfig.from_mapping(pr, f"{p}: predictors")
    if "bound" in metrics and not cfg.lambda_max:
        raise UserError(f"{p}: predictors: the metric 'bound' needs lambda_max: true")
    task = [m for m in metrics if m.endswith("_task")]
    if task and not cfg.kl_data:
        raise UserError(f"{p}: predictors: {', '.join(task)} need kl_data (the task's data file)")
    return metrics, data, cfg


def _covariates(p: Path, cov, metrics: list) -> tuple:
    if cov is None:
        return ()
    cov = [cov] if isinstance(cov, str) else cov
    allowed = [*metrics, "task_loss", *COVARIATE_LABELS]
    bad = [c for c in cov if c not in allowed] if isinstance(cov, list) else [cov]
    if bad:
        raise UserError(f"{p}: covariates: unknown {', '.join(map(str, bad))}; choose from {', '.join(allowed)}")
    return tuple(cov)


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Parse and validate; relative paths resolved against the manifest's directory."""
    p = Path(path)
    m = _read(p)
    rel = _resolver(p)
    metrics, data, sharp, surface = _flatness(p, m.get("flatness") or {}, rel)
    pmetrics, pdata, pcfg = _predictors(p, m.get("predictors"), rel)
    metrics = metrics + [x for x in pmetrics if x not in metrics]
    suites = m.get("suites")
    if suites is not None:
        suites = [rel(s, "suite") for s in (suites if isinstance(suites, list) else [suites])]
    return Manifest(path=str(p), title=str(m.get("title") or f"flatness vs forgetting: {p.name}"),
                    base=rel(m["base"], "base"), checkpoints=_checkpoints(p, m.get("checkpoints"), rel),
                    metrics=metrics, data=data, sharpness=sharp, surface=surface, suites=suites,
                    categories=rel(m["categories"], "categories") if m.get("categories") else None,
                    bootstrap=int(m.get("bootstrap", 2000)), seed=int(m.get("seed", 0)),
                    predictors=pcfg, predict_data=pdata, covariates=_covariates(p, m.get("covariates"), metrics))
