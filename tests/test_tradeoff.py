"""Forgetting at matched learning: frontiers, matched differences and their bootstrap over seeds."""

import shutil

import numpy as np
import pytest
import torch

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


def _settings_family(name, slope, n_seeds, rng, noise=0.02):
    """Five settings, each repeated over ``n_seeds`` seeds: task x and forgetting slope·x, both noisy."""
    return [{"label": f"{name}-{x:.1f}-s{s}", "family": name, "setting": f"{name}-{x:.1f}", "seed": s,
             "task": float(x + rng.normal(0, noise)), "forgetting": float(slope * x + rng.normal(0, noise))}
            for x in np.linspace(0.1, 0.9, 5) for s in range(n_seeds)]


def test_seeds_within_settings_cover_the_truth_at_about_the_nominal_rate():
    """Settings repeated over 5 seeds enter as their means; the 95% interval of the mean difference
    covers the true −0.1·(mid-overlap) in about 95% of 80 synthetic studies (measured 0.92/0.94/0.94
    at 3/5/8 seeds over 400 studies; 0.84 at 3 seeds before the √(n/(n−1)) rescaling)."""
    hits = 0
    for k in range(80):
        rng = np.random.default_rng(k)
        rows = _settings_family("sam", 0.2, 5, rng) + _settings_family("adamw", 0.3, 5, rng)
        c = T.compare(rows, "sam", "adamw", n_boot=200, seed=k)
        assert c["resampled"] == "seeds within settings" and c["repeated_settings"] == [5, 5]
        lo, hi = c["overlap"]
        hits += c["ci"][0] <= -0.1 * (lo + hi) / 2 <= c["ci"][1]
    assert 0.85 <= hits / 80 <= 0.99, hits / 80
    # the frontier is of the settings' means, not of every noisy repeat
    rng = np.random.default_rng(0)
    rows = _settings_family("sam", 0.2, 3, rng)
    means = T.points(rows)
    assert len(means) == 5 and means[0][1] == pytest.approx(np.mean([r["forgetting"] for r in rows[:3]]))
    # one setting repeated is enough to resample seeds; settings run once each are points
    once = [r for r in rows if r["seed"] == 0]
    assert T._resampling([once + rows[3:5], once]) == "points"
    assert T._resampling([once + rows[3:5], once + rows[:2]]) == "seeds within settings"


