import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from landscape.foundation import checkpoint, data
from landscape.measures import sharpness
from landscape.cli.main import cli
from landscape.foundation.errors import UserError
from landscape.foundation.configs import SharpnessConfig
from landscape.foundation.objective import FunctionObjective


def diag_quadratic(a, m, w0):
    """L(w) = ½ Σ a_i (w_i − m_i)², separable: box maxima are per-coordinate closed forms."""
    a, m = torch.tensor(a, dtype=torch.float64), torch.tensor(m, dtype=torch.float64)
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    return FunctionObjective(lambda: 0.5 * (a * (w - m) ** 2).sum(), [w]), a, m, w


def test_eps_sharpness_matches_closed_form_on_a_separable_quadratic():
    obj, a, m, w = diag_quadratic([4.0, 1.0, 0.25, 9.0], [0.3, -0.2, 1.5, 0.0], [0.25, 0.1, 1.0, 0.02])
    eps = 0.05
    c = eps * (w.detach().abs() + 1)
    L0 = float(0.5 * (a * (w.detach() - m) ** 2).sum())
    Lmax = float(0.5 * (a * ((w.detach() - m).abs() + c) ** 2).sum())  # the farther endpoint of each box side
    r = sharpness.eps_sharpness(obj, eps=eps, steps=10)
    assert r["eps_sharpness"] == pytest.approx(100 * (Lmax - L0) / (1 + L0), rel=1e-9)
    assert torch.equal(w.detach(), torch.tensor([0.25, 0.1, 1.0, 0.02], dtype=torch.float64))


@pytest.mark.parametrize("steps", [4, 7, 130])
def test_eps_sharpness_follows_projected_sign_ascent_with_z_held_as_integers(steps):
    """z is held as an integer count of box steps (int8, int16 beyond 127 steps), the box recomputed
    from the saved weights: the same iterates as projected sign ascent on a float z — here on a
    non-separable quadratic whose ascent turns back (some coordinates' gradient signs flip)."""
    g = torch.Generator().manual_seed(0)
    M = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = M @ M.T - 2.0 * torch.eye(6, dtype=torch.float64)  # indefinite: the maximiser is not one corner away
    w0 = torch.randn(6, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone())
    f = lambda x: 0.5 * x @ A @ x + x.sum()  # noqa: E731
    obj = FunctionObjective(lambda: f(w), [w])
    eps = 0.3
    b = eps * (w0.abs() + 1)
    z, best, flips, prev = torch.zeros(6, dtype=torch.float64), float(f(w0)), 0, None
    for t in range(steps + 1):
        x = w0 + z
        best = max(best, float(f(x)))
        if t == steps:
            break
        s = torch.sign(A @ x + 1.0)
        flips += 0 if prev is None else int((s != prev).sum())
        prev = s
        z = torch.clamp(z + (2.0 / steps) * b * s, -b, b)
    r = sharpness.eps_sharpness(obj, eps=eps, steps=steps)
    L0 = float(f(w0))
    assert r["eps_sharpness"] == pytest.approx(100 * (best - L0) / (1 + L0), rel=1e-12)
    assert torch.equal(w.detach(), w0)
    assert flips > 0  # the case exercises a turn-back


def test_eps_subspace_is_positive_and_full_space_reaches_the_box_maximum():
    """Full space: the closed-form box maximum of a separable quadratic (the subspace's box |y| ≤
    ε(|A⁺w| + 1) is not inside the full box, so no ordering between the two is a theorem); the
    random-subspace ascent from w, in a convex bowl, goes uphill."""
    obj, a, m, w = diag_quadratic(list(np.linspace(0.5, 3, 12)), [0.0] * 12, list(np.linspace(-1, 1, 12)))
    c = 0.1 * (w.detach().abs() + 1)
    L0 = float(0.5 * (a * (w.detach() - m) ** 2).sum())
    Lmax = float(0.5 * (a * ((w.detach() - m).abs() + c) ** 2).sum())
    full = sharpness.eps_sharpness(obj, eps=0.1, steps=10)["eps_sharpness"]
    sub = sharpness.eps_sharpness(obj, eps=0.1, steps=10, subspace=3, seed=1)["eps_sharpness"]
    assert full == pytest.approx(100 * (Lmax - L0) / (1 + L0), rel=1e-9)
    assert sub > 0


def test_eps_step_counts_do_not_wrap_at_the_int8_limit():
    """k moves by ±2 before its clamp: at 126 steps int8 would wrap 127 + 2 to −127; the counts widen
    to int16 from 126 steps, and a monotone ascent ends on the box's far corner."""
    assert sharpness._count_dtype(125) == torch.int8 and sharpness._count_dtype(126) == torch.int16
    obj, a, m, w = diag_quadratic([1.0, 2.0], [0.0, 0.0], [0.5, -0.5])
    c = 0.01 * (w.detach().abs() + 1)
    L0 = float(0.5 * (a * w.detach() ** 2).sum())
    Lmax = float(0.5 * (a * (w.detach().abs() + c) ** 2).sum())
    for steps in (125, 126, 127):
        r = sharpness.eps_sharpness(obj, eps=0.01, steps=steps)
        assert r["max_loss"] == pytest.approx(Lmax, rel=1e-12), steps


