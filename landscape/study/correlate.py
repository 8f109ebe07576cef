"""Statistics of flatness against forgetting over many checkpoints (no models, no files here).

:func:`correlation`: Pearson r, Spearman ρ and Kendall τ-b with scipy's two-sided
p-values, n, and percentile-bootstrap 95% intervals (pairs resampled with replacement, seeded — or,
given groups such as the setting each seed repeats, whole groups: :func:`resamples`; resamples where
a side is constant are dropped and counted). With n < 3 or a constant side the
coefficients are ``None`` and ``reason`` says why. Metrics are ranked by |Spearman ρ| against the
average forgetting and against each category's: rank correlation is what "flatter ⇒ forgets less"
claims, and it does not assume a linear scale across metrics whose units differ by orders of magnitude.

:func:`partial_correlation`: Pearson and Spearman correlation of x and y controlling for covariates
Z (e.g. ‖Δw‖, the final task loss, steps): the correlation of the residuals of x and of y after a
least-squares regression on [1, Z] (Spearman: on the ranks of x, y and every column of Z), its
p-value from Student's t with n − 2 − k degrees of freedom, and a bootstrap interval over resampled
checkpoints. A metric that only tracks a covariate has a partial correlation near 0.

The manifest and the batch run that feed these statistics live in :mod:`landscape.study.manifest` and
:mod:`landscape.study.runner`.
"""

from __future__ import annotations

import functools

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


def resamples(n: int, groups, n_boot: int, g) -> list[np.ndarray]:
    """Bootstrap index arrays over n rows, as chunks of shape (resamples, rows). Without ``groups``
    (or when every group has one row): rows drawn with replacement, one chunk. With ``groups`` (a
    label per row, e.g. the setting a seed repeats): whole groups drawn with replacement, every row of
    a drawn group taken (a cluster bootstrap: seed repeats of one setting are not independent
    checkpoints), chunked by the resample's size so each chunk stays one array."""
    if groups is None or len(set(groups)) == n:
        return [g.integers(0, n, size=(n_boot, n))]
    labels = list(dict.fromkeys(groups))
    members = [np.flatnonzero(np.asarray([x == lab for x in groups])) for lab in labels]
    drawn = g.integers(0, len(labels), size=(n_boot, len(labels)))
    rows = [np.concatenate([members[k] for k in d]) for d in drawn]
    by_size: dict = {}
    for r in rows:
        by_size.setdefault(len(r), []).append(r)
    return [np.stack(v) for _, v in sorted(by_size.items())]


def _kept(groups, ok) -> list | None:
    """The group labels of the rows kept (``ok``), or None without groups."""
    return None if groups is None else [lab for lab, keep in zip(groups, ok) if keep]


def _interval(boot: np.ndarray, level: float) -> dict:
    """The percentile interval of the finite bootstrap values, and how many there were."""
    b = boot[np.isfinite(boot)]
    a = (1 - level) / 2
    ci = [float(np.quantile(b, a)), float(np.quantile(b, 1 - a))] if len(b) else [None, None]
    return {"ci": ci, "boot_used": int(len(b))}


EXACT_N = 10  # up to n! = 3,628,800 pairings: p-values from the exact permutation distribution
MIN_BOOTSTRAP_N = 6  # below, a pair bootstrap has at most C(2n−1, n) = 126 distinct resamples: no interval
SMALL_N = 10


@functools.lru_cache(maxsize=2)
def permutations(n: int) -> np.ndarray:
    """All n! permutations of range(n), as an (n!, n) int8 array (built by insertion, no Python tuples)."""
    p = np.zeros((1, 0), dtype=np.int8)
    for k in range(1, n + 1):
        m = p.shape[0]
        out = np.empty((m * k, k), dtype=np.int8)
        for pos in range(k):
            block = out[pos * m:(pos + 1) * m]
            block[:, :pos], block[:, pos], block[:, pos + 1:] = p[:, :pos], k - 1, p[:, pos:]
        p = out
    p.flags.writeable = False
    return p


