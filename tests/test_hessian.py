import numpy as np
import pytest
import torch

from landscape.foundation import checkpoint, data, params as P, toy
from landscape.measures import hessian
from landscape.foundation.configs import DataConfig
from landscape.foundation.objective import FunctionObjective, ModelObjective as Objective
from tests.conftest import write_jsonl


def quadratic(eigs, seed=0, dtype=torch.float64):
    """L(w) = ½ (w − c)ᵀ A (w − c) with A = U diag(eigs) Uᵀ; at any w, H = A exactly."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigs)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = (U @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ U.T).to(dtype)
    c = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    w = torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64).to(dtype))
    return FunctionObjective(lambda: 0.5 * (w - c) @ A @ (w - c), [w]), A


def test_hvp_is_exact_on_a_quadratic():
    obj, A = quadratic(np.linspace(-2, 7, 20))
    v = [torch.randn(20, dtype=torch.float64)]
    torch.testing.assert_close(hessian.HessianOperator(obj).hvp(v)[0], A @ v[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_and_lambda_min_on_a_quadratic(method):
    eigs = [10.0, 7.0, 4.0, -3.0] + list(np.linspace(-1.0, 2.0, 26))
    obj, _ = quadratic(eigs)
    fn = hessian.lanczos if method == "lanczos" else hessian.power_iteration
    sp = fn(hessian.HessianOperator(obj), k=3, tol=1e-8, max_iter=500)
    assert sp.converged
    np.testing.assert_allclose(sp.eigenvalues, [10.0, 7.0, 4.0], rtol=1e-6)
    assert sp.lambda_min == pytest.approx(-3.0, rel=1e-6)
    assert sp.hvps > 0


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_indefinite_largest_magnitude_is_negative_but_lambda_max_is_right(method):
    eigs = [-9.0, 3.0, 2.5, 1.0, 0.5, -0.5, 0.1, -2.0]
    obj, _ = quadratic(eigs, seed=1)
    fn = hessian.lanczos if method == "lanczos" else hessian.power_iteration
    sp = fn(hessian.HessianOperator(obj), k=2, tol=1e-9, max_iter=2000)
    assert sp.lambda_max == pytest.approx(3.0, rel=1e-6)
    assert sp.eigenvalues[1] == pytest.approx(2.5, rel=1e-6)
    assert sp.lambda_min == pytest.approx(-9.0, rel=1e-6)


def test_residual_is_the_stopping_rule():
    """Close eigenvalues: θ stalls long before the vector converges; the residual test keeps going."""
    eigs = [5.0, 4.999] + [1.0] * 30
    obj, A = quadratic(eigs, seed=2)
    sp = hessian.power_iteration(hessian.HessianOperator(obj), k=1, tol=1e-6, max_iter=20, want_min=False)
    assert not sp.converged  # 20 steps cannot separate 5 from 4.999 in the vector
    assert sp.residuals[0] > 1e-6 * 5


def test_trace_exact_in_expectation_and_stderr_small():
    eigs = list(np.linspace(-1, 4, 40))
    obj, A = quadratic(eigs)
    tr = hessian.hutchinson_trace(hessian.HessianOperator(obj), samples=400, seed=3)
    true = float(sum(eigs))
    assert abs(tr.trace - true) < 4 * tr.stderr
    assert tr.stderr < 0.1 * abs(true)
    assert tr.hvps == 400


def test_density_weights_sum_to_one_and_nodes_bracket_spectrum():
    eigs = list(np.linspace(0, 5, 25))
    obj, _ = quadratic(eigs)
    d = hessian.spectral_density(hessian.HessianOperator(obj), n_vectors=3, steps=25, seed=0)
    assert sum(d.weights) == pytest.approx(1.0, rel=1e-9)
    assert min(d.nodes) == pytest.approx(0.0, abs=1e-6) and max(d.nodes) == pytest.approx(5.0, rel=1e-6)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, rel=2e-2)


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory, tokenizer):
    """A ~1k-parameter Llama in float64 and two batches, small enough for the dense Hessian."""
    cfg = toy.tiny_config("llama", len(tokenizer), tokenizer=tokenizer, hidden=8, layers=1, heads=2,
                                 intermediate=12)
    model = toy.build_model(cfg, seed=1, dtype=torch.float64)
    f = write_jsonl(tmp_path_factory.mktemp("d") / "d.jsonl",
                    [{"text": "the cat sat on the mat ."}, {"text": "one plus two is three"},
                     {"prompt": "the dog is", "completion": "red ."}])
    bs = data.load_batches(f, tokenizer, batch_size=2)
    return model, bs


def dense_hessian(model, bs, names=None):
    """torch.autograd.functional.hessian of the loss w.r.t. the parameters ``names`` (default: all),
    in float64 inputs cast to each parameter's dtype — independent of our HVP code."""
    from torch.func import functional_call

    from landscape.foundation.loss import batch_term, total_tokens

    params = dict(model.named_parameters())
    names = list(params) if names is None else list(names)
    flat0 = torch.cat([params[n].detach().double().reshape(-1) for n in names])
    n_tok = total_tokens(bs)

    def f(flat):
        out, i = {}, 0
        for name in names:
            k = params[name].numel()
            out[name] = flat[i:i + k].reshape(params[name].shape).to(params[name].dtype)
            i += k

        class M:
            def __call__(self, **kw):
                return functional_call(model, out, (), kw)

        return sum(batch_term(M(), b, n_tok) for b in bs)

    with hessian.math_attention():
        return torch.autograd.functional.hessian(f, flat0)


