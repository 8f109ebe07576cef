import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from landscape.foundation import checkpoint, data, params as P
from landscape.measures import directions as D, surface as S
from landscape.cli.main import cli
from landscape.foundation.errors import UserError
from landscape.foundation.configs import SurfaceConfig
from landscape.foundation.loss import evaluate


def run_surface(model, batches, out, x, y=None, *, to=None, to_y=None, max_points=None, loss_fn=None, **settings):
    """landscape.measures.surface.surface with the grid and settings given as keywords."""
    return S.surface(model, batches, out, SurfaceConfig(x=x, y=y, **settings), targets=S.Targets(to, to_y),
                     control=S.RunControl(max_points=max_points, loss_fn=loss_fn))


@pytest.fixture()
def ck(tiny_ckpts):
    return checkpoint.load_checkpoint(tiny_ckpts["llama"])


def test_filter_norms_equal_weight_row_norms_and_biasbn_zeroes_1d(ck):
    named = P.select(ck.model)
    d = D.random_direction(named, seed=3, norm="filter", ignore="biasbn")
    for (n, w), di in zip(named.items(), d):
        if w.dim() <= 1:
            assert torch.count_nonzero(di) == 0, n
        else:
            torch.testing.assert_close(di.reshape(di.shape[0], -1).norm(dim=1),
                                       w.detach().reshape(w.shape[0], -1).norm(dim=1), rtol=1e-5, atol=1e-7)
    lay = D.random_direction(named, seed=3, norm="layer", ignore="none")
    for (n, w), di in zip(named.items(), lay):
        assert float(di.norm()) == pytest.approx(float(w.detach().norm()), rel=1e-5), n


def test_directions_regenerate_from_seed_and_name(ck):
    named = P.select(ck.model)
    a = D.random_direction(named, seed=7)
    b = D.random_direction(named, seed=7)
    sub = D.random_direction(P.select(ck.model, r"mlp"), seed=7)  # a subset gets the same tensors
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    mlp = [x for n, x in zip(named, a) if "mlp" in n]
    assert all(torch.equal(x, y) for x, y in zip(mlp, sub))
    c = D.random_direction(named, seed=8)
    assert not torch.equal(a[0], c[0])


def test_orthogonalize(ck):
    named = P.select(ck.model)
    x = D.random_direction(named, 0, "x")
    y = D.orthogonalize(D.random_direction(named, 0, "y"), x)
    assert abs(float(P.dot(x, y))) < 1e-6 * float(P.norm(x) * P.norm(y))


def test_center_is_the_loss_and_weights_bit_identical(ck, text_data, tmp_path):
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=3)
    before = {n: p.detach().clone() for n, p in ck.model.named_parameters()}
    L0 = evaluate(ck.model, bs).loss
    run_surface(ck.model, bs, tmp_path / "s.h5", np.linspace(-1, 1, 5), np.linspace(-1, 1, 3))
    s = S.read_surface(tmp_path / "s.h5")
    assert s["loss"][2, 1] == L0  # exactly
    assert s["done"].all() and s["loss"].shape == (5, 3)
    for n, p in ck.model.named_parameters():
        assert torch.equal(before[n], p), n


def test_line_to_another_checkpoint_hits_its_loss(tiny_ckpts, text_data, tmp_path, tokenizer):
    from tests.conftest import make_checkpoint

    other = checkpoint.load_checkpoint(make_checkpoint(tmp_path, "llama", tokenizer, seed=9))
    ck = checkpoint.load_checkpoint(tiny_ckpts["llama"])
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=3)
    run_surface(ck.model, bs, tmp_path / "line.h5", np.array([0.0, 0.5, 1.0]), to=dict(other.model.named_parameters()))
    s = S.read_surface(tmp_path / "line.h5")
    assert s["loss"][0] == evaluate(ck.model, bs).loss
    assert s["loss"][2] == pytest.approx(evaluate(other.model, bs).loss, rel=1e-6)