def _share_at_least(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 18) -> float:
    """The share of the n! pairings of b with a whose |Pearson r| is at least the observed one."""
    ac, bc = a - a.mean(), b - b.mean()
    den = np.sqrt((ac ** 2).sum() * (bc ** 2).sum())
    obs = abs(float(ac @ bc)) * (1 - 1e-12)  # a relative allowance for rounding: ties with the observed count
    perms = permutations(len(a))
    hits = sum(int((np.abs(bc[perms[i:i + chunk]] @ ac) >= obs).sum()) for i in range(0, len(perms), chunk))
    return hits / len(perms)


@functools.lru_cache(maxsize=2)
def _spearman_null(n: int) -> np.ndarray:
    """Sorted |Σ (i − m)(π(i) − m)| over all n! permutations π: Spearman's null without ties."""
    c = np.arange(n, dtype=float) - (n - 1) / 2
    perms = permutations(n)
    return np.sort(np.concatenate([np.abs(c[perms[i:i + (1 << 18)]] @ c) for i in range(0, len(perms), 1 << 18)]))


def _kendall_exact(x: np.ndarray, y: np.ndarray, chunk: int = 1 << 16) -> float:
    from scipy import stats

    if len(np.unique(x)) == len(x) and len(np.unique(y)) == len(y):
        return float(stats.kendalltau(x, y, method="exact").pvalue)  # no ties: scipy's exact distribution
    iu = np.triu_indices(len(x), 1)
    sx = np.sign(x[:, None] - x[None, :])[iu].astype(np.int16)
    ry = (2 * stats.rankdata(y)).astype(np.int16)  # order-preserving small integers, ties kept
    obs = abs(int(sx @ np.sign(ry[iu[0]] - ry[iu[1]]).astype(np.int16)))
    perms = permutations(len(x))
    hits = 0
    for i in range(0, len(perms), chunk):  # τ-b's denominator is the same for every pairing
        yp = ry[perms[i:i + chunk]]
        hits += int((np.abs(np.sign(yp[:, iu[0]] - yp[:, iu[1]]) @ sx) >= obs).sum())
    return hits / len(perms)


def exact_p(x: np.ndarray, y: np.ndarray) -> dict:
    """Two-sided p-values of Pearson, Spearman (Pearson of midranks) and Kendall τ-b from the exact
    permutation distribution: y's values paired with x's in every one of the n! orders, p the share of
    pairings at least as extreme as the observed one (which counts: p ≥ 1/n!). Exact for n ≤
    :data:`EXACT_N`, ties included (without ties Spearman's and Kendall's null depend on n only)."""
    from scipy import stats

    rx, ry = stats.rankdata(x), stats.rankdata(y)
    n = len(x)
    if len(np.unique(rx)) == n and len(np.unique(ry)) == n:
        obs = abs(float((rx - rx.mean()) @ (ry - ry.mean()))) * (1 - 1e-12)
        null = _spearman_null(n)
        spearman = float(len(null) - np.searchsorted(null, obs, side="left")) / len(null)
    else:
        spearman = _share_at_least(rx, ry)
    return {"pearson": _share_at_least(x, y), "spearman": spearman, "kendall": _kendall_exact(x, y)}