def test_against_dense_hessian_on_a_tiny_transformer(tiny64):
    model, bs = tiny64
    before = [p.detach().clone() for p in model.parameters()]
    H = dense_hessian(model, bs)
    truth = torch.linalg.eigvalsh(H).numpy()
    obj = Objective(model, bs)
    sp = hessian.lanczos(hessian.HessianOperator(obj), k=3, tol=1e-9, max_iter=300)
    np.testing.assert_allclose(sp.eigenvalues, truth[::-1][:3], rtol=1e-4)
    assert sp.lambda_min == pytest.approx(truth[0], rel=1e-4)
    assert truth[0] < 0  # a random init is a saddle: lambda_min must be negative here
    tr = float(torch.trace(H))
    est = hessian.hutchinson_trace(hessian.HessianOperator(obj), samples=200, seed=0)
    assert abs(est.trace - tr) < 5 * est.stderr
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)  # measurement leaves the weights bit-identical
    assert all(p.grad is None for p in model.parameters())


def test_forward_over_reverse_equals_double_backward(tiny64):
    model, bs = tiny64
    obj = Objective(model, bs)
    v = P.randn_like(obj.params, torch.Generator().manual_seed(0))
    a = hessian.HessianOperator(obj, "reverse").hvp(v)
    b = hessian.HessianOperator(obj, "forward").hvp(v)
    # HF's RMSNorm computes in float32 even in a float64 model, so float64 HVPs agree to ~1e-7
    # relative, not 1e-15 (both methods differ from the dense Hessian by that much).
    num = sum(float((x - y).norm() ** 2) for x, y in zip(a, b)) ** 0.5
    assert num / float(P.norm(a)) < 1e-6


def test_parameter_subsets_give_the_sub_hessian(tiny64):
    model, bs = tiny64
    H = dense_hessian(model, bs)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    sel = P.select(model, r"mlp\.down_proj")
    idx = []
    i = 0
    for n, k in zip(names, sizes):
        if n in sel:
            idx += list(range(i, i + k))
        i += k
    truth = torch.linalg.eigvalsh(H[idx][:, idx]).numpy()
    sp = hessian.lanczos(hessian.HessianOperator(Objective(model, bs, sel)), k=1, tol=1e-10, max_iter=200)
    assert sp.lambda_max == pytest.approx(truth[-1], rel=1e-6)
    groups = P.layer_groups(model)
    assert list(groups) == ["layer.0", "other"]
    assert set(P.select(model, groups["layer.0"])) | set(P.select(model, groups["other"])) == set(names)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_all_dtypes_run(tiny_ckpts, text_data, dtype):
    ck = checkpoint.load_checkpoint(tiny_ckpts["llama"], dtype=dtype)
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=3)
    sp = hessian.lanczos(hessian.HessianOperator(Objective(ck.model, bs)), k=1, max_iter=8)
    assert np.isfinite(sp.lambda_max) and sp.iterations == 8 or sp.converged


