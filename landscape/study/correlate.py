"""Statistics of flatness against forgetting over many checkpoints (no models, no files here).

:func:`correlation`: Pearson r, Spearman ρ and Kendall τ-b with scipy's two-sided
p-values, n, and percentile-bootstrap 95% intervals (pairs resampled with replacement, seeded;
resamples where a side is constant are dropped and counted). With n < 3 or a constant side the
coefficients are ``None`` and ``reason`` says why. Metrics are ranked by |Spearman ρ| against the
average forgetting: rank correlation is what "flatter ⇒ forgets less" claims, and it does not
assume a linear scale across metrics whose units differ by orders of magnitude.

The manifest and the batch run that feed these statistics live in :mod:`landscape.study.manifest` and
:mod:`landscape.study.runner`.
"""

from __future__ import annotations

import numpy as np


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
