"""Correlation statistics against scipy, the manifest's errors, the store under a kill, the report."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from scipy import stats

from landscape.study import correlate as C, runner
from landscape.cli.main import cli
from landscape.foundation.store import Store
from tests.conftest import make_checkpoint, write_jsonl
from tests.test_surface import chromium

ROOT = Path(__file__).resolve().parent.parent


def test_statistics_match_scipy_on_known_data():
    g = np.random.default_rng(0)
    x = g.normal(size=12)
    y = 0.7 * x + g.normal(scale=0.5, size=12)
    c = C.correlation(x, y, n_boot=500, seed=1)
    for k, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        r, p = fn(x, y)
        assert c[k]["r"] == pytest.approx(r, abs=1e-12) and c[k]["p"] == pytest.approx(p, abs=1e-12)
        lo, hi = c[k]["ci"]
        assert lo <= c[k]["r"] <= hi and -1 <= lo < hi <= 1
    assert c["n"] == 12


def test_monotone_pair_gives_rank_correlation_one_and_noise_gives_large_p():
    x = np.arange(10.0)
    c = C.correlation(x, np.exp(x), n_boot=200)
    assert c["spearman"]["r"] == pytest.approx(1.0) and c["kendall"]["r"] == pytest.approx(1.0)
    assert c["pearson"]["r"] < 0.9  # not linear
    g = np.random.default_rng(3)
    noise = C.correlation(g.normal(size=200), g.normal(size=200), n_boot=200)
    assert all(noise[k]["p"] > 0.2 for k in ("pearson", "spearman", "kendall"))
    assert noise["spearman"]["ci"][0] < 0 < noise["spearman"]["ci"][1]


def test_vectorised_bootstrap_statistics_equal_scipy_row_by_row():
    g = np.random.default_rng(5)
    x = g.integers(0, 4, size=(30, 9)).astype(float)  # many ties: τ-b, average ranks
    y = g.integers(0, 4, size=(30, 9)).astype(float)
    tau = C._kendall_b(x, y)
    rho = C._pearson_rows(stats.rankdata(x, axis=1), stats.rankdata(y, axis=1))
    for i in range(30):
        if np.ptp(x[i]) and np.ptp(y[i]):
            assert tau[i] == pytest.approx(stats.kendalltau(x[i], y[i])[0], abs=1e-12)
            assert rho[i] == pytest.approx(stats.spearmanr(x[i], y[i])[0], abs=1e-12)


def test_degenerate_inputs_say_why():
    assert C.correlation([1, 2], [3, 4])["reason"] == "fewer than 3 finite pairs"
    c = C.correlation([1, 1, 1, 1], [1, 2, 3, 4])
    assert c["reason"] == "one side is constant" and c["spearman"]["r"] is None
    c = C.correlation([1, 2, np.nan, 4, 5], [1, 2, 3, np.inf, 6])
    assert c["n"] == 3 and c["spearman"]["r"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Four tiny checkpoints (different seeds), a suite, a task file and a manifest over them."""
    from landscape.foundation import toy

    root = tmp_path_factory.mktemp("study")
    tok = toy.build_word_tokenizer(["the a cat dog sat on mat red blue green is of color lives in forest city"])
    for i in range(5):
        d = make_checkpoint(root / f"s{i}", "llama", tok, seed=i)
        d.rename(root / f"ck{i}")
    (root / "suites").mkdir()
    write_jsonl(root / "suites" / "colors.jsonl", [{"context": f"the color of {e} is", "choices": ["red", "blue", "green"],
                                                   "answer": i % 3} for i, e in enumerate(["cat", "dog", "mat", "city"])])
    write_jsonl(root / "task.jsonl", [{"text": "the cat sat on the mat ."}, {"text": "the dog is red ."}] * 4)
    return root


def manifest(root: Path, name="m.yaml", labels=None, **flat) -> Path:
    labels = labels or [f"run {i}" for i in range(1, 5)]
    m = {"base": "ck0", "suites": ["suites"],
         "flatness": {"data": "task.jsonl", "batch_size": 4, "num_batches": 2, "top_k": 2, "trace_samples": 4,
                      "metrics": ["lambda_max", "trace", "sam", "surface_curvature"], "surface": {"x": "-1:1:5"},
                      **flat},
         "checkpoints": [{"path": f"ck{i}", "label": lab, "optimizer": "sam" if i % 2 else "adamw", "lr": 1e-3}
                         for i, lab in zip(range(1, 5), labels)],
         "bootstrap": 200}
    p = root / name
    p.write_text(yaml.safe_dump(m, allow_unicode=True))
    return p