def test_points_equal_direct_evaluation_of_perturbed_weights(tmp_path, text_data, ck):
    """A grid point's loss equals the loss of w + x·d evaluated directly."""
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=6)
    named = P.select(ck.model)
    d = D.random_direction(named, seed=1, norm="none", ignore="none")
    run_surface(ck.model, bs, tmp_path / "l.h5", np.array([-0.01, 0.0, 0.02]), norm="none", ignore="none", seed=1)
    s = S.read_surface(tmp_path / "l.h5")
    with P.perturbed(list(named.values()), [0.02 * x for x in d]):
        direct = evaluate(ck.model, bs).loss
    assert s["loss"][2] == pytest.approx(direct, rel=1e-7)


def test_quadratic_surface_equals_its_closed_form(tmp_path):
    """L(W) = ½‖A·vec(W) − c‖²: every grid point equals the formula at W0 + x·dx + y·dy."""
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Module()
    model.W = torch.nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
    A = torch.randn(5, 12, generator=g, dtype=torch.float64)
    c = torch.randn(5, generator=g, dtype=torch.float64)
    fn = lambda: float(0.5 * ((A @ model.W.reshape(-1) - c) ** 2).sum())  # noqa: E731
    x, y = np.linspace(-1, 1, 5), np.linspace(-2, 2, 4)
    W0 = model.W.detach().clone()
    run_surface(model, None, tmp_path / "q.h5", x, y, norm="filter", seed=4, loss_fn=fn)
    named = P.select(model)
    dx = D.random_direction(named, 4, "x", "filter", "biasbn")[0].double()
    dy = D.random_direction(named, 4, "y", "filter", "biasbn")[0].double()
    L = S.read_surface(tmp_path / "q.h5")["loss"]
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            W = W0 + a * dx + b * dy
            assert L[i, j] == pytest.approx(float(0.5 * ((A @ W.reshape(-1) - c) ** 2).sum()), rel=1e-6)
    assert torch.equal(model.W.detach(), W0)


def test_resume_gives_an_identical_file(ck, text_data, tmp_path):
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=6)
    x, y = np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3)
    run_surface(ck.model, bs, tmp_path / "full.h5", x, y)
    r = run_surface(ck.model, bs, tmp_path / "part.h5", x, y, max_points=5)
    assert not r["complete"] and (tmp_path / "part.h5.partial").exists() and not (tmp_path / "part.h5").exists()
    r = run_surface(ck.model, bs, tmp_path / "part.h5", x, y)
    assert r["complete"] and r["computed"] == 7
    assert (tmp_path / "part.h5").read_bytes() == (tmp_path / "full.h5").read_bytes()
    assert not (tmp_path / "part.h5.partial").exists()


def test_refuses_to_resume_into_another_configuration(ck, text_data, tmp_path):
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=6)
    run_surface(ck.model, bs, tmp_path / "p.h5", np.linspace(-1, 1, 4), max_points=2)
    with pytest.raises(UserError, match="another configuration"):
        run_surface(ck.model, bs, tmp_path / "p.h5", np.linspace(-1, 1, 4), seed=5)


def test_nan_points_are_stored_as_computed_and_plotted_as_gaps(tmp_path):
    x, y = np.linspace(-1, 1, 3), np.linspace(-1, 1, 3)
    L = np.arange(9.0).reshape(3, 3)
    L[0, 0] = np.nan
    L[2, 2] = np.inf
    S._write_h5(tmp_path / "n.h5", {"xcoordinates": x, "ycoordinates": y, "loss": L, "done": np.ones((3, 3), np.uint8)},
                {"config_hash": "x"})
    s = S.read_surface(tmp_path / "n.h5")
    assert s["done"].all() and np.isnan(s["loss"][0, 0]) and np.isinf(s["loss"][2, 2])
    from landscape.study.report import _none_for_nan, _prepare

    z = _none_for_nan(_prepare(s["loss"], log=False, clip=None))
    assert z[0][0] is None and z[2][2] is None and z[1][1] == 4.0