def correlation(x, y, n_boot: int = 2000, seed: int = 0, level: float = 0.95, groups=None) -> dict:
    """Pearson, Spearman and Kendall (τ-b) of paired samples, with p-values and bootstrap CIs
    (over ``groups`` when given: see :func:`resamples`). For n ≤ :data:`EXACT_N` the p-values come from
    the exact permutation distribution (``p_method``; scipy's asymptotic Spearman p is 0 at n = 3 with
    ρ = 1, where the exact one is 1/3); below :data:`MIN_BOOTSTRAP_N` pairs there is no interval
    (``ci_reason``); below :data:`SMALL_N` a ``warning`` says how little n can show."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    groups = _kept(groups, ok)
    n = int(len(x))
    out: dict = {"n": n}
    names = ("pearson", "spearman", "kendall")
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        out["reason"] = "fewer than 3 finite pairs" if n < 3 else "one side is constant"
        for k in names:
            out[k] = {"r": None, "p": None, "ci": [None, None]}
        return out
    point = {"pearson": stats.pearsonr(x, y), "spearman": stats.spearmanr(x, y), "kendall": stats.kendalltau(x, y)}
    exact = exact_p(x, y) if n <= EXACT_N else None
    out["p_method"] = f"exact permutation ({n}! pairings)" if exact else "asymptotic (scipy)"
    if n < SMALL_N:
        out["warning"] = (f"n = {n}: a correlation this small in n can be large by chance (exact p ≥ 1/{n}! for a "
                          f"perfect one){'; no bootstrap interval' if n < MIN_BOOTSTRAP_N else ', intervals wide'}")
    if n < MIN_BOOTSTRAP_N:
        for k in names:
            r, p = point[k]
            out[k] = {"r": float(r), "p": exact[k], "ci": [None, None]}
        out["ci_reason"] = f"fewer than {MIN_BOOTSTRAP_N} pairs: a bootstrap has too few distinct resamples"
        return out
    boots: dict = {k: [] for k in names}
    for idx in resamples(n, groups, n_boot, np.random.default_rng(seed)):
        bx, by = x[idx], y[idx]
        boots["pearson"].append(_pearson_rows(bx, by))
        boots["spearman"].append(_pearson_rows(stats.rankdata(bx, axis=1), stats.rankdata(by, axis=1)))
        boots["kendall"].append(_kendall_b(bx, by))
    boots = {k: np.concatenate(v) for k, v in boots.items()}
    for k in names:
        r, p = point[k]
        out[k] = {"r": float(r), "p": exact[k] if exact else float(p), **_interval(boots[k], level)}
    out["n_boot"] = n_boot
    if groups is not None:
        out["clusters"] = len(set(groups))
    return out


def _residuals(Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Residuals of each row of Y (B, n) after least squares on [1, Z] (Z: (B, n, k)), batched."""
    Z1 = np.concatenate([np.ones(Z.shape[:2] + (1,)), Z], axis=2)  # (B, n, k+1)
    G = np.einsum("bni,bnj->bij", Z1, Z1)
    rhs = np.einsum("bni,bn->bi", Z1, Y)
    beta = np.einsum("bij,bj->bi", np.linalg.pinv(G), rhs)  # pseudo-inverse: a resample may repeat rows
    return Y - np.einsum("bni,bi->bn", Z1, beta)


def _ranks(a: np.ndarray) -> np.ndarray:
    from scipy import stats

    return stats.rankdata(a, axis=-1)


def partial_correlation(x, y, covariates: dict, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                        groups=None) -> dict:
    """Pearson and Spearman partial correlations of x and y given ``covariates`` (name → values),
    with t-test p-values and percentile-bootstrap intervals (over ``groups`` when given; see the
    module docstring and :func:`resamples`)."""
    from scipy import stats

    names = list(covariates)
    cols = [np.asarray(covariates[c], dtype=float) for c in names]
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    for c in cols:
        ok &= np.isfinite(c)
    x, y = x[ok], y[ok]
    groups = _kept(groups, ok)
    Z = np.stack([c[ok] for c in cols], axis=1) if cols else np.zeros((len(x), 0))
    n, k = len(x), Z.shape[1]
    out: dict = {"n": int(n), "covariates": names}
    reason = None
    if n < k + 4:
        reason = f"{n} complete rows for {k} covariate(s): needs at least {k + 4}"
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        reason = "one side is constant"
    if reason is None:
        ex, ey = _residuals(x[None], Z[None])[0], _residuals(y[None], Z[None])[0]
        scale = max(np.abs(x).max(), 1e-300)
        if np.abs(ex).max() <= 1e-9 * scale:
            reason = "the metric is explained exactly by the covariates (e.g. it is one of them)"
    if reason is not None:
        out["reason"] = reason
        for kind in ("pearson", "spearman"):
            out[kind] = {"r": None, "p": None, "ci": [None, None]}
        return out
    chunks = resamples(n, groups, n_boot, np.random.default_rng(seed))
    df = n - 2 - k
    for kind, tf in (("pearson", lambda v: v), ("spearman", _ranks)):
        xs, ys = tf(x), tf(y)
        Zs = np.stack([tf(Z[:, j]) for j in range(k)], axis=1) if k else Z
        r = float(_pearson_rows(_residuals(xs[None], Zs[None]), _residuals(ys[None], Zs[None]))[0])
        t = r * np.sqrt(df / max(1e-300, 1 - r * r))
        p = float(2 * stats.t.sf(abs(t), df))
        b = np.concatenate([_boot_partial(x[idx], y[idx], Z[idx], kind == "spearman") for idx in chunks])
        out[kind] = {"r": r, "p": p, **_interval(b, level)}
    out["df"] = df
    if groups is not None:
        out["clusters"] = len(set(groups))
    return out