def test_sam_sharpness_at_a_minimum_is_half_rho_squared_lambda_max():
    """At the minimum of ½ wᵀAw the worst point on the ρ-ball is ρ·u_max: S = ½ρ²λ_max."""
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    lam = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01], dtype=torch.float64)
    A = U @ torch.diag(lam) @ U.T
    w = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))
    obj = FunctionObjective(lambda: 0.5 * w @ A @ w, [w])
    rho = 0.1
    r = sharpness.ball_sharpness(obj, rho=rho, steps=60)
    assert r["sharpness"] == pytest.approx(0.5 * rho**2 * 5.0, rel=1e-3)
    assert r["sharpness"] <= 0.5 * rho**2 * 5.0 * (1 + 1e-12)  # never beyond the true maximum


def test_one_step_sam_sharpness_is_the_sam_perturbation():
    obj, a, m, w = diag_quadratic([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.5])
    g = a * (w.detach() - m)
    rho = 0.2
    delta = rho * g / g.norm()
    expect = float(0.5 * (a * (w.detach() + delta - m) ** 2).sum() - 0.5 * (a * (w.detach() - m) ** 2).sum())
    assert sharpness.ball_sharpness(obj, rho=rho, steps=1)["sharpness"] == pytest.approx(expect, rel=1e-12)
    # ASAM: δ = ρ T² g / ‖T g‖ with T = |w| + η
    T = w.detach().abs() + 0.01
    d2 = rho * T**2 * g / (T * g).norm()
    expect2 = float(0.5 * (a * (w.detach() + d2 - m) ** 2).sum() - 0.5 * (a * (w.detach() - m) ** 2).sum())
    assert sharpness.ball_sharpness(obj, rho=rho, steps=1, adaptive=True)["sharpness"] == pytest.approx(expect2, rel=1e-12)


def test_avg_sharpness_is_half_sigma_squared_trace():
    a = list(np.linspace(0.5, 4.0, 30))
    obj, *_ = diag_quadratic(a, [0.0] * 30, [0.1] * 30)
    sigma = 0.05
    r = sharpness.avg_sharpness(obj, sigma=sigma, samples=400, seed=0)
    assert abs(r["avg_sharpness"] - 0.5 * sigma**2 * sum(a)) < 4 * r["stderr"]


def test_unknown_metric_is_a_user_error():
    with pytest.raises(UserError, match="unknown metric"):
        SharpnessConfig(metrics="lambda_max,flatness")


def test_measure_leaves_weights_bit_identical(tiny_ckpts, text_data):
    ck = checkpoint.load_checkpoint(tiny_ckpts["gpt2"])
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=3)
    before = {n: p.detach().clone() for n, p in ck.model.named_parameters()}
    cfg = SharpnessConfig(metrics="lambda_max,lambda_min,trace,eps,sam,asam,avg,eps_subspace,density", max_iter=10,
                          trace_samples=3, avg_samples=3, eps_steps=2, subspace=2, per_layer=True)
    r = sharpness.measure(ck.model, bs, cfg)
    for n, p in ck.model.named_parameters():
        assert torch.equal(before[n], p), n
        assert p.grad is None
    m = r["metrics"]
    assert m["lambda_max"] >= m["lambda_min"]
    assert set(m["per_layer"]) == {"layer.0", "layer.1", "other"}
    assert r["cost"]["hvps"] > 0


def test_cli_sharpness_json(llama_dir, text_data):
    r = CliRunner().invoke(cli, ["sharpness", str(llama_dir), "--data", str(text_data), "--metrics",
                                 "lambda_max,trace", "--top-k", "2", "--trace-samples", "4", "--max-iter", "15",
                                 "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out) >= {"checkpoint", "fingerprint", "loss", "tokens", "metrics", "config", "cost"}
    assert set(out["metrics"]) - {"details"} == {"lambda_max", "eigenvalues", "hessian_trace", "hessian_trace_stderr"}
    assert len(out["metrics"]["eigenvalues"]) == 2 and out["cost"]["hvps"] > 0


@pytest.mark.parametrize("args,match", [(["--metrics", "nope"], "unknown metric"),
                                        (["--params", "nomatch_xyz"], "matches no trainable parameter"),
                                        (["--params", "("], "not a valid regular expression"),
                                        (["--top-k", "0"], "--top-k")])
def test_cli_sharpness_bad_options_exit_2(llama_dir, text_data, args, match):
    r = CliRunner().invoke(cli, ["sharpness", str(llama_dir), "--data", str(text_data), *args])
    assert r.exit_code == 2 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output


def test_measurements_leave_no_autograd_graph_alive(llama_dir, text_data):
    """The memory plan's activation probe and the kept-graph decision run a forward under saved-tensor
    hooks; a pack hook that handed back the tensor itself closed a cycle through the C++ graph that
    gc cannot break, so every measurement leaked one graph (the real study's process grew ~0.9 GB per
    checkpoint). After a measurement (exact HVPs with a kept graph, the plan, SAM, ε) and gc, no
    tensor that carries a graph is alive, and the live tensors are those before it."""
    import gc

    from landscape.foundation.configs import DataConfig
    from landscape.foundation.plan import activation_bytes

    ck = checkpoint.load_checkpoint(llama_dir)
    bs = data.batches_for(ck, DataConfig(data=str(text_data), batch_size=4))

    def live():
        gc.collect()
        ts = [o for o in gc.get_objects() if torch.is_tensor(o)]
        return len(ts), sum(t.grad_fn is not None for t in ts)

    before = live()
    assert activation_bytes(ck.model, bs.batches) > 0
    sharpness.measure(ck.model, bs, SharpnessConfig(metrics=("lambda_max", "sam", "eps"), max_iter=5,
                                                    hvp_method="reverse", cache_graph="auto"))
    assert live() == before