def test_cached_graph_hvp_is_identical_and_rebuilt_when_weights_move(llama_dir, text_data):
    ck = checkpoint.load_checkpoint(llama_dir)
    bs = data.batches_for(ck, DataConfig(data=str(text_data), batch_size=2))
    obj = Objective(ck.model, bs)
    v = P.randn_like(obj.params, torch.Generator().manual_seed(0))
    plain, cached = hessian.HessianOperator(obj, cache_graph="off"), hessian.HessianOperator(obj, cache_graph="on")
    for _ in range(2):  # the second cached call reuses the graph
        for a, b in zip(plain.hvp(v), cached.hvp(v)):
            assert torch.equal(a, b)
    kept = cached._grads
    with torch.no_grad():  # weights moved in place: the kept graph is stale and must be rebuilt
        obj.params[next(i for i, n in enumerate(obj.names) if "mlp" in n)].add_(1.0)
    moved = cached.hvp(v)
    assert cached._grads is not kept
    for a, b in zip(plain.hvp(v), moved):
        assert torch.equal(a, b)


def test_auto_cache_keeps_the_graph_only_when_it_fits(llama_dir, text_data, monkeypatch):
    """auto measures one batch's saved graph, multiplies by the number of batches and keeps the
    graphs only within half the free memory; either way the HVP is bit-identical to the plain one."""
    ck = checkpoint.load_checkpoint(llama_dir)
    bs = data.batches_for(ck, DataConfig(data=str(text_data), batch_size=2))
    obj = Objective(ck.model, bs)
    v = P.randn_like(obj.params, torch.Generator().manual_seed(1))
    ref = hessian.HessianOperator(obj, cache_graph="off").hvp(v)
    probe = hessian.HessianOperator(obj)
    probe.hvp(v)
    need = probe.graph_bytes * len(bs.batches)
    assert probe.graph_bytes > P.nbytes(obj.params) // 100  # activations of a real graph were counted
    for free, keep in ((2 * need, True), (2 * need - 2, False), (None, False)):
        monkeypatch.setattr(P, "free_memory", lambda device, free=free: free)
        h = hessian.HessianOperator(obj)
        for _ in range(2):
            out = h.hvp(v)
            assert all(torch.equal(a, b) for a, b in zip(ref, out))
        assert h.cached is keep and h.graph_bytes == probe.graph_bytes
        assert (h._grads is not None) is keep