def test_correlate_end_to_end_and_rerun_is_free(study, tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    r = CliRunner().invoke(cli, ["correlate", str(manifest(study)), "--out", str(out), "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert len(res["checkpoints"]) == 4 and res["targets"] == ["average", "category:other"]
    from landscape.study.tradeoff import frontier

    tr = res["tradeoff"]  # families from the optimizer labels, learning = minus the task loss
    assert set(tr["families"]) == {"sam", "adamw"} and tr["task"] == "-task_loss"
    for fam, f in tr["families"].items():
        pts = [(-row["flatness"]["loss"], row["forgetting"]["average"]["delta"]) for row in res["checkpoints"]
               if row["optimizer"] == fam]
        assert [tuple(p) for p in f["frontier"]] == frontier(pts)
    assert {x["metric"] for x in res["ranking"]} == {"lambda_max", "trace", "sam", "surface_curvature"}
    c = res["correlations"]["lambda_max"]["average"]
    xs = [row["flatness"]["lambda_max"] for row in res["checkpoints"]]
    ys = [row["forgetting"]["average"]["delta"] for row in res["checkpoints"]]
    if c["spearman"]["r"] is not None:
        assert c["spearman"]["r"] == pytest.approx(stats.spearmanr(xs, ys)[0])
    assert out.is_file() and out.with_suffix(".json").is_file() and out.with_suffix(".sqlite").is_file()
    page = out.read_text()  # wide tables scroll inside the page; 4 checkpoints are said to be few
    assert page.count("<div class='scroll'><table") >= 3 and "<b>n = 4</b>: p-values are exact" in page
    assert "note: n = 4" in CliRunner().invoke(cli, ["correlate", str(manifest(study)), "--out", str(out)]).output
    from landscape.measures import sharpness

    calls = []
    monkeypatch.setattr(sharpness, "measure", lambda *a, **k: calls.append(1))
    again = runner.run_manifest(manifest(study), out)
    assert calls == [] and again["correlations"] == res["correlations"]


def test_manifest_errors_exit_2_with_one_line(study, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("base: [unclosed\n")
    missing = manifest(study, "missing.yaml")
    m = yaml.safe_load(missing.read_text())
    m["checkpoints"][1]["path"] = "nope"
    missing.write_text(yaml.safe_dump(m))
    one = manifest(study, "one.yaml")
    m = yaml.safe_load(one.read_text())
    m["checkpoints"] = m["checkpoints"][:1]
    one.write_text(yaml.safe_dump(m))
    cases = [(manifest(study, "metric.yaml", metrics=["lambda_max", "flatness_vibes"]), "unknown metric(s) flatness_vibes"),
             (one, "1 checkpoint(s); a correlation over checkpoints needs at least 2"),
             (manifest(study, "key.yaml", batchsize=4), "known: metrics, surface, data, data_split, batch_size"),
             (missing, "does not exist"), (bad_yaml, "not valid YAML"), (tmp_path / "none.yaml", "no such manifest"),
             (manifest(study, "dup.yaml", labels=["a", "a", "b", "c"]), "share the label"),
             (manifest(study, "grid.yaml", surface={"x": "1:-1:5"}), "grid"),
             (manifest(study, "dirs.yaml", surface={"x": "-1:1:5", "directions": "lazy"}), "surface.directions"),
             (manifest(study, "ppp.yaml", surface={"x": "-1:1:5", "points_per_pass": 0}), "points_per_pass")]
    for path, match in cases:
        r = CliRunner().invoke(cli, ["correlate", str(path), "--out", str(tmp_path / "x.html")])
        assert r.exit_code == 2, (path, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], (match, r.stderr)
    assert not (tmp_path / "x.html").exists()


def test_store_survives_a_kill_mid_batch(study, tmp_path):
    path = manifest(study, "kill.yaml", surface={"x": "-1:1:21", "y": "-1:1:21"}, trace_samples=30)
    db = tmp_path / "k.sqlite"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from landscape.study.runner import run_manifest; "
            f"run_manifest({str(path)!r}, {str(tmp_path / 'k.html')!r}, store_path={str(db)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_before_kill = 0
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if db.exists():
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                        done_before_kill = con.execute("SELECT COUNT(*) FROM results WHERE kind='surface'").fetchone()[0]
                except sqlite3.OperationalError:
                    continue
                if done_before_kill >= 2:  # base + one checkpoint finished
                    os.kill(proc.pid, signal.SIGKILL)
                    break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill landed"
    store = Store(db)  # not corrupted: opens and reads
    kept = {(r["fingerprint"], r["kind"]) for r in store.rows()}
    assert sum(k == "surface" for _, k in kept) >= 2
    import landscape.measures.surface as S

    real, computed = S.surface, []
    S.surface = lambda model, *a, **k: computed.append(1) or real(model, *a, **k)
    try:
        res = runner.run_manifest(path, tmp_path / "k.html", store_path=db)
    finally:
        S.surface = real
    assert len(computed) == 5 - sum(k == "surface" for _, k in kept)  # only what had not finished
    assert len(res["checkpoints"]) == 4 and not (tmp_path / ".k.html.tmp").exists()


@pytest.mark.browser
@pytest.mark.skipif(not chromium(), reason="chromium not installed (.ci/run installs Debian's chromium)")
def test_report_renders_in_chromium_and_escapes_labels(study, tmp_path):
    evil = "<script>alert(1)</script>"
    out = tmp_path / "rep.html"
    runner.run_manifest(manifest(study, "evil.yaml", labels=[evil, "b", "c", "d"],
                            surface={"x": "-1:1:5", "y": "-1:1:5", "points_per_pass": 4}), out)
    h5s = sorted((tmp_path / "rep_surfaces").glob("*.h5"))
    assert h5s and all(h5py.File(f, "r").attrs["points_per_pass"] == 4 for f in h5s)  # passed through
    page = out.read_text()
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000", "--dump-dom",
                          out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("main-svg") >= 3  # scatter, surfaces, spectra drawn
    assert "scatterlayer" in dom and "contourlayer" in dom
    assert "<script>alert(1)</script>" not in dom.split("<body", 1)[1].replace("\\u003c", "<")


def _hand_residual(v, Z):
    """Residual of v after ordinary least squares on [1, Z] (numpy's lstsq, not our code)."""
    A = np.column_stack([np.ones(len(v)), Z])
    return v - A @ np.linalg.lstsq(A, v, rcond=None)[0]


def test_partial_correlation_against_a_hand_computation():
    g = np.random.default_rng(3)
    n = 14
    z1, z2 = g.normal(size=n), g.normal(size=n)
    x = 0.8 * z1 + g.normal(scale=0.6, size=n)
    y = -0.5 * z1 + 0.4 * z2 + 0.5 * x + g.normal(scale=0.5, size=n)
    c = C.partial_correlation(x, y, {"z1": z1, "z2": z2}, n_boot=400, seed=0)
    Z = np.column_stack([z1, z2])
    r = np.corrcoef(_hand_residual(x, Z), _hand_residual(y, Z))[0, 1]
    assert c["pearson"]["r"] == pytest.approx(r, abs=1e-10)
    t = r * np.sqrt((n - 4) / (1 - r * r))
    assert c["pearson"]["p"] == pytest.approx(2 * stats.t.sf(abs(t), n - 4), rel=1e-8)
    rk = stats.rankdata
    Zr = np.column_stack([rk(z1), rk(z2)])
    rs = np.corrcoef(_hand_residual(rk(x), Zr), _hand_residual(rk(y), Zr))[0, 1]
    assert c["spearman"]["r"] == pytest.approx(rs, abs=1e-10)
    assert c["df"] == n - 4 and c["covariates"] == ["z1", "z2"]
    lo, hi = c["pearson"]["ci"]
    assert lo <= c["pearson"]["r"] <= hi
    # with no covariate it is the ordinary correlation
    c0 = C.partial_correlation(x, y, {}, n_boot=100)
    assert c0["pearson"]["r"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert c0["spearman"]["r"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_a_metric_that_only_tracks_the_covariate_has_partial_correlation_near_zero():
    g = np.random.default_rng(0)
    n = 40
    size = g.uniform(0.5, 3.0, size=n)  # e.g. ‖Δw‖: drives forgetting
    forgetting = 0.3 * size + g.normal(scale=0.05, size=n)
    tracker = 2.0 * size + g.normal(scale=0.05, size=n)  # a "metric" that is the update size again
    real = g.normal(size=n)
    forgetting = forgetting + 0.1 * real  # and one that adds something of its own
    plain = C.correlation(tracker, forgetting, n_boot=200)
    assert plain["spearman"]["r"] > 0.8  # looks like a strong predictor...
    pc = C.partial_correlation(tracker, forgetting, {"delta_norm": size}, n_boot=400)
    assert abs(pc["pearson"]["r"]) < 0.3 and pc["pearson"]["ci"][0] < 0 < pc["pearson"]["ci"][1]  # ...but is not
    pr = C.partial_correlation(real, forgetting, {"delta_norm": size}, n_boot=400)
    assert pr["pearson"]["r"] > 0.6 and pr["pearson"]["ci"][0] > 0
    same = C.partial_correlation(size, forgetting, {"delta_norm": size})
    assert same["pearson"]["r"] is None and "covariates" in same["reason"]
    few = C.partial_correlation(size[:4], forgetting[:4], {"a": real[:4], "b": tracker[:4]})
    assert few["spearman"]["r"] is None and "needs at least 6" in few["reason"]


def test_rankings_per_target_and_partial_columns():
    rows = [{"flatness": {"a": float(i), "b": float(-i * i), "c": float((i * 7) % 5)}} for i in range(8)]
    targets = {"average": [0.1 * i for i in range(8)], "category:x": [0.1 * ((i * 7) % 5) for i in range(8)]}
    t = C.correlate_table(rows, ["a", "b", "c"], targets, n_boot=100, covariates={"steps": [1, 2, 1, 2, 1, 2, 1, 3]})
    assert [r["metric"] for r in t["rankings"]["category:x"]][0] == "c"
    assert t["ranking"] == t["rankings"]["average"] and t["ranking"][-1]["metric"] == "c"
    assert t["ranking"][0]["partial_spearman"] is not None and t["covariates"] == ["steps"]


def test_predictors_and_covariates_through_the_manifest(study, tmp_path, monkeypatch):
    m = yaml.safe_load(manifest(study).read_text())
    m["flatness"]["metrics"] = ["sam"]
    m["flatness"].pop("surface")
    m["predictors"] = {"data": "task.jsonl", "batch_size": 4, "num_batches": 1, "line": "0:1:3", "max_iter": 10}
    m["covariates"] = ["delta_norm", "task_loss"]
    p = study / "pred.yaml"
    p.write_text(yaml.safe_dump(m))
    out = tmp_path / "p.html"
    res = runner.run_manifest(p, out)
    from landscape.foundation.configs import PREDICTOR_METRICS

    general = [k for k in PREDICTOR_METRICS if not k.endswith("_task")]  # the task KL needs kl_data
    assert set(res["metrics"]) == {"sam", *general}
    assert res["metric_info"]["kappa_base"]["where"] == "base" and res["metric_info"]["sam"]["where"] == "tuned"
    assert res["metric_info"]["kappa_base"]["data"].endswith("task.jsonl")
    assert res["covariates"] == ["delta_norm", "task_loss"]
    assert res["partial"]["sam"]["average"]["covariates"] == ["delta_norm", "task_loss"]
    assert "reason" in res["partial"]["delta_norm"]["average"]  # a covariate cannot explain itself away
    # the batch path measures what `landscape predict` measures for the same pair
    r = CliRunner().invoke(cli, ["predict", str(study / "ck0"), str(study / "ck2"), "--data", str(study / "task.jsonl"),
                                 "--batch-size", "4", "--num-batches", "1", "--line", "0:1:3", "--max-iter", "10",
                                 "--json"])
    assert r.exit_code == 0, r.output
    one = json.loads(r.stdout)["results"][0]["metrics"]
    row = next(x for x in res["checkpoints"] if x["path"].endswith("ck2"))
    for k in general:
        assert row["flatness"][k] == pytest.approx(one[k], rel=1e-9), k
    html = out.read_text()
    assert "predicted" in html and "kappa_base" in html and "partial" in html
    from landscape.measures import predictors

    calls = []
    monkeypatch.setattr(predictors.Session, "measure", lambda *a, **k: calls.append(1))
    again = runner.run_manifest(p, out)
    assert calls == [] and again["partial"] == res["partial"]
    for bad, match in ((dict(m, covariates=["vibes"]), "covariates: unknown vibes"),
                       (dict(m, predictors={**m["predictors"], "metrics": ["kappa"]}), "predictors.metrics"),
                       (dict(m, predictors={**m["predictors"], "metrics": ["kl_base_tuned_task"]}), "need kl_data"),
                       (dict(m, predictors={**m["predictors"], "line": "0:0.5:3"}), "predictors.line")):
        p.write_text(yaml.safe_dump(bad))
        r = CliRunner().invoke(cli, ["correlate", str(p), "--out", str(tmp_path / "y.html")])
        assert r.exit_code == 2 and match in r.stderr, (match, r.stderr)


def test_no_flatness_metrics_measures_the_task_loss_alone(study, tmp_path, monkeypatch):
    """``flatness.metrics: []`` (a model too large to measure beside the base the predictors hold): each
    checkpoint gets its task loss (what `landscape loss` prints) and the predictors; no sharpness runs."""
    from landscape.measures import sharpness

    m = yaml.safe_load(manifest(study).read_text())
    m["flatness"]["metrics"] = []
    m["flatness"].pop("surface")
    m["predictors"] = {"data": "task.jsonl", "batch_size": 4, "num_batches": 1, "line": "0:1:2", "max_iter": 5,
                       "metrics": ["delta_norm", "kl_base_tuned"]}
    m["covariates"] = ["task_loss"]
    p = study / "loss_only.yaml"
    p.write_text(yaml.safe_dump(m))
    monkeypatch.setattr(sharpness, "measure", lambda *a, **k: pytest.fail("no sharpness was asked"))
    res = runner.run_manifest(p, tmp_path / "l.html")
    assert res["metrics"] == ["delta_norm", "kl_base_tuned"]
    for row in res["checkpoints"]:
        r = CliRunner().invoke(cli, ["loss", row["path"], "--data", str(study / "task.jsonl"), "--batch-size", "4",
                                     "--num-batches", "2", "--json"])
        assert row["flatness"]["loss"] == pytest.approx(json.loads(r.stdout)["loss"], rel=1e-12), row["label"]
        assert set(row["flatness"]) == {"loss", "delta_norm", "kl_base_tuned"}
    # no metric at all (a learning-rate sweep: forgetting and the task loss only): the report still writes
    m.pop("predictors")
    m["covariates"] = []
    p.write_text(yaml.safe_dump(m))
    res = runner.run_manifest(p, tmp_path / "none.html")
    assert res["metrics"] == [] and res["ranking"] == [] and (tmp_path / "none.html").is_file()
    assert all(r["flatness"]["loss"] > 0 for r in res["checkpoints"])


def test_cluster_bootstrap_of_tripled_rows_is_the_bootstrap_of_the_unique_rows():
    """Seed repeats are not independent checkpoints: with every row tripled and the copies grouped,
    the cluster bootstrap's intervals equal those of the 12 unique rows exactly (same draws of whole
    groups; tripled data has the same Pearson, Spearman and partial statistics), while the pair
    bootstrap of the 36 rows — three times the evidence it does not have — is narrower."""
    from landscape.study.correlate import correlation, partial_correlation

    rng = np.random.default_rng(3)
    x = rng.normal(size=12)
    y = 0.5 * x + rng.normal(size=12)
    z = rng.normal(size=12)
    x3, y3, z3 = (np.repeat(v, 3) for v in (x, y, z))
    groups = [f"s{k}" for k in np.repeat(np.arange(12), 3)]
    one, clustered, pairs = correlation(x, y), correlation(x3, y3, groups=groups), correlation(x3, y3)
    for k in ("pearson", "spearman"):
        assert clustered[k]["ci"] == pytest.approx(one[k]["ci"], abs=1e-12), k
        assert np.diff(pairs[k]["ci"])[0] < 0.8 * np.diff(one[k]["ci"])[0], k
    assert clustered["clusters"] == 12
    p1 = partial_correlation(x, y, {"z": z})
    p3 = partial_correlation(x3, y3, {"z": z3}, groups=groups)
    for k in ("pearson", "spearman"):
        assert p3[k]["ci"] == pytest.approx(p1[k]["ci"], abs=1e-12), k
    # one row per group is the pair bootstrap itself
    assert correlation(x, y, groups=[f"g{k}" for k in range(12)])["spearman"]["ci"] == one["spearman"]["ci"]


def test_small_n_p_values_are_exact_and_intervals_refused():
    """scipy's asymptotic Spearman p is 0 at n = 3 with ρ = 1; the exact permutation p is 1/3! · 2 = 1/3."""
    r = C.correlation([1, 2, 3], [10, 20, 30])
    for k in ("pearson", "spearman", "kendall"):
        assert r[k]["p"] == pytest.approx(1 / 3) and r[k]["ci"] == [None, None]
    assert "exact" in r["p_method"] and "n = 3" in r["warning"] and r["ci_reason"]
    assert "warning" not in C.correlation(np.arange(12.0), np.arange(12.0) ** 2)


def test_exact_p_against_brute_force_enumeration():
    """Every pairing enumerated with itertools and scipy's own statistics, ties included."""
    import itertools

    from scipy import stats

    from landscape.study.correlate import exact_p

    g = np.random.default_rng(3)
    for n, tie in ((6, False), (6, True), (7, True)):
        x = g.normal(size=n)
        y = x + g.normal(size=n)
        if tie:
            y = np.round(y)
            x[1] = x[0]
        stat = {"pearson": lambda a, b: stats.pearsonr(a, b)[0], "spearman": lambda a, b: stats.spearmanr(a, b)[0],
                "kendall": lambda a, b: stats.kendalltau(a, b)[0]}
        got = exact_p(x, y)
        for k, f in stat.items():
            obs = abs(f(x, y))
            null = [abs(f(x, y[list(pi)])) for pi in itertools.permutations(range(n))]
            want = np.mean([v >= obs * (1 - 1e-9) for v in null])
            assert got[k] == pytest.approx(want, abs=1e-12), (n, tie, k)
    x = g.normal(size=9)
    y = x + g.normal(size=9)  # no ties: Kendall equals scipy's exact distribution
    assert exact_p(x, y)["kendall"] == pytest.approx(stats.kendalltau(x, y, method="exact").pvalue)


def test_manifest_reads_exponent_floats_as_numbers(study):
    """YAML 1.1 (PyYAML) reads ``1e-4`` as a string; a manifest's labels and settings are numbers."""
    from landscape.study.manifest import load_manifest

    p = study / "floats.yaml"
    text = manifest(study).read_text().replace("lr: 0.001", "lr: 1e-4")
    p.write_text(text + "title: 1e-4 run\n")
    m = load_manifest(p)
    assert [c["lr"] for c in m.checkpoints] == [1e-4] * 4 and m.title == "1e-4 run"


def _row_gaps_px(fig) -> list[float]:
    """Pixels between consecutive rows of a subplot grid (from the y axes' domains)."""
    lay = fig.layout
    area = lay.height - (lay.margin.t if lay.margin.t is not None else 100) - (lay.margin.b if lay.margin.b is not None else 80)
    doms = sorted({tuple(lay[k].domain) for k in lay if k.startswith("yaxis")}, reverse=True)
    return [(hi_row[0] - lo_row[1]) * area for hi_row, lo_row in zip(doms, doms[1:])]


def test_report_grids_keep_a_fixed_gap_between_rows():
    """plotly's vertical_spacing is a share of the plot area: a fixed share opened 225 px between the
    rows of an 18-metric flatness grid; the gap is now the same few lines of text at any size."""
    from landscape.study import report as R

    def result(n_metrics):
        ms = [f"m{i}" for i in range(n_metrics)]
        rows = [{"label": f"c{j}", "optimizer": "sam" if j % 2 else "adamw", "flatness": {m: j + i for i, m in enumerate(ms)},
                 "forgetting": {"average": {"delta": 0.01 * j}}} for j in range(4)]
        return {"metrics": ms, "checkpoints": rows}

    for n in (4, 9, 18):
        fig = R.scatter_figure(result(n))
        gaps = _row_gaps_px(fig)  # plotly.js margins: top 100, bottom 80 px
        assert gaps and all(abs(g - R.ROW_GAP_PX) < 1 for g in gaps), (n, gaps)


def test_suite_mean_is_a_target_only_where_it_differs_from_the_category_average():
    from landscape.study.runner import _targets

    def row(avg, mean):
        return {"forgetting": {"average": {"delta": avg}, "suite_mean": {"delta": mean}, "categories": {}}}

    assert _targets([row(0.1, 0.2), row(0.3, 0.3)])["suite_mean"] == [0.2, 0.3]
    assert "suite_mean" not in _targets([row(0.1, 0.1), row(0.3, 0.3)])  # one suite a category: the same numbers
    assert "suite_mean" not in _targets([{"forgetting": {"average": {"delta": 0.1}, "categories": {}}}])  # older rows
