"""The learning–forgetting trade-off: forgetting compared *at the same amount learned*.

Equal-step comparisons cannot tell "forgets less" from "moved less" (a SAM run that learns the task
less also forgets less). Biderman et al. (2024, "LoRA Learns Less and Forgets Less") compare
learning–forgetting curves instead; this module does that for any families of fine-tunes
(AdamW, SAM, ASAM, LoRA-AdamW, ...), each point a checkpoint with how much it learned (its task
score, higher = learned more — exact match, or minus the task loss) and how much it forgot.

- **Frontier of a family**: its Pareto-efficient points (no other point of the family learned as much
  or more *and* forgot less), joined by straight lines in task score: f_F(x), the least forgetting
  the family was seen to reach at task level x. Not extrapolated: f_F is defined on
  [min, max] of the frontier's task scores only.
- **Matched comparison of families A and B**: on the overlap of their task ranges, the difference
  d(x) = f_A(x) − f_B(x) at a few levels (the overlap's 10/50/90% points) and its mean over the overlap
  (trapezoid rule on a 101-point grid): positive = A forgets more at the same learning.
- **Uncertainty**: a bootstrap over seeds (the unit that repeats a run): each replicate draws seeds with
  replacement and rebuilds both frontiers from those seeds' points; percentile intervals. With one
  seed the replicates draw points instead, and the result says so (``resampled: "points"``): that
  interval ignores run-to-run variation and is optimistic; with one seed and fewer than three points
  in a family there is no interval (null).

All choices here (Pareto frontier, linear interpolation, the three levels, percentile bootstrap) are
ours, stated because the paper names no procedure for them.
"""

from __future__ import annotations

import numpy as np

LEVELS = (0.1, 0.5, 0.9)


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto-efficient (task, forgetting) points, by increasing task score (forgetting then rises)."""
    pts = sorted({(float(x), float(y)) for x, y in points}, key=lambda p: (-p[0], p[1]))
    out, best = [], np.inf
    for x, y in pts:  # from the most learned down: keep a point when it forgets less than all above it
        if y < best:
            out.append((x, y))
            best = y
    return out[::-1]


def at(front: list[tuple[float, float]], x: float) -> float | None:
    """f(x) on the frontier (linear between its points), None outside its task range."""
    xs = [p[0] for p in front]
    if not front or x < xs[0] - 1e-12 or x > xs[-1] + 1e-12:
        return None
    return float(np.interp(x, xs, [p[1] for p in front]))


def matched(front_a: list, front_b: list) -> dict | None:
    """d(x) = f_A(x) − f_B(x) at the overlap's levels and its mean over the overlap; None without overlap."""
    if not front_a or not front_b:
        return None
    lo, hi = max(front_a[0][0], front_b[0][0]), min(front_a[-1][0], front_b[-1][0])
    if hi < lo:
        return None
    grid = np.linspace(lo, hi, 101) if hi > lo else np.array([lo])
    d = np.array([at(front_a, x) - at(front_b, x) for x in grid])
    mean = float(((d[1:] + d[:-1]) / 2 * np.diff(grid)).sum() / (hi - lo)) if hi > lo else float(d[0])
    levels = [lo + q * (hi - lo) for q in LEVELS]
    return {"overlap": [float(lo), float(hi)], "mean_difference": mean,
            "levels": [{"task": float(x), "forgetting_a": at(front_a, x), "forgetting_b": at(front_b, x),
                        "difference": at(front_a, x) - at(front_b, x)} for x in levels]}


def _replicate(rows: list[dict], a: str, b: str, rng, by_seed: bool) -> tuple[list, list]:
    """Both families' frontiers rebuilt from one bootstrap draw (of seeds, or of points)."""
    fronts = []
    for fam in (a, b):
        mine = [r for r in rows if r["family"] == fam]
        if by_seed:
            seeds = sorted({r["seed"] for r in mine}, key=str)
            pick = rng.choice(len(seeds), size=len(seeds), replace=True)
            mine = [r for i in pick for r in mine if r["seed"] == seeds[i]]
        else:
            mine = [mine[i] for i in rng.choice(len(mine), size=len(mine), replace=True)]
        fronts.append(frontier([(r["task"], r["forgetting"]) for r in mine]))
    return fronts[0], fronts[1]