def test_study_comparisons_are_over_seeds_with_a_welch_interval():
    from scipy import stats

    from landscape.study.demo import TOY
    from landscape.study.studies import comparisons, expand, mean_difference

    a, b = [0.31, 0.42, 0.35], [0.40, 0.52, 0.47, 0.45]
    d = mean_difference(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert d["ci"] == pytest.approx([ref.low, ref.high]) and d["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert mean_difference([0.3], b)["ci"] is None  # one seed: no interval
    # the toy spec: every run once, the claim-carrying settings on three seeds (seed 0 keeps its label)
    runs = expand(TOY, fast=False)
    sam = [r for r in runs if r["setting"] == "sam-rho0.05"]
    assert [(r["label"], r["seed"]) for r in sam] == [("sam-rho0.05", 0), ("sam-rho0.05-seed1", 1),
                                                      ("sam-rho0.05-seed2", 2)]
    assert len(runs) == len(TOY.runs) + 2 * len(TOY.seeded)
    assert {r["setting"] for r in expand(TOY, fast=True)} == set(TOY.fast_runs)
    cks = [{"label": f"{s}-{k}", "setting": s, "forgetting": {"average": {"delta": v}}, "flatness": {},
            "task_exact_match": 1.0} for s, vs in (("sam-rho0.05", a), ("adamw-lr1e-3", b)) for k, v in enumerate(vs)]
    c = comparisons(TOY, {"checkpoints": cks})[0]
    assert c["n_seeds"] == [3, 4] and c["forgetting_difference"]["ci"] == pytest.approx(d["ci"])
    assert c["lambda_max"] == [None, None] and c["lambda_max_difference"] is None


def test_two_tasks_agree_metric_by_metric_and_pair_by_pair():
    """across_tasks: each metric's ρ on both tasks with its sign kept or flipped, the two rankings'
    rank correlation (scipy's), and the matched comparisons both tasks make, joined by pair."""
    from scipy import stats

    from landscape.study.studies import across_tasks

    def study(task, rhos, pairs):
        return {"task": task, "ranking": [{"metric": m, "spearman": r, "n": 9, "ci": None} for m, r in rhos.items()],
                "tradeoff": {"pairs": [{"a": a, "b": b, "line": f"{task} {a}", "mean_difference": d, "ci": None}
                                       for a, b, d in pairs]}, "trajectories": None}

    a = study("reverse", {"x": 0.8, "y": -0.5, "z": 0.1, "w": 0.3, "only_a": 0.9},
              [("sam", "adamw", -0.1), ("adamw-lora", "adamw", -0.2)])
    b = study("json", {"x": 0.6, "y": 0.4, "z": 0.2, "w": None}, [("sam", "adamw", 0.05)])
    x = across_tasks(a, b)
    got = {m["metric"]: m for m in x["metrics"]}
    assert set(got) == {"x", "y", "z", "w"}  # the metrics both rankings hold
    assert got["x"]["same_sign"] is True and got["y"]["same_sign"] is False and got["w"]["same_sign"] is None
    assert x["ranking_agreement"] == pytest.approx(stats.spearmanr([0.8, -0.5, 0.1], [0.6, 0.4, 0.2]).statistic)
    assert x["matched"]["tradeoff"] == [{"pair": "sam vs adamw", "lines": ["reverse sam", "json sam"],
                                         "mean_difference": [-0.1, 0.05], "ci": [None, None]}]
    assert x["matched"]["trajectories"] == []


def test_the_second_real_task_is_held_out_sorted_json():
    """data/real/tasks/json: the eval prompts are not training prompts, every completion is the JSON
    object of its prompt's fields with the keys sorted, and the generator rewrites the same bytes."""
    import json
    import subprocess
    import sys

    from landscape.foundation.data import real_data_dir

    d = real_data_dir() / "tasks" / "json"
    train, ev = ([json.loads(line) for line in (d / f).read_text().splitlines()] for f in ("train.jsonl", "eval.jsonl"))
    assert len(train) == 400 and len(ev) == 60
    assert not {r["prompt"] for r in ev} & {r["prompt"] for r in train}
    for r in train + ev:
        fields = dict(kv.split(" ", 1) for kv in r["prompt"].split(": ", 1)[1].split("\nJSON:")[0].split("; "))
        obj = json.loads(r["completion"])
        assert obj == fields and list(obj) == sorted(obj)
    before = {p: p.read_bytes() for p in real_data_dir().rglob("*.jsonl")}
    try:
        subprocess.run([sys.executable, str(real_data_dir() / "generate.py")], check=True)
        assert {p: p.read_bytes() for p in real_data_dir().rglob("*.jsonl")} == before
    finally:
        for p, b in before.items():
            p.write_bytes(b)


def test_study_finetunes_side_by_side_equal_the_serial_ones(llama_dir, text_data, tmp_path):
    """finetune_all in two one-thread worker processes writes the same weights, bit for bit, as the
    fine-tunes run one after another in this process on one thread; each run in a fresh process of its
    own (isolated, this process's threads) the same as serial runs on this process's threads; a second
    call reuses them all. Bits are equal only at equal thread counts (a reduction split over two threads
    adds in another order: here up to ~4e-9 apart after 3 steps)."""
    from safetensors.torch import load_file

    from landscape.foundation import checkpoint
    from landscape.foundation.configs import FinetuneConfig
    from landscape.study.studies import finetune_all

    fp = checkpoint.fingerprint(llama_dir)

    def jobs(where):
        return {f"r{k}": (llama_dir, fp, where / f"r{k}", text_data,
                          FinetuneConfig(max_steps=3, lr=1e-3, batch_size=2, seed=k, optimizer=opt, overwrite=True), None,
                          "float32")
                for k, opt in enumerate(("adamw", "sam"))}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert finetune_all(jobs(tmp_path / "a1"), 1, False) == {"r0": "trained", "r1": "trained"}
    finally:
        torch.set_num_threads(threads)
    assert finetune_all(jobs(tmp_path / "a"), 1, False) == {"r0": "trained", "r1": "trained"}
    assert finetune_all(jobs(tmp_path / "b"), 2, False) == {"r0": "trained", "r1": "trained"}
    shutil.copytree(tmp_path / "a" / "r0", tmp_path / "c" / "r0")  # isolated: r0 reused, r1 in a fresh process
    assert finetune_all(jobs(tmp_path / "c"), 1, False, isolated=True) == {"r0": "reused", "r1": "trained"}

    def weights(where, k):
        return load_file(str(tmp_path / where / k / "model.safetensors"))

    for serial, other in (("a1", "b"), ("a", "c")):
        for k in ("r0", "r1"):
            a, b = weights(serial, k), weights(other, k)
            assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), (serial, other, k)
    assert finetune_all(jobs(tmp_path / "b"), 2, False) == {"r0": "reused", "r1": "reused"}