def _boot_partial(bx: np.ndarray, by: np.ndarray, bZ: np.ndarray, ranks: bool) -> np.ndarray:
    """The partial correlation of each resample (rows of bx, by; bZ: (B, n, k)), on ranks if asked."""
    if ranks:
        bx, by = _ranks(bx), _ranks(by)
        bZ = np.stack([_ranks(bZ[:, :, j]) for j in range(bZ.shape[2])], axis=2) if bZ.shape[2] else bZ
    return _pearson_rows(_residuals(bx, bZ), _residuals(by, bZ))


def _values(rows: list[dict], m: str) -> list:
    return [np.nan if (v := r["flatness"].get(m)) is None else v for r in rows]


def _rank(metrics: list[str], table: dict, partial: dict, target: str) -> list[dict]:
    """Metrics ordered by |Spearman ρ| against ``target`` (None last)."""
    ranking = []
    for m in metrics:
        c = table[m].get(target, {})
        sp = c.get("spearman", {})
        row = {"metric": m, "spearman": sp.get("r"), "ci": sp.get("ci"), "p": sp.get("p"),
               "kendall": c.get("kendall", {}).get("r"), "pearson": c.get("pearson", {}).get("r"), "n": c.get("n")}
        pc = partial.get(m, {}).get(target)
        if pc:
            row["partial_spearman"], row["partial_ci"] = pc["spearman"]["r"], pc["spearman"]["ci"]
            row["partial_pearson"] = pc["pearson"]["r"]
        ranking.append(row)
    ranking.sort(key=lambda r: -abs(r["spearman"]) if r["spearman"] is not None else 1.0)
    return ranking


def correlate_table(rows: list[dict], metrics: list[str], targets: dict[str, list], n_boot: int = 2000,
                    seed: int = 0, covariates: dict | None = None, groups=None) -> dict:
    """For every metric × forgetting target: :func:`correlation` and, given ``covariates`` (name →
    one value per row), :func:`partial_correlation`; a ranking per target (``rankings``; ``ranking``
    is the average's). ``groups`` (a label per row) makes every bootstrap a cluster bootstrap."""
    out: dict = {}
    partial: dict = {}
    boot = {"n_boot": n_boot, "seed": seed, "groups": groups}
    for m in metrics:
        xs = _values(rows, m)
        out[m] = {t: correlation(xs, [np.nan if v is None else v for v in ys], **boot) for t, ys in targets.items()}
        if covariates:
            partial[m] = {t: partial_correlation(xs, [np.nan if v is None else v for v in ys], covariates, **boot)
                          for t, ys in targets.items()}
    rankings = {t: _rank(metrics, out, partial, t) for t in targets}
    return {"correlations": out, "partial": partial, "covariates": list(covariates or {}),
            "ranking": rankings.get("average", []), "rankings": rankings}