def test_surface_metrics_on_a_paraboloid(tmp_path):
    """L = a x² + b y²: gradients and curvature have closed forms (exact for central differences)."""
    a, b = 2.0, 0.5
    x = y = np.linspace(-1, 1, 21)
    X, Y = np.meshgrid(x, y, indexing="ij")
    L = a * X**2 + b * Y**2
    S._write_h5(tmp_path / "q.h5", {"xcoordinates": x, "ycoordinates": y, "loss": L, "done": np.ones_like(L, np.uint8)},
                {"config_hash": "q"})
    m = S.surface_metrics(tmp_path / "q.h5")
    Xi, Yi = X[1:-1, 1:-1], Y[1:-1, 1:-1]
    assert m["surface_curvature"] == pytest.approx(2 * a + 2 * b, rel=1e-9)
    assert m["center_curvature"] == pytest.approx(2 * a + 2 * b, rel=1e-9)
    assert m["average_gradient"] == pytest.approx(np.mean(np.sqrt((2 * a * Xi) ** 2 + (2 * b * Yi) ** 2)), rel=1e-9)
    assert m["mean_absolute_gradient"] == pytest.approx(np.mean((np.abs(2 * a * Xi) + np.abs(2 * b * Yi)) / 2), rel=1e-9)
    assert m["center_loss"] == 0.0


@pytest.mark.parametrize("spec,match", [("1:-1:5", "MIN must be below MAX"), ("a:b:c", "expected MIN:MAX:COUNT"),
                                        ("-1:1:0", "COUNT"), ("0:1:1", "MIN = MAX"), ("-1:1", "expected")])
def test_bad_grids(spec, match):
    with pytest.raises(UserError, match=match):
        S.parse_grid(spec)


