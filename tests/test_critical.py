"""Critical sharpness (Kalra et al. 2026): λc = 2/η_c, η_c the smallest step along a direction that
raises the loss — against the closed form of a quadratic, where it equals the directional sharpness
ΔθᵀHΔθ / Δθᵀg (a weighted average of the Hessian's eigenvalues)."""

import numpy as np
import pytest
import torch

from landscape.measures.critical import critical_step


def quadratic(seed=0, n=12):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.linspace(0.5, 20.0, n)
    A = (q * eig) @ q.T
    b = rng.standard_normal(n)
    w = rng.standard_normal(n)
    return A, b, w, eig, q


def test_gradient_descent_direction_matches_the_closed_form_and_the_eigenvalue_average():
    A, b, w, eig, q = quadratic()
    L = lambda x: 0.5 * x @ A @ x + b @ x  # noqa: E731
    g = A @ w + b
    r = critical_step(lambda eta: L(w - eta * g) > L(w), eta0=1.0, eps=1e-6)
    assert r["status"] == "ok"
    lam_dir = g @ A @ g / (g @ g)  # η_c = 2 gᵀg / gᵀAg exactly for a quadratic
    assert r["lambda_c"] == pytest.approx(lam_dir, rel=1e-6)
    c2 = (q.T @ g) ** 2
    assert lam_dir == pytest.approx((c2 * eig).sum() / c2.sum(), rel=1e-12) and lam_dir <= eig.max()
    coarse = critical_step(lambda eta: L(w - eta * g) > L(w))  # the paper's ε = 1/16
    assert abs(coarse["lambda_c"] / lam_dir - 1) <= 1 / 16 and coarse["evals"] <= 25


def test_any_direction_and_the_edge_cases():
    A, b, w, _, _ = quadratic(1)
    L = lambda x: 0.5 * x @ A @ x + b @ x  # noqa: E731
    g = A @ w + b
    d = g + 0.3 * np.random.default_rng(2).standard_normal(len(w)) * np.linalg.norm(g)  # a descent direction
    assert d @ g > 0
    r = critical_step(lambda eta: L(w - eta * d) > L(w), eta0=1e-3, eps=1e-7)
    assert r["lambda_c"] == pytest.approx(d @ A @ d / (d @ g), rel=1e-6)
    up = critical_step(lambda eta: L(w + eta * g) > L(w))  # ascent: rises at every step
    assert up["status"] == "rises at once" and up["lambda_c"] is None and up["lambda_c_bound"] >= 1e6
    flat = critical_step(lambda eta: False, eta_max=1e3)
    assert flat["status"] == "never rises" and flat["lambda_c"] is None
    with pytest.raises(ValueError):
        critical_step(lambda eta: True, eta0=0.0)


def test_predictors_report_critical_sharpness_along_the_update(tokenizer):
    """In measure_pair: λc of the general loss at the base along Δw, from forward passes, equal to the
    search run by hand on the line L(w_base + tΔw); weights bit-identical afterwards."""
    from landscape.foundation import data, toy
    from landscape.foundation.objective import ModelObjective
    from landscape.foundation.configs import PredictConfig
    from landscape.measures.predictors import measure_pair

    cfg = toy.tiny_config("llama", vocab_size=len(tokenizer), tokenizer=tokenizer, hidden=16, layers=1, heads=2)
    model = toy.build_model(cfg, seed=0, dtype=torch.float64)
    recs = [{"text": t} for t in ("the cat sat on the mat .", "the dog is red .", "one plus two is three .")]
    bs = data.load_batches("mem", tokenizer, batch_size=3, max_length=16, records=recs)
    obj = ModelObjective(model, bs)
    from landscape.foundation.objective import gradient

    _, grad = gradient(obj)
    delta = [-0.05 * x for x in grad]  # a small gradient-descent update: the quadratic regime
    before = [p.detach().clone() for p in obj.params]
    r = measure_pair(obj, delta, PredictConfig(lambda_max=False, at_tuned=False, hvp_method="reverse"))
    assert all(torch.equal(p, q) for p, q in zip(obj.params, before))
    L0 = r["loss_base"]

    def rises(t):
        with torch.no_grad():
            for p, w, d in zip(obj.params, before, delta):
                p.copy_(w + t * d)
        out = obj.value() > L0
        with torch.no_grad():
            for p, w in zip(obj.params, before):
                p.copy_(w)
        return out

    ref = critical_step(rises)
    crit = r["critical"]
    assert crit["status"] == ref["status"]
    assert crit["status"] == "ok" and crit["evals"] <= 20
    assert r["metrics"]["critical_sharpness"] == pytest.approx(ref["lambda_c"], rel=1e-12)
    # the crossing lies far out (t_c ≈ 124 small steps), where the cross-entropy is no longer the
    # quadratic of the base: λc is then below the directional sharpness −ΔwᵀHΔw / gᵀΔw of t = 0
    lam_dir = -r["delta_hessian_delta"] / r["metrics"]["grad_delta"]
    assert 0 < r["metrics"]["critical_sharpness"] < lam_dir
