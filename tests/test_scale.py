"""Curvature at scale: the bounded basis (memory/disk), thick-restart Lanczos, Hutch++/XTrace,
SLQ without a basis, lean sharpness measures. Every check is against an exact answer."""

import os

import numpy as np
import pytest
import torch

from landscape.foundation import params as P
from landscape.foundation.configs import ConfigError, SharpnessConfig
from landscape.foundation.objective import ModelObjective as Objective
from landscape.measures import hessian, sharpness
from landscape.measures.hessian import Basis, BasisPolicy
from tests.test_hessian import Diagonal, dense_hessian, symmetric, tiny64  # noqa: F401  (fixture)


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_basis_algebra_equals_dense_numpy(where, tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 300_000  # several chunks of 65,536 in memory
    vs = [torch.randn(n, generator=g) for _ in range(5)]
    with Basis(n, 6, torch.float32, "cpu", where, str(tmp_path)) as B:
        for v in vs:
            B.append(v)
        M = torch.stack(vs).double()
        w = torch.randn(n, generator=g)
        scale = float(M.abs().sum(1).max() * w.abs().max())  # Σ|a_i w_i| bounds a dot's rounding
        np.testing.assert_allclose(B.project(w), (M @ w.double()).numpy(), rtol=0, atol=1e-7 * scale)
        h = np.array([0.5, -1.0, 2.0, 0.0, 3.0])
        w2 = w.clone()
        B.subtract(w2, h)
        np.testing.assert_allclose(w2.double().numpy(), (w.double() - M.T @ torch.tensor(h)).numpy(), atol=1e-4)
        S = np.random.default_rng(0).standard_normal((5, 3))
        B.combine(S)
        assert len(B) == 3
        for i in range(3):
            np.testing.assert_allclose(B.row(i).double().numpy(), (M.T @ torch.tensor(S[:, i])).numpy(), atol=1e-4)
    assert os.listdir(tmp_path) == []  # a disk basis leaves nothing behind


def test_basis_inner_products_are_accurate_at_millions_of_entries():
    """A float32 dot over 4.2M coherent entries is accurate to < 1e-7 relative (torch.dot's error
    grows with length: 3e-7 here, 1.7e-3 at 30M entries on this CPU build)."""
    n = 4_200_000
    g = torch.Generator().manual_seed(1)
    a = torch.rand(n, generator=g) + 0.5
    with Basis(n, 1, torch.float32, "cpu") as B:
        B.append(a)
        got = B.project(a)[0]
    exact = float((a.double() ** 2).sum())
    assert got == pytest.approx(exact, rel=1e-7)


@pytest.mark.parametrize("max_basis,where", [(None, "auto"), (10, "memory"), (10, "disk"), (11, "disk")])
def test_thick_restart_lanczos_gives_the_exact_eigenvalues(max_basis, where):
    eigs = [9.0, 8.7, 8.5, 8.4, 8.3, -4.0, -3.9] + list(np.linspace(-1.0, 1.0, 293))
    op = hessian.DenseOperator(symmetric(eigs, seed=5))
    truth = np.sort(eigs)
    sp = hessian.lanczos(op, k=5, tol=1e-10, max_iter=2000, basis=BasisPolicy(max_basis=max_basis, where=where))
    assert sp.converged
    np.testing.assert_allclose(sp.eigenvalues, truth[::-1][:5], rtol=1e-9)
    assert sp.lambda_min == pytest.approx(truth[0], rel=1e-9)
    assert sp.basis["where"] == ("memory" if where == "auto" else where)
    if max_basis:
        assert sp.max_basis <= max_basis and sp.restarts >= 1
        assert all(r <= 1e-10 * abs(e) for r, e in zip(sp.residuals, sp.eigenvalues))


@pytest.fixture(scope="module")
def dense64(tiny64):  # noqa: F811
    """The tiny model's dense Hessian, computed once for this module (~30 s)."""
    return dense_hessian(*tiny64)


@pytest.mark.parametrize("policy", [BasisPolicy(max_basis=12, where="disk"), BasisPolicy(reorth="none")],
                         ids=["thick-restart-disk", "no-basis"])
def test_bounded_lanczos_on_a_tiny_transformer_equals_the_dense_hessian(tiny64, dense64, policy):  # noqa: F811
    model, bs = tiny64
    truth = torch.linalg.eigvalsh(dense64).numpy()
    op = hessian.HessianOperator(Objective(model, bs))
    # HF's RMSNorm computes in float32 inside this float64 model: HVPs are exact to ~1e-7 relative,
    # so that is as far as a residual can go
    sp = hessian.lanczos(op, k=3, tol=1e-6, max_iter=1000, basis=policy)
    assert sp.converged
    assert sp.restarts >= 1 if policy.reorth == "auto" else sp.basis["where"] == "none"
    np.testing.assert_allclose(sp.eigenvalues, truth[::-1][:3], rtol=1e-5)
    assert sp.lambda_min == pytest.approx(truth[0], rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lanczos_without_a_basis_merges_ghosts_and_finds_close_eigenvalues(seed):
    """Three vectors, no reorthogonalisation: converged eigenvalues come back as copies ("ghosts"),
    which are merged; close (9.0/8.99) top eigenvalues and two near the bulk's edge are all found,
    exactly."""
    eigs = [10.0, 9.0, 8.99, 2.3, 2.2, -5.0, -4.9] + list(np.linspace(-2.0, 2.0, 593))
    op = hessian.DenseOperator(symmetric(eigs, seed=10 + seed))
    truth = np.sort(eigs)
    sp = hessian.lanczos(op, k=5, tol=1e-10, max_iter=3000, seed=seed, basis=BasisPolicy(reorth="none"))
    assert sp.converged and sp.basis["where"] == "none"
    np.testing.assert_allclose(sp.eigenvalues, truth[::-1][:5], rtol=1e-9)
    assert sp.lambda_min == pytest.approx(truth[0], rel=1e-9)
    full = hessian.lanczos(op, k=5, tol=1e-10, max_iter=3000, seed=seed, basis=BasisPolicy(reorth="full"))
    assert sp.hvps > full.hvps  # copies take steps: the price of holding no basis


class Noisy:
    """A·v plus a fresh random error of norm δ per product, as a float32 HVP of a large model has."""

    def __init__(self, A, delta):
        self.A, self.delta, self.g = A, delta, torch.Generator().manual_seed(99)
        self.shape, self.dtype, self.device, self.blocks = tuple(A.shape), A.dtype, A.device, [torch.Size([A.shape[0]])]

    def matvec(self, v):
        e = torch.randn(self.shape[0], generator=self.g, dtype=self.A.dtype)
        return self.A @ v + self.delta * e / e.norm()


@pytest.mark.parametrize("seed", [3, 4])
def test_lanczos_without_a_basis_merges_copies_that_differ_by_the_products_noise(seed):
    """With products accurate only to δ, ghost copies of λ_max converge to values δ apart; the merge
    window uses the measured noise, so the answer is five distinct eigenvalues, each within a few δ."""
    eigs = [10.0, 9.0, 8.0, 7.0, 6.0, -5.0] + list(np.linspace(-2.0, 2.0, 594))
    delta = 1e-6 * 10
    op = Noisy(symmetric(eigs, seed=seed), delta)
    sp = hessian.lanczos(op, k=5, tol=1e-9, max_iter=2000, seed=seed, basis=BasisPolicy(reorth="none"))
    assert sp.converged
    assert delta / 3 < sp.noise < 3 * delta
    np.testing.assert_allclose(sp.eigenvalues, [10.0, 9.0, 8.0, 7.0, 6.0], atol=20 * delta)
    assert sp.lambda_min == pytest.approx(-5.0, abs=20 * delta)


def test_float32_thick_restart_on_disk_keeps_accuracy_at_millions_of_entries():
    n = 4_200_000
    g = torch.Generator().manual_seed(0)
    d = torch.rand(n, generator=g) * 2 - 1
    d[:5] = torch.tensor([10.0, 9.0, 8.0, 7.5, 7.0])
    d[5] = -3.0
    for policy in (BasisPolicy(max_basis=12, where="disk"), BasisPolicy(reorth="none")):
        sp = hessian.lanczos(Diagonal(d), k=3, tol=1e-6, max_iter=600, seed=1, basis=policy)
        assert sp.converged and sp.basis["where"] == ("disk" if policy.reorth == "auto" else "none")
        np.testing.assert_allclose(sp.eigenvalues, [10.0, 9.0, 8.0], rtol=1e-5)
        assert sp.lambda_min == pytest.approx(-3.0, rel=1e-5)


def test_default_basis_goes_to_disk_when_it_does_not_fit_the_budget(monkeypatch):
    op = hessian.DenseOperator(symmetric(list(np.linspace(-1, 3, 100)), seed=1))
    vec = 100 * 8
    assert hessian.basis.choose_basis(op, BasisPolicy(budget=200 * vec), 1, 100) == (100, "memory")
    assert hessian.basis.choose_basis(op, BasisPolicy(budget=30 * vec), 1, 100) == (20, "memory")
    assert hessian.basis.choose_basis(op, BasisPolicy(budget=5 * vec), 1, 100) == (20, "disk")
    assert hessian.basis.choose_basis(op, BasisPolicy(budget=5 * vec), 8, 100) == (11, "memory")  # top-k
    with monkeypatch.context() as m:
        m.setattr(hessian.basis, "_spare", lambda device, vec: 0)  # not even that fits
        assert hessian.basis.choose_basis(op, BasisPolicy(budget=5 * vec), 8, 100) == (26, "disk")
        sp = hessian.lanczos(op, k=1, tol=1e-10, max_iter=300, basis=BasisPolicy(budget=5 * vec, reorth="full"))
    assert sp.basis["where"] == "disk" and sp.converged
    assert sp.lambda_max == pytest.approx(3.0, rel=1e-10)
    # "auto" drops the basis altogether for λ_max/λ_min when it does not fit in memory
    sp = hessian.lanczos(op, k=1, tol=1e-10, max_iter=300, basis=BasisPolicy(budget=5 * vec))
    assert sp.basis["where"] == "none" and sp.converged
    assert sp.lambda_max == pytest.approx(3.0, rel=1e-10)
    # ... but never for a top-k (copies are not reliably merged at scale): the top k with the smallest
    # thick-restart basis (k + 3), in memory when half the free memory holds it, then λ_min alone
    # without a basis, as λ_max above
    sp = hessian.lanczos(op, k=3, tol=1e-6, max_iter=3000, basis=BasisPolicy(budget=5 * vec))
    assert sp.basis == {"where": "memory", "capacity": 6, "bytes": 6 * vec,
                        "lambda_min": "no basis (two vectors)"} and sp.converged
    np.testing.assert_allclose(sp.eigenvalues, np.linspace(-1, 3, 100)[::-1][:3], rtol=1e-5)
    assert sp.lambda_min == pytest.approx(-1.0, rel=1e-5) and sp.residual_min <= 1e-6
    assert sp.max_basis <= 6 and sp.restarts >= 1


# --------------------------------------------------------------------------------------- traces

TRACES = [hessian.hutchinson_trace, hessian.hutchpp_trace, hessian.xtrace]


@pytest.mark.parametrize("fn", [hessian.hutchpp_trace, hessian.xtrace])
def test_sketched_traces_are_exact_on_low_rank_matrices(fn):
    A = symmetric([5.0, 4.0, -3.0, 2.0, 1.0] + [0.0] * 195, seed=4)
    t = fn(hessian.DenseOperator(A), 30, seed=0)
    assert t.trace == pytest.approx(float(A.trace()), abs=1e-9)
    assert t.hvps <= 30 and t.method in ("hutchpp", "xtrace")


@pytest.mark.parametrize("fn", TRACES)
def test_traces_are_unbiased_with_honest_standard_errors(fn):
    A = symmetric(list(np.random.default_rng(0).uniform(-1, 3, 150)), seed=6)
    truth = float(A.trace())
    runs = [fn(hessian.DenseOperator(A), 24, seed=s) for s in range(40)]
    est = np.array([r.trace for r in runs])
    assert abs(est.mean() - truth) < 4 * est.std(ddof=1) / np.sqrt(len(est))
    ratio = np.mean([r.stderr for r in runs]) / est.std(ddof=1)
    assert 0.5 < ratio < 2.0  # the reported standard error is about the real spread


def test_sketched_traces_win_on_a_decaying_spectrum_and_hutchinson_does_not_lose_on_a_flat_one():
    decaying = symmetric(list(100 * 0.6 ** np.arange(200)), seed=7)
    flat = symmetric(list(np.random.default_rng(1).uniform(0.5, 1.5, 200)), seed=8)
    err = {}
    for name, A in (("decaying", decaying), ("flat", flat)):
        for fn in TRACES:
            e = [fn(hessian.DenseOperator(A), 30, seed=s).trace - float(A.trace()) for s in range(20)]
            err[name, fn.__name__] = float(np.sqrt(np.mean(np.square(e))))
    assert err["decaying", "hutchpp_trace"] < 0.1 * err["decaying", "hutchinson_trace"]
    assert err["decaying", "xtrace"] < 0.1 * err["decaying", "hutchinson_trace"]
    assert err["flat", "hutchinson_trace"] < err["flat", "hutchpp_trace"]


def test_sketched_traces_on_a_tiny_transformers_dense_hessian(tiny64, dense64):  # noqa: F811
    """On a 96-parameter block the sketches span everything at ≥ 3n (Hutch++) / 2(n+1) (XTrace)
    products: the trace is then exact; at a small budget it lies within a few standard errors."""
    model, bs = tiny64
    sel = P.select(model, r"mlp\.down_proj")
    H = dense64
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    offsets = np.cumsum([0] + sizes)
    idx = [j for n, a, b in zip(names, offsets, offsets[1:]) if n in sel for j in range(a, b)]
    block = H[idx][:, idx]
    truth, scale = float(torch.trace(block)), float(block.norm())  # the trace nearly cancels here
    n = len(idx)
    op = hessian.HessianOperator(Objective(model, bs, sel))
    assert hessian.hutchpp_trace(op, 3 * n + 3).trace == pytest.approx(truth, abs=1e-6 * scale)
    assert hessian.xtrace(op, 2 * (n + 2)).trace == pytest.approx(truth, abs=1e-6 * scale)
    for fn in TRACES:
        t = fn(op, 30, seed=1)
        assert abs(t.trace - truth) < 5 * t.stderr + 1e-6 * scale


def test_trace_method_is_a_checked_setting():
    with pytest.raises(ConfigError, match="trace_samples: xtrace needs at least 4"):
        SharpnessConfig(trace_method="xtrace", trace_samples=3)
    with pytest.raises(ConfigError, match="unknown trace method"):
        SharpnessConfig(trace_method="hutch")


# ---------------------------------------------------------------------------------------- density

@pytest.mark.parametrize("reorth", ["full", "none"])
def test_density_quadrature_reproduces_the_moments(reorth):
    """SLQ is a Gauss rule: with 40 steps Σ τ θ^p = mean_v vᵀAᵖv for p ≤ 79 in exact arithmetic;
    the low moments hold with and without reorthogonalisation (ghost copies do not change them)."""
    eigs = np.concatenate([[12.0, 11.0], np.linspace(-2, 2, 298)])
    A = symmetric(list(eigs), seed=9)
    d = hessian.spectral_density(hessian.DenseOperator(A), n_vectors=3, steps=40, seed=0,
                                 basis=BasisPolicy(reorth=reorth))
    assert d.reorth == reorth and d.hvps == 120
    nodes, w = np.array(d.nodes), np.array(d.weights)
    vs = [hessian.operator.random_unit(hessian.DenseOperator(A), torch.Generator().manual_seed(1000 * (i + 1)))
          for i in range(3)]
    for p in (1, 2, 3):
        want = np.mean([float(v @ torch.linalg.matrix_power(A, p) @ v) for v in vs])
        assert (w * nodes ** p).sum() == pytest.approx(want, rel=1e-8)


def test_density_auto_drops_the_basis_when_it_does_not_fit(monkeypatch):
    monkeypatch.setattr(hessian.basis, "default_budget", lambda device: 10 * 100 * 8)
    op = hessian.DenseOperator(symmetric(list(np.linspace(-1, 1, 100)), seed=1))
    assert hessian.spectral_density(op, n_vectors=1, steps=40).reorth == "none"
    assert hessian.spectral_density(op, n_vectors=1, steps=8).reorth == "full"


# ---------------------------------------------------------------------------------- lean measures

def test_params_subset_freezes_the_rest_during_the_measurement_and_restores_the_flags(tiny64):  # noqa: F811
    model, bs = tiny64
    seen = []
    orig = hessian.HessianOperator.matvec

    def spy(self, v):
        seen.append({n for n, p in model.named_parameters() if p.requires_grad})
        return orig(self, v)

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hessian.HessianOperator.matvec = spy
    try:
        r = sharpness.measure(model, bs, SharpnessConfig(metrics=("lambda_max",), params=r"mlp\.down_proj", tol=1e-8))
    finally:
        hessian.HessianOperator.matvec = orig
    assert seen and all(s == set(P.select(model, r"mlp\.down_proj")) for s in seen)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    sp = hessian.lanczos(hessian.HessianOperator(Objective(model, bs, P.select(model, r"mlp\.down_proj"))),
                         tol=1e-8, want_min=False)
    assert r["metrics"]["lambda_max"] == pytest.approx(sp.lambda_max, rel=1e-6)


def test_matched_eps_puts_the_box_corner_at_distance_rho(tiny64):  # noqa: F811
    model, bs = tiny64
    ps = list(model.parameters())
    eps = sharpness.matched_eps(ps, 0.05)
    corner = sum(float(((eps * (p.detach().abs() + 1)) ** 2).sum()) for p in ps) ** 0.5
    assert corner == pytest.approx(0.05, rel=1e-12)
    r = sharpness.measure(model, bs, SharpnessConfig(metrics=("eps", "sam"), sam_steps=5, eps_steps=10))
    d = r["metrics"]["details"]["eps"]
    assert d["eps"] == pytest.approx(eps) and d["eps_rule"].startswith("matched")
    assert r["metrics"]["eps_sharpness"] / 100 * (1 + r["loss"]) <= r["metrics"]["sam_sharpness"] + 1e-9


def test_average_sharpness_draws_the_same_noise_parameter_by_parameter(tiny64):  # noqa: F811
    """The lean per-parameter draw gives bit for bit the numbers of a whole-vector float64 draw."""
    model, bs = tiny64
    obj = Objective(model, bs)
    got = sharpness.avg_sharpness(obj, sigma=0.01, samples=3, seed=4)
    g = torch.Generator().manual_seed(4)
    want = []
    with P.perturbed(obj.params) as origin:
        L0 = obj.value()
        for _ in range(3):
            d = [di * 0.01 for di in P.randn_like(obj.params, g, dtype=torch.float64)]
            P.set_offset(obj.params, origin, d)
            want.append(obj.value() - L0)
    assert got["avg_sharpness"] == float(np.mean(want))


# ------------------------------------------------------------------------- against ARPACK (slow)

@pytest.mark.slow
def test_float32_extreme_eigenvalues_match_float64_arpack_on_a_4m_parameter_model(tokenizer):
    """λ_max and λ_min of a 4M-parameter Llama: our float32 Lanczos, with a basis and with two
    vectors, within 1e-5 relative of scipy's ARPACK over the same weights in float64; with fd
    products within 1e-4."""
    import copy
    import tempfile
    from pathlib import Path

    import scipy.sparse.linalg as sla

    from landscape.foundation import data, toy
    from tests.conftest import WORDS, write_jsonl

    cfg = toy.tiny_config("llama", len(tokenizer), tokenizer=tokenizer, hidden=256, layers=6, heads=4)
    texts = [{"text": " ".join(WORDS[i::5][:30])} for i in range(8)]
    bs = data.load_batches(write_jsonl(Path(tempfile.mkdtemp()) / "d.jsonl", texts), tokenizer, batch_size=8)
    model32 = toy.build_model(cfg, seed=0, dtype=torch.float32)
    op64 = hessian.HessianOperator(Objective(copy.deepcopy(model32).double(), bs))  # the same weights
    n = op64.shape[0]
    assert n > 3_900_000
    A = sla.LinearOperator((n, n), dtype=np.float64,
                           matvec=lambda x: op64.matvec(torch.from_numpy(np.ascontiguousarray(x).ravel())).numpy())
    v0 = np.random.default_rng(0).standard_normal(n)
    ref = (sla.eigsh(A, k=1, which="LA", tol=1e-12, v0=v0, return_eigenvectors=False)[0],
           sla.eigsh(A, k=1, which="SA", tol=1e-12, v0=v0, return_eigenvectors=False)[0])
    op64.release()
    op = hessian.HessianOperator(Objective(model32, bs))
    for reorth in ("full", "none"):
        sp = hessian.lanczos(op, k=1, tol=1e-7, max_iter=1000, basis=BasisPolicy(reorth=reorth))
        assert sp.converged
        print(reorth, sp.hvps, sp.lambda_max, sp.lambda_min, "ARPACK float64", ref)
        assert sp.lambda_max == pytest.approx(ref[0], rel=1e-5)
        assert sp.lambda_min == pytest.approx(ref[1], rel=1e-5)
    # finite-difference products (two float32 gradients each, no second-order graph), no basis:
    # within 1e-4 of float64 ARPACK (measured 4.3e-6 / 8e-6 from the exact float32 run)
    fd = hessian.lanczos(hessian.HessianOperator(Objective(model32, bs), "fd"), k=1, tol=1e-5, max_iter=1000,
                         basis=BasisPolicy(reorth="none"))
    print("fd", fd.hvps, fd.lambda_max, fd.lambda_min, fd.noise)
    assert fd.converged and fd.basis["capacity"] == 2
    assert fd.lambda_max == pytest.approx(ref[0], rel=1e-4)
    assert fd.lambda_min == pytest.approx(ref[1], rel=1e-4)