def _intervals(m: dict, reps: list, level: float) -> None:
    """Percentile intervals of the mean difference (over each replicate's own overlap) and of each
    level's difference (in the replicates whose frontiers both reach that level)."""
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    means, per_level = [], [[] for _ in m["levels"]]
    for fa, fb in reps:
        r = matched(fa, fb)
        if r is None:
            continue
        means.append(r["mean_difference"])
        for k, lv in enumerate(m["levels"]):
            ya, yb = at(fa, lv["task"]), at(fb, lv["task"])
            if ya is not None and yb is not None:
                per_level[k].append(ya - yb)
    m["ci"] = [float(v) for v in np.percentile(means, q)] if len(means) >= 20 else None
    for lv, ds in zip(m["levels"], per_level):
        lv["ci"] = [float(v) for v in np.percentile(ds, q)] if len(ds) >= 20 else None
        lv["ci_replicates"] = len(ds)


def compare(rows: list[dict], a: str, b: str, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict | None:
    """Family ``a`` against ``b``: the matched comparison with bootstrap intervals (see the module)."""
    fa = frontier([(r["task"], r["forgetting"]) for r in rows if r["family"] == a])
    fb = frontier([(r["task"], r["forgetting"]) for r in rows if r["family"] == b])
    m = matched(fa, fb)
    if m is None:
        return None
    seeds = {f: {r.get("seed") for r in rows if r["family"] == f} for f in (a, b)}
    by_seed = min(len(seeds[a]), len(seeds[b])) >= 2
    n_points = min(sum(r["family"] == f for r in rows) for f in (a, b))
    how = "seeds" if by_seed else "points" if n_points >= 3 else "none (one seed and fewer than 3 points)"
    if how.startswith("none"):  # a bootstrap of one or two points is no interval at all
        m["ci"] = None
        for lv in m["levels"]:
            lv["ci"], lv["ci_replicates"] = None, 0
    else:
        rng = np.random.default_rng(seed)
        _intervals(m, [_replicate(rows, a, b, rng, by_seed) for _ in range(n_boot)], level)
    m.update({"a": a, "b": b, "resampled": how, "n_boot": n_boot,
              "n_seeds": [len(seeds[a]), len(seeds[b])], "frontier_a": fa, "frontier_b": fb})
    return m


def trajectory_points(doc: dict, family: str, seed=None, forgetting: str = "forgetting", label: str = "run") -> list[dict]:
    """Rows for :func:`tradeoff` from a LandscapeCallback trajectory (metrics ``task_loss`` and
    ``forgetting``, or another forgetting key such as ``general_loss_increase``): one point per probe
    after step 0, learned = minus the task loss."""
    return [{"label": f"{label}@{r['step']}", "family": family, "seed": seed, "task": -r["task_loss"],
             "forgetting": r[forgetting], "step": r["step"]}
            for r in doc["records"] if r["step"] > 0 and r.get("task_loss") is not None
            and r.get(forgetting) is not None]


def tradeoff(rows: list[dict], pairs: list[tuple[str, str]], task_name: str = "task", **boot) -> dict:
    """Frontiers of every family in ``rows`` and the matched comparisons of ``pairs`` (a, b)."""
    fams = sorted({r["family"] for r in rows})
    out = {"task": task_name, "families": {f: {"points": [{k: r.get(k) for k in ("label", "seed", "task", "forgetting")}
                                                         for r in rows if r["family"] == f],
                                               "frontier": frontier([(r["task"], r["forgetting"]) for r in rows
                                                                     if r["family"] == f])} for f in fams},
           "pairs": []}
    for a, b in pairs:
        c = compare(rows, a, b, **boot)
        if c is not None:
            c["line"] = summary_line(c, task_name)
            out["pairs"].append(c)
    return out


def summary_line(c: dict, task_name: str) -> str:
    """"SAM vs AdamW at EM 0.62: forgetting 0.10 vs 0.14, difference −0.04 [−0.07, −0.01]"."""
    mid = c["levels"][1]
    ci = c["levels"][1].get("ci")
    ci_txt = f" [{ci[0]:+.3g}, {ci[1]:+.3g}]" if ci else " [no CI]"
    mean_ci = f" [{c['ci'][0]:+.3g}, {c['ci'][1]:+.3g}]" if c.get("ci") else ""
    return (f"{c['a']} vs {c['b']} at {task_name} {mid['task']:.3g}: forgetting {mid['forgetting_a']:.3g} vs "
            f"{mid['forgetting_b']:.3g}, difference {mid['difference']:+.3g}{ci_txt}; mean over "
            f"{task_name} {c['overlap'][0]:.3g}–{c['overlap'][1]:.3g}: {c['mean_difference']:+.3g}{mean_ci} "
            f"(bootstrap over {c['resampled']})")