def symmetric(eigs, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(eigs)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return U @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ U.T


def test_every_estimator_takes_a_dense_operator():
    """The operator protocol: estimators see only matvec/shape/dtype/blocks, so a plain matrix is
    the exact reference for each of them."""
    eigs = [9.0, 5.0, 2.5, -4.0] + list(np.linspace(-1.0, 1.0, 36))
    A = symmetric(eigs)
    op = hessian.DenseOperator(A)
    truth = np.sort(eigs)
    for fn in (hessian.lanczos, hessian.power_iteration):
        sp = fn(op, k=3, tol=1e-10, max_iter=2000)
        np.testing.assert_allclose(sp.eigenvalues, truth[::-1][:3], rtol=1e-7)
        assert sp.lambda_min == pytest.approx(truth[0], rel=1e-7)
    tr = hessian.hutchinson_trace(op, samples=400, seed=1)
    assert abs(tr.trace - float(A.trace())) < 5 * tr.stderr
    d = hessian.spectral_density(op, n_vectors=2, steps=40, seed=0)
    assert sum(d.weights) == pytest.approx(1.0) and min(d.nodes) >= truth[0] - 1e-8


def test_each_estimator_reports_its_own_products():
    """One operator shared by several estimators: each counts only what it spent (a 5-sample trace
    after a Lanczos run reports 5, not the operator's lifetime count)."""
    obj, _ = quadratic(np.linspace(-2, 7, 20))
    op = hessian.HessianOperator(obj)
    sp = hessian.lanczos(op, k=1, tol=1e-8, max_iter=50)
    tr = hessian.hutchinson_trace(op, samples=5)
    d = hessian.spectral_density(op, n_vectors=2, steps=7)
    assert tr.hvps == 5 and d.hvps == 14
    assert op.calls == sp.hvps + 5 + 14


class Diagonal:
    """diag(d) as an operator: its eigenvalues are d, exactly, at any size."""

    def __init__(self, d):
        self.d = d
        self.shape, self.dtype, self.device, self.blocks = (d.numel(),) * 2, d.dtype, d.device, [d.shape]

    def matvec(self, v):
        return self.d * v


@pytest.mark.parametrize("method", ["lanczos", pytest.param("power", marks=pytest.mark.slow)])
def test_float32_eigenvalues_are_accurate_at_millions_of_entries(method):
    """On 4.2M float32 entries, naive float32 dots (torch.dot, Tensor.norm: 3e-6 relative error
    there) cost Lanczos its orthogonality; the accurate reductions keep λ_max and λ_min within 1e-5
    relative of the truth, at the float32 tolerance the residual test asks for. (With torch.dot and
    Tensor.norm this Lanczos run reports "converged" at λ_max = 10.0135: 1.3e-3 too high.)"""
    g = torch.Generator().manual_seed(0)
    n = 4_200_000
    d = torch.rand(n, generator=g) * 2 - 1  # bulk in [-1, 1]
    d[:3] = torch.tensor([10.0, 9.0, 8.0])
    d[3] = -3.0
    fn = hessian.lanczos if method == "lanczos" else hessian.power_iteration
    sp = fn(Diagonal(d), k=2, tol=1e-6, max_iter=60 if method == "lanczos" else 400, seed=1)
    assert sp.converged
    assert abs(sp.lambda_max - 10.0) / 10.0 < 1e-5 and abs(sp.eigenvalues[1] - 9.0) / 9.0 < 1e-5
    assert abs(sp.lambda_min + 3.0) / 3.0 < 1e-5


def test_lanczos_with_a_bounded_basis_restarts_to_the_same_eigenvalues():
    """max_basis bounds the weight-sized vectors Lanczos holds; a full basis restarts from the wanted
    Ritz vectors, and the answers (checked by the residual test) equal the exact ones."""
    eigs = [9.0, 8.7, 8.5, -4.0, -3.9] + list(np.linspace(-1.0, 1.0, 195))
    op = hessian.DenseOperator(symmetric(eigs, seed=2))
    truth = np.sort(eigs)
    full = hessian.lanczos(op, k=3, tol=1e-8, max_iter=400)
    small = hessian.lanczos(op, k=3, tol=1e-8, max_iter=400, basis=hessian.BasisPolicy(max_basis=10))
    for sp in (full, small):
        assert sp.converged
        np.testing.assert_allclose(sp.eigenvalues, truth[::-1][:3], rtol=1e-7)
        assert sp.lambda_min == pytest.approx(truth[0], rel=1e-7)
    assert small.max_basis <= 10 and small.restarts >= 1 and full.restarts == 0
    assert small.hvps == small.iterations and small.hvps > full.hvps  # restarts cost products, not memory


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eigenvalue_stopping_bounds_the_error_and_spends_fewer_products(seed):
    """stop="eigenvalue": the Kato–Temple bound min(r, r²/gap) is a true bound on |θ − λ| at every
    accepted value, the answer is within tol, and it takes fewer products than the residual test."""
    eigs = [10.0, 8.0, 7.5, -3.0] + list(np.linspace(-1.0, 1.0, 396))
    op = hessian.DenseOperator(symmetric(eigs, seed=seed))
    tol = 1e-6
    res = hessian.lanczos(op, k=2, tol=tol, max_iter=400, seed=seed)
    ev = hessian.lanczos(op, k=2, tol=tol, max_iter=400, seed=seed, basis=hessian.BasisPolicy(stop="eigenvalue"))
    assert ev.converged and ev.stop == "eigenvalue" and ev.hvps < res.hvps
    for got, truth, bound in zip(ev.eigenvalues, [10.0, 8.0], ev.error_bounds):
        assert abs(got - truth) <= bound <= tol * abs(truth)
    assert ev.lambda_min == pytest.approx(-3.0, rel=tol)


def test_basis_free_lanczos_spends_max_iter_steps_after_measuring_its_noise():
    """The two-vector Lanczos measures its products' noise with three products first; ``max_iter``
    counts Lanczos steps after them (a budget of 3 used to leave no step at all and crash, 4 gave
    λ_max = one Rayleigh quotient)."""
    d = torch.cat([torch.linspace(-1.0, 1.0, 200, dtype=torch.float64), torch.tensor([50.0], dtype=torch.float64)])
    none = hessian.BasisPolicy(reorth="none")
    for n in (1, 3, 6):
        sp = hessian.lanczos(Diagonal(d), k=1, tol=1e-12, max_iter=n, basis=none, want_min=False)
        assert sp.iterations == n and sp.hvps == n + 3 and np.isfinite(sp.lambda_max)
    sp = hessian.lanczos(Diagonal(d), k=1, tol=1e-12, max_iter=6, basis=none, want_min=False)
    assert sp.lambda_max > 45  # six steps already see the outlier


def test_power_iteration_reports_an_unconverged_negative_lambda_min_as_unconverged():
    """When the largest-magnitude eigenvalue is negative, the first power run *is* λ_min's: its own
    residual is reported and decides convergence — ``converged`` holds exactly when every reported
    residual is within tol (−10 and −9.99 are slow to separate: few iterations leave λ_min open)."""
    lam = torch.tensor([-10.0, -9.99, 1.0] + [0.0] * 7, dtype=torch.float64)
    U, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    op = hessian.DenseOperator(U @ torch.diag(lam) @ U.T)
    tol, seen = 1e-4, set()
    for max_iter in (3, 5, 40000):
        sp = hessian.power_iteration(op, k=1, max_iter=max_iter, tol=tol, want_min=True)
        assert sp.residual_min is not None
        ok = sp.residual_min <= tol * abs(sp.lambda_min) and sp.residuals[0] <= tol * abs(sp.lambda_max)
        assert sp.converged == ok, (max_iter, sp.residual_min, sp.residuals)
        seen.add(sp.converged)
    assert seen == {False, True} and sp.lambda_min == pytest.approx(-10.0, abs=2e-3)


class _NoisyFD:
    """A dense matrix whose products carry seeded noise of norm ``eta`` — an fd operator's error."""

    method = "fd"

    def __init__(self, A, eta):
        self.inner, self.eta = hessian.DenseOperator(A), eta
        self.shape, self.dtype, self.device, self.blocks = self.inner.shape, A.dtype, A.device, self.inner.blocks
        self.g = torch.Generator().manual_seed(123)

    def matvec(self, v):
        e = torch.randn(v.shape, generator=self.g, dtype=v.dtype)
        return self.inner.matvec(v) + self.eta * e / e.norm()


def test_lanczos_with_a_basis_stops_at_the_products_noise_like_the_basis_free_one():
    """λ_max ≈ 0 under products with error η: a residual below tol·|θ| ≈ 1e-9 cannot be reached, one
    at η can. Both Lanczos paths floor their stop at the measured noise: they converge, within a few
    η of the truth, and report η (before, the basis path ran to max_iter unconverged)."""
    lam = torch.cat([torch.tensor([1e-6], dtype=torch.float64), -torch.linspace(0.3, 3.0, 299, dtype=torch.float64)])
    U, _ = torch.linalg.qr(torch.randn(300, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    A = U @ torch.diag(lam) @ U.T
    eta = 1e-5
    for reorth in ("full", "none"):
        sp = hessian.lanczos(_NoisyFD(A, eta), k=1, max_iter=60, tol=1e-3, want_min=False,
                             basis=hessian.BasisPolicy(reorth=reorth, where="memory"))
        assert sp.converged, (reorth, sp.residuals)
        assert sp.noise is not None and 0.3 * eta < sp.noise < 3 * eta
        assert abs(sp.lambda_max - 1e-6) < 10 * eta, (reorth, sp.lambda_max)


def test_the_bottom_of_the_spectrum_does_not_gate_lambda_max():
    """The basis-free recurrence accepts a top Ritz value leaning on the noise floor only once it stopped
    moving — and only the wanted ends count: at the 1.5B base, θ_max = 5228 with residual 7.7 (≤ tol·θ =
    52) came back unconverged because θ_min (not asked for) still moved."""
    from landscape.measures.hessian.cullum1985plain import _settled

    res = np.array([300.0, 40.0, 7.7])  # residuals of θ = [-800, 10, 5228]: the top strictly converged
    assert _settled(res, (5228.0,), None, 1e-2, 7.9)
    assert not _settled(res, (5228.0, -800.0), None, 1e-2, 7.9)  # λ_min asked for: not yet
    # within the floor, not within tol: accepted once it stopped moving, whichever ends are wanted
    loose = np.array([300.0, 40.0, 5.0])
    assert not _settled(loose, (400.0,), None, 1e-2, 7.9) and _settled(loose, (400.0,), (398.0,), 1e-2, 7.9)
    assert not _settled(loose, (400.0,), (380.0,), 1e-2, 7.9)
