"""Forgetting at matched learning: frontiers, matched differences and their bootstrap over seeds."""

import numpy as np
import pytest

from landscape.study import tradeoff as T


def test_frontier_keeps_the_pareto_points_in_task_order():
    pts = [(0.2, 0.10), (0.5, 0.30), (0.5, 0.20), (0.4, 0.25), (0.9, 0.40), (0.1, 0.15)]
    # (0.5, 0.30) is beaten by (0.5, 0.20); (0.4, 0.25) by (0.5, 0.20); (0.1, 0.15) by (0.2, 0.10)
    assert T.frontier(pts) == [(0.2, 0.10), (0.5, 0.20), (0.9, 0.40)]
    f = T.frontier(pts)
    assert T.at(f, 0.35) == pytest.approx(0.15) and T.at(f, 0.95) is None and T.at(f, 0.1) is None


def test_matched_difference_of_two_linear_families_is_the_closed_form():
    xs = np.linspace(0, 1, 6)
    fa = T.frontier([(x, 0.5 * x) for x in xs])
    fb = T.frontier([(x, 0.3 * x + 0.1) for x in xs])
    m = T.matched(fa, fb)  # d(x) = 0.2x − 0.1: mean 0 over [0, 1]
    assert m["overlap"] == [0.0, 1.0] and m["mean_difference"] == pytest.approx(0.0, abs=1e-12)
    assert [lv["difference"] for lv in m["levels"]] == pytest.approx([-0.08, 0.0, 0.08])
    part = T.matched(fa, T.frontier([(x, 0.3 * x + 0.1) for x in xs if x >= 0.4]))
    assert part["overlap"] == [pytest.approx(0.4), 1.0]  # only where both were seen: no extrapolation
    assert part["mean_difference"] == pytest.approx(0.2 * 0.7 - 0.1)
    assert T.matched(fa, T.frontier([(2.0, 0.1), (3.0, 0.2)])) is None


def _family(name, slope, seeds, rng, noise=0.01):
    rows = []
    for s in seeds:
        for x in np.linspace(0.1, 0.9, 5):
            rows.append({"label": f"{name}-{s}-{x:.1f}", "family": name, "seed": s, "task": float(x),
                         "forgetting": float(slope * x + rng.normal(0, noise))})
    return rows


def test_seed_bootstrap_covers_the_true_difference_and_one_seed_says_points():
    rng = np.random.default_rng(0)
    rows = _family("sam", 0.2, range(4), rng) + _family("adamw", 0.3, range(4), rng)
    c = T.compare(rows, "sam", "adamw", n_boot=400)
    truth = -0.1 * 0.5  # d(x) = −0.1x, mean over [0.1, 0.9] = −0.05
    assert c["resampled"] == "seeds" and c["n_seeds"] == [4, 4]
    assert c["ci"][0] <= truth <= c["ci"][1] and c["ci"][1] < 0  # SAM forgets less at equal learning
    mid = c["levels"][1]
    assert mid["ci"][0] <= -0.05 <= mid["ci"][1]
    one = T.compare([r for r in rows if r["seed"] == 0], "sam", "adamw", n_boot=200)
    assert one["resampled"] == "points"
    two = T.compare([r for r in rows if r["seed"] == 0 and r["task"] > 0.6], "sam", "adamw", n_boot=200)
    assert two["resampled"].startswith("none") and two["ci"] is None  # 2 points each: no interval
    out = T.tradeoff(rows, [("sam", "adamw")], task_name="EM", n_boot=200)
    line = out["pairs"][0]["line"]
    assert line.startswith("sam vs adamw at EM 0.5: forgetting") and "bootstrap over seeds" in line
    assert set(out["families"]) == {"sam", "adamw"}