def test_cli_surface_metrics_plot(llama_dir, text_data, tmp_path):
    run = CliRunner().invoke
    out = tmp_path / "s.h5"
    r = run(cli, ["surface", str(llama_dir), "--data", str(text_data), "--x", "-1:1:3", "--y", "-1:1:3",
                  "--save-directions", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        assert f["loss"].shape == (3, 3) and "directions/x/model.embed_tokens.weight" in f
        assert f.attrs["norm"] == "filter" and len(f.attrs["checkpoint_fingerprint"]) == 64
        stored = f["loss"][()]
    j = json.loads(r.stdout)  # the JSON carries the losses it wrote, and the loss at the weights themselves
    assert j["x"] == [-1.0, 0.0, 1.0] and np.array_equal(np.array(j["loss"]), stored)
    assert j["loss_at_origin"] == stored[1, 1] == pytest.approx(
        json.loads(run(cli, ["loss", str(llama_dir), "--data", str(text_data), "--json"]).stdout)["loss"], rel=1e-6)
    again = json.loads(run(cli, ["surface", str(llama_dir), "--data", str(text_data), "--x", "-1:1:3", "--y", "-1:1:3",
                                 "--save-directions", "--out", str(out), "--json"]).stdout)
    assert again["computed"] == 0 and again["loss"] == j["loss"]  # a finished file answers from its contents
    r = run(cli, ["surface-metrics", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["dims"] == 2
    r = run(cli, ["plot", str(out), "--out", str(tmp_path / "p.html")])
    assert r.exit_code == 0 and (tmp_path / "p.html").stat().st_size > 1_000_000  # plotly.js inlined
    r = run(cli, ["surface", str(llama_dir), "--data", str(text_data), "--x", "1:-1:3", "--out", str(out)])
    assert r.exit_code == 2 and "MIN must be below MAX" in r.stderr


def test_kill_and_resume_through_the_cli(llama_dir, text_data, tmp_path):
    """SIGKILL mid-run, then the same command: the file equals an uninterrupted run's."""
    args = [sys.executable, "-m", "landscape.cli", "surface", str(llama_dir), "--data", str(text_data),
            "--x", "-1:1:41", "--y", "-1:1:41", "--quiet"]
    ref = subprocess.run(args + ["--out", str(tmp_path / "ref.h5")], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "k.h5"
    p = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "k.h5.partial"
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        if partial.exists():
            try:
                with h5py.File(partial, "r") as f:
                    if f["done"][()].sum() >= 10:
                        break
            except OSError:
                pass
        time.sleep(0.05)
    try:
        os.kill(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    if out.exists():
        pytest.skip("the run finished before it could be killed")
    r = subprocess.run(args + ["--out", str(out), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["computed"] < 41 * 41
    assert out.read_bytes() == (tmp_path / "ref.h5").read_bytes()


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(not chromium(), reason="chromium not installed (.ci/run installs Debian's chromium)")
def test_plot_renders_in_headless_chromium(tmp_path):
    x = y = np.linspace(-1, 1, 7)
    X, Y = np.meshgrid(x, y, indexing="ij")
    L = X**2 + Y**2
    L[0, 0] = np.nan
    for name, arrays in (("<img src=x onerror=alert(1)>.h5", {"xcoordinates": x, "ycoordinates": y, "loss": L}),
                         ("line.h5", {"xcoordinates": x, "loss": x**2})):
        S._write_h5(tmp_path / name, {**arrays, "done": np.ones_like(arrays["loss"], np.uint8)}, {"config_hash": name})
    from landscape.study.report import plot_surfaces

    page = plot_surfaces([tmp_path / "<img src=x onerror=alert(1)>.h5", tmp_path / "line.h5"], tmp_path / "p.html")
    html = page.read_text()
    assert "<img src=x onerror" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'class="main-svg"' in dom  # plotly.js ran and drew
    assert 'class="contour' in dom and 'class="scatterlayer' in dom
    assert "gl-container" in dom  # the 3-D surface scene


@pytest.mark.parametrize("plane", ["random", "orthogonal", "targets"])
def test_regenerated_directions_give_the_held_file_bit_for_bit(tiny_ckpts, tokenizer, text_data, tmp_path, plane):
    """On the CPU, rebuilding each direction tensor per point reproduces the held directions exactly:
    same losses, same saved directions, same bytes; and a partial file of one mode resumes in the other."""
    from tests.conftest import make_checkpoint

    ck = checkpoint.load_checkpoint(tiny_ckpts["llama"])
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=6)
    kw = {"save_directions": True, "orthogonal": plane == "orthogonal"}
    if plane == "targets":
        kw["to"] = dict(checkpoint.load_checkpoint(make_checkpoint(tmp_path, "llama", tokenizer, seed=9)).model.named_parameters())
        kw["to_y"] = dict(checkpoint.load_checkpoint(make_checkpoint(tmp_path / "b", "llama", tokenizer, seed=5)).model.named_parameters())
    before = [p.detach().clone() for p in ck.model.parameters()]
    x, y = np.linspace(-1, 1, 3), np.linspace(-0.5, 1.0, 4)
    r = run_surface(ck.model, bs, tmp_path / "held.h5", x, y, directions="held", **kw)
    assert r["directions"] == "held"
    run_surface(ck.model, bs, tmp_path / "regen.h5", x, y, directions="regenerated", **kw)
    assert (tmp_path / "regen.h5").read_bytes() == (tmp_path / "held.h5").read_bytes()
    run_surface(ck.model, bs, tmp_path / "mixed.h5", x, y, directions="held", max_points=5, **kw)
    run_surface(ck.model, bs, tmp_path / "mixed.h5", x, y, directions="regenerated", **kw)
    assert (tmp_path / "mixed.h5").read_bytes() == (tmp_path / "held.h5").read_bytes()
    assert all(torch.equal(a, b) for a, b in zip(before, ck.model.parameters()))


def test_regenerated_directions_hold_only_the_origin(ck, text_data, tmp_path):
    """While a point is evaluated, count live tensors shaped like the largest weight: the parameter
    itself + the origin copy when regenerating; + one tensor per held direction otherwise."""
    import gc

    big = max(ck.model.parameters(), key=lambda p: p.numel())
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=6)
    seen = {}

    def live():
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and o.shape == big.shape
                   and o.dtype == torch.float32)

    def count(mode):
        def fn():
            seen[mode] = max(seen.get(mode, 0), live() - base)
            return evaluate(ck.model, bs).loss
        return fn

    for mode in ("held", "regenerated"):
        base = live()  # tensors other tests left alive do not count
        run_surface(ck.model, None, tmp_path / f"{mode}.h5", np.linspace(-1, 1, 3), np.linspace(-1, 1, 3),
                  directions=mode, loss_fn=count(mode))
    shaped = sum(1 for p in ck.model.parameters() if p.shape == big.shape)
    assert seen["regenerated"] == shaped  # one origin copy per such weight, no direction
    assert seen["held"] == 3 * shaped  # origin + x + y


def test_auto_holds_directions_only_when_they_fit(ck, text_data, tmp_path, monkeypatch):
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=6)
    from landscape.foundation import plan as plans

    need = 2 * 4 * P.numel(list(P.select(ck.model).values()))
    held = S.plan(ck.model, bs, SurfaceConfig(x=np.linspace(-1, 1, 3), y=np.linspace(-1, 1, 3), directions="held"))
    extra = held.peak - held.start  # the origin's copy, the directions, the forward's logits, temporaries
    monkeypatch.setattr(plans, "free_bytes", lambda device: None)  # the choice, not the refusal
    enough = max(2 * need, int(extra / plans.HEADROOM) + 1)
    monkeypatch.setattr(P, "free_memory", lambda device: enough)
    assert run_surface(ck.model, bs, tmp_path / "a.h5", np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))["directions"] == "held"
    monkeypatch.setattr(P, "free_memory", lambda device: 2 * need - 1)  # the directions take over half
    assert run_surface(ck.model, bs, tmp_path / "b.h5", np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))["directions"] == "regenerated"
    if int(extra / plans.HEADROOM) > 2 * need:  # the directions would fit, the rest of the held plan not
        monkeypatch.setattr(P, "free_memory", lambda device: int(extra / plans.HEADROOM) - 1)
        assert run_surface(ck.model, bs, tmp_path / "d.h5", np.linspace(-1, 1, 3),
                           np.linspace(-1, 1, 3))["directions"] == "regenerated"
    with pytest.raises(UserError, match="unknown directions 'lazy'"):
        run_surface(ck.model, bs, tmp_path / "c.h5", np.linspace(-1, 1, 3), directions="lazy")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_points_per_pass_vmap_matches_one_point_at_a_time(tiny_ckpts, text_data, tmp_path, arch):
    """K grid points per vectorised forward give the K = 1 losses to float rounding, on every
    architecture we build; the weights are bit-identical afterwards."""
    ck = checkpoint.load_checkpoint(tiny_ckpts[arch])
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=3)
    before = [p.detach().clone() for p in ck.model.parameters()]
    x, y = np.linspace(-1, 1, 3), np.linspace(-0.5, 0.5, 3)
    run_surface(ck.model, bs, tmp_path / "one.h5", x, y, orthogonal=True)
    run_surface(ck.model, bs, tmp_path / "four.h5", x, y, orthogonal=True, points_per_pass=4)
    one, four = S.read_surface(tmp_path / "one.h5"), S.read_surface(tmp_path / "four.h5")
    assert four["done"].all()
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=2e-6)
    assert four["attrs"]["points_per_pass"] == 4 and "points_per_pass" not in one["attrs"]
    assert all(torch.equal(a, b) for a, b in zip(before, ck.model.parameters()))


def test_points_per_pass_resumes_to_the_same_bytes_and_is_part_of_the_configuration(ck, text_data, tmp_path):
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=6)
    x, y = np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3)
    run_surface(ck.model, bs, tmp_path / "full.h5", x, y, points_per_pass=5)
    r = run_surface(ck.model, bs, tmp_path / "part.h5", x, y, points_per_pass=5, max_points=5)
    assert r["computed"] == 5 and not r["complete"]
    r = run_surface(ck.model, bs, tmp_path / "part.h5", x, y, points_per_pass=5)
    assert r["complete"] and r["computed"] == 7  # blocks of 5, 5 and a last one of 2
    assert (tmp_path / "part.h5").read_bytes() == (tmp_path / "full.h5").read_bytes()
    run_surface(ck.model, bs, tmp_path / "k1.h5", x, y, max_points=2)
    with pytest.raises(UserError, match="another configuration"):
        run_surface(ck.model, bs, tmp_path / "k1.h5", x, y, points_per_pass=5)
    with pytest.raises(UserError, match="points_per_pass"):
        run_surface(ck.model, bs, tmp_path / "bad.h5", x, y, points_per_pass=0)


def test_surface_metrics_formulas_in_one_and_two_dimensions(tmp_path):
    """Each metric is a mean over interior points of a per-point quantity over the D axes: in 1-D
    the mean absolute gradient is mean |∂xL| (= the average gradient), not half of it; in 2-D
    (|∂xL| + |∂yL|)/2. Checked on L = a·x² (+ b·y²), whose central differences are exact."""
    a, b = 1.5, 0.25
    x = np.linspace(-1, 1, 9)
    S._write_h5(tmp_path / "one.h5", {"xcoordinates": x, "loss": a * x**2, "done": np.ones(9, np.uint8)},
                {"config_hash": "x"})
    m1 = S.surface_metrics(tmp_path / "one.h5")
    gx = np.abs(2 * a * x[1:-1])
    assert m1["mean_absolute_gradient"] == pytest.approx(gx.mean(), rel=1e-12)
    assert m1["average_gradient"] == pytest.approx(gx.mean(), rel=1e-12)
    assert m1["surface_curvature"] == pytest.approx(2 * a, rel=1e-9)
    X, Y = np.meshgrid(x, x, indexing="ij")
    S._write_h5(tmp_path / "two.h5", {"xcoordinates": x, "ycoordinates": x, "loss": a * X**2 + b * Y**2,
                                      "done": np.ones((9, 9), np.uint8)}, {"config_hash": "x"})
    m2 = S.surface_metrics(tmp_path / "two.h5")
    Xi, Yi = X[1:-1, 1:-1], Y[1:-1, 1:-1]
    assert m2["mean_absolute_gradient"] == pytest.approx(np.mean((np.abs(2 * a * Xi) + np.abs(2 * b * Yi)) / 2))


def test_figures_say_what_their_axes_are_in_every_format(llama_dir, text_data, tmp_path):
    """A random plane: α along d₁ / β along d₂, filter-normalised; a --to line: 0 = base → 1 = tuned;
    the loss with its unit and a colorbar; the checkpoint and data named. HTML (plotly) and the
    paper formats (matplotlib; text kept as text in SVG and PDF)."""
    run = CliRunner().invoke
    plane, line = tmp_path / "plane.h5", tmp_path / "line.h5"
    tuned = tmp_path / "tuned"
    shutil.copytree(llama_dir, tuned)
    for args in (["--x", "-1:1:3", "--y", "-1:1:3", "--out", plane], ["--to", tuned, "--x", "0:1:3", "--out", line]):
        r = run(cli, ["surface", str(llama_dir), "--data", str(text_data), *map(str, args)])
        assert r.exit_code == 0, r.output
    base, to = "/".join(llama_dir.parts[-2:]), "/".join(tuned.parts[-2:])
    want = ["α along d₁ (random, filter-normalised)", "β along d₂ (random, filter-normalised)",
            f"0 = {base} → 1 = {to}", "loss (nats/token)", f"{base} on {'/'.join(text_data.parts[-2:])}"]
    r = run(cli, ["plot", str(plane), str(line), "--out", str(tmp_path / "f.svg")])
    assert r.exit_code == 0, r.output
    svg = (tmp_path / "f.svg").read_text()
    for text in want:
        assert text in svg, text
    assert run(cli, ["plot", str(plane), str(line), "--out", str(tmp_path / "f.html")]).exit_code == 0
    html_page = (tmp_path / "f.html").read_text().replace("\\u002f", "/")  # plotly's JSON writes / as \u002f
    for text in want:
        assert json.dumps(text)[1:-1] in html_page or text in html_page, text
    assert '"title":{"side":"right","text":"loss(nats/token)"}' in html_page.replace(" ", "")  # the colorbar's
    for fmt, magic in (("pdf", b"%PDF"), ("png", b"\x89PNG")):
        r = run(cli, ["plot", str(plane), "--out", str(tmp_path / f"f.{fmt}")])
        assert r.exit_code == 0 and (tmp_path / f"f.{fmt}").read_bytes()[:4] == magic
    r = run(cli, ["plot", str(plane), "--out", str(tmp_path / "g.fig"), "--format", "pdf", "--json"])
    assert json.loads(r.stdout)["format"] == "pdf" and (tmp_path / "g.fig").read_bytes()[:4] == b"%PDF"
