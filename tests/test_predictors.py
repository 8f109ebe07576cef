"""Forgetting predictors: closed forms on a quadratic, a dense Hessian on a tiny transformer, the CLI."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from landscape.cli.main import cli
from landscape.foundation import checkpoint, data, params as P
from landscape.foundation.configs import PredictConfig
from landscape.foundation.objective import FunctionObjective, ModelObjective
from landscape.measures import predictors
from tests.test_hessian import dense_hessian


def quadratic_with_slope(n=12, seed=0):
    """L(w) = ½ (w − c)ᵀ A (w − c) + bᵀw, A indefinite: F = gᵀΔw + ½ΔwᵀAΔw exactly, g = A(w − c) + b."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigs = torch.linspace(-1.5, 6.0, n, dtype=torch.float64)
    A = U @ torch.diag(eigs) @ U.T
    c, b = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))
    obj = FunctionObjective(lambda: 0.5 * (w - c) @ A @ (w - c) + b @ w, [w])
    return obj, A, b, c, w


def test_quadratic_prediction_is_exact_and_kappa_is_the_rayleigh_quotient():
    obj, A, b, c, w = quadratic_with_slope()
    before = w.detach().clone()
    d = torch.randn(12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    lam = float(torch.linalg.eigvalsh(A)[-1])
    r = predictors.measure_pair(obj, [d], PredictConfig(line="-0.5:1.5:9"), lambda_max=lam)
    m = r["metrics"]
    g = A @ (before - c) + b
    F = float((0.5 * (before + d - c) @ A @ (before + d - c) + b @ (before + d))
              - (0.5 * (before - c) @ A @ (before - c) + b @ before))
    assert m["general_loss_increase"] == pytest.approx(F, rel=1e-12)
    assert m["quad_pred"] == pytest.approx(F, rel=1e-10)
    assert m["grad_delta"] == pytest.approx(float(g @ d), rel=1e-12)
    assert m["kappa_base"] == pytest.approx(float(d @ A @ d / (d @ d)), rel=1e-12)
    assert m["bound"] >= m["quad_pred"] - 1e-12
    assert m["bound"] == pytest.approx(float(g @ d) + 0.5 * lam * float(d @ d), rel=1e-12)
    assert r["explained"] == pytest.approx(1.0, rel=1e-10)
    assert r["line"]["r2"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(r["line"]["loss"], r["line"]["quadratic"], rtol=1e-12)
    # at the tuned weights the same Hessian; F expanded there is exact too
    assert m["kappa_tuned"] == pytest.approx(m["kappa_base"], rel=1e-12)
    assert m["quad_pred_tuned"] == pytest.approx(F, rel=1e-10)
    assert m["delta_norm"] == pytest.approx(float(d.norm()), rel=1e-12)
    assert torch.equal(w.detach(), before)  # bit-identical afterwards


def test_a_non_quadratic_loss_is_not_explained_exactly():
    """A quartic: the quadratic misses F by the fourth-order term; the test can fail the other way."""
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))
    obj = FunctionObjective(lambda: (w ** 4).sum() + (w ** 2).sum(), [w])
    r = predictors.measure_pair(obj, [torch.tensor([1.0, 1.0], dtype=torch.float64)], PredictConfig(at_tuned=False))
    assert r["residual"] > 0.1 and r["line"]["r2"] < 1.0
    assert "kappa_tuned" not in r["metrics"]


def test_zero_update_is_an_error():
    obj, *_ = quadratic_with_slope()
    with pytest.raises(Exception, match="Δw = 0"):
        predictors.measure_pair(obj, [torch.zeros(12, dtype=torch.float64)])


def test_line_must_contain_base_and_tuned():
    with pytest.raises(Exception, match="t = 0 and t = 1"):
        PredictConfig(line="0.5:2:4")


def _tuned_copy(model, scale, seed, names):
    g = torch.Generator().manual_seed(seed)
    return {n: (p.detach() + scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
            if n in names else p.detach().clone() for n, p in model.named_parameters()}


def test_kappa_and_prediction_against_a_dense_hessian_on_a_tiny_transformer(llama_dir, text_data):
    ck = checkpoint.load_checkpoint(llama_dir, dtype="float64")
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=3, max_length=16)
    names = ["model.norm.weight", "model.layers.1.post_attention_layernorm.weight", "model.layers.1.mlp.down_proj.weight"]
    sel = {n: p for n, p in ck.model.named_parameters() if n in names}
    tuned = _tuned_copy(ck.model, 1e-3, 3, names)
    before = {n: p.detach().clone() for n, p in ck.model.named_parameters()}
    obj = ModelObjective(ck.model, bs, sel)
    delta = predictors.update_vector(obj.names, obj.params, tuned)
    r = predictors.measure_pair(obj, delta, PredictConfig(), groups=P.layer_groups(ck.model))
    H = dense_hessian(ck.model, bs, obj.names)
    d = P.flatten(delta).double()
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(
        sum(t for t in obj.terms()), obj.params)]).double()
    assert r["metrics"]["kappa_base"] == pytest.approx(float(d @ H @ d / (d @ d)), rel=1e-6)
    assert r["metrics"]["grad_delta"] == pytest.approx(float(g @ d), rel=1e-6)
    assert r["metrics"]["quad_pred"] == pytest.approx(float(g @ d + 0.5 * d @ H @ d), rel=1e-6)
    # a small step: the quadratic explains F up to third-order terms
    assert r["explained"] == pytest.approx(1.0, abs=1e-3)
    assert r["line"]["r2"] > 0.999
    assert r["per_block"]["layer.1"]["delta_norm"] > 0 and r["per_block"]["other"]["delta_norm"] > 0
    assert "layer.0" not in r["per_block"]  # no selected parameter there
    for n, p in ck.model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n


def test_kl_predictors_equal_a_float64_hand_computation_in_any_chunking(llama_dir, text_data, monkeypatch):
    """KL(base ‖ tuned) and KL(tuned ‖ base), token means over the loss-bearing positions, equal the
    float64 softmaxes of a separately built tuned model to 1e-10, whether a batch's rows go in one
    piece or one by one (the memory budget); both are ≥ 0, differ from each other (KL is not
    symmetric), and the weights are bit-identical afterwards."""
    from landscape.foundation.data import IGNORE

    ck = checkpoint.load_checkpoint(llama_dir, dtype="float64")
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=3, max_length=16)
    tuned_named = _tuned_copy(ck.model, 3e-2, 7, [n for n, _ in ck.model.named_parameters()])
    before = {n: p.detach().clone() for n, p in ck.model.named_parameters()}
    obj = ModelObjective(ck.model, bs)
    delta = predictors.update_vector(obj.names, obj.params, tuned_named)
    got = predictors.measure_pair(obj, delta, PredictConfig(at_tuned=False, line="0:1:2"))["metrics"]
    monkeypatch.setattr(predictors, "KL_BUDGET", 1)  # one sequence at a time
    with P.perturbed(obj.params) as origin:
        rowwise = predictors.kl_divergences(obj, origin, delta)

    import copy
    other = copy.deepcopy(ck.model)
    with torch.no_grad():
        for n, p in other.named_parameters():
            p.copy_(tuned_named[n])
    fb = fwd = 0.0
    n_tok = 0
    for b in bs:
        keep = b.labels[:, 1:] != IGNORE
        with torch.no_grad():
            lb = torch.log_softmax(ck.model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1][keep], -1)
            lt = torch.log_softmax(other(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1][keep], -1)
        fb += float((lb.exp() * (lb - lt)).sum())
        fwd += float((lt.exp() * (lt - lb)).sum())
        n_tok += int(keep.sum())
    ref = {"kl_base_tuned": fb / n_tok, "kl_tuned_base": fwd / n_tok}
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-10) and rowwise[k] == pytest.approx(v, rel=1e-10), k
    assert ref["kl_base_tuned"] > 1e-4 and ref["kl_tuned_base"] > 1e-4
    assert abs(ref["kl_base_tuned"] - ref["kl_tuned_base"]) > 1e-8
    for n, p in ck.model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n


def test_vectors_on_disk_give_the_same_bits_and_are_chosen_when_memory_is_short(llama_dir, text_data, monkeypatch):
    """Δw and the saved base in temporary files (a 1.5B model's predictors on 24 GB) measure every
    predictor to the same bits as in memory, the weights come back bit-identical, and the session
    chooses the files only when its in-memory plan does not fit the free memory."""
    from landscape.foundation import plan as plans

    ck = checkpoint.load_checkpoint(llama_dir)
    bs = data.load_batches(text_data, ck.tokenizer, batch_size=3, max_length=16)
    tuned = _tuned_copy(ck.model, 3e-2, 5, [n for n, _ in ck.model.named_parameters()])
    before = {n: p.detach().clone() for n, p in ck.model.named_parameters()}
    cfg = PredictConfig(line="0:1:3", hvp_method="fd", lambda_max=False)
    got = {}
    for disk in (False, True):
        obj = ModelObjective(ck.model, bs)
        delta = predictors.update_vector(obj.names, obj.params, tuned, on_disk=disk)
        assert hasattr(delta, "read_flat") == disk
        got[disk] = predictors.measure_pair(obj, delta, cfg, groups=P.layer_groups(ck.model), on_disk=disk)
        for n, p in ck.model.named_parameters():
            assert torch.equal(p.detach(), before[n]), n
    assert got[True]["metrics"] == got[False]["metrics"] and got[True]["line"] == got[False]["line"]
    assert got[True]["per_block"] == got[False]["per_block"]
    session = predictors.Session(ck.model, bs, cfg)
    in_memory = session.plan()
    assert session.on_disk is False and in_memory.parts["base_copy"] > 0
    free = in_memory.peak - in_memory.start  # less than the in-memory plan needs with the headroom
    monkeypatch.setattr(plans, "free_bytes", lambda dev: free)
    on_disk = session.plan()
    assert session.on_disk is True and on_disk.parts["base_copy"] == 0
    assert on_disk.parts["vectors"] == in_memory.parts["vectors"] // 2 and on_disk.peak < in_memory.peak
    assert hasattr(session.delta(tuned), "read_flat")


def test_predict_cli_json_and_bad_input(tmp_path, tiny_ckpts, llama_dir, text_data):
    from landscape.foundation import toy
    from tests.conftest import make_checkpoint

    ck = checkpoint.load_checkpoint(llama_dir)
    tuned = _tuned_copy(ck.model, 1e-2, 1, {n for n, _ in ck.model.named_parameters()})
    with torch.no_grad():
        for n, p in ck.model.named_parameters():
            p.copy_(tuned[n])
    out = checkpoint.save_checkpoint(ck.model, ck.tokenizer, tmp_path / "tuned")
    runner = CliRunner()
    res = runner.invoke(cli, ["predict", str(llama_dir), str(out), "--data", str(text_data), "--json",
                              "--max-iter", "20", "--line", "0:1:5"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    x = r["results"][0]
    assert x["tuned"] == str(out) and set(x["at_tuned"]) >= {"kappa_tuned", "grad_delta_tuned"}
    assert set(x["metrics"]) == {k for k in predictors.PREDICTOR_METRICS if not k.endswith("_task")}
    assert x["metrics"]["kl_base_tuned"] > 0 and x["metrics"]["kl_tuned_base"] > 0
    assert r["lambda_max_base"]["lambda_max"] > 0
    assert x["metrics"]["bound"] >= x["metrics"]["quad_pred"]
    assert x["where"]["kappa_base"] == "base" and x["where"]["kappa_tuned"] == "tuned"
    assert x["loss_tuned"] == pytest.approx(
        json.loads(runner.invoke(cli, ["loss", str(out), "--data", str(text_data), "--json"]).output)["loss"], rel=1e-5)
    # the KL on the task's data (--kl-data): here the same file, so the same numbers as on the general data
    res = runner.invoke(cli, ["predict", str(llama_dir), str(out), "--data", str(text_data), "--json", "--no-lambda-max",
                              "--line", "0:1:2", "--kl-data", str(text_data)])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)["results"][0]["metrics"]
    assert m["kl_base_tuned_task"] == m["kl_base_tuned"] and m["kl_tuned_base_task"] == m["kl_tuned_base"]
    # text: each checkpoint headed by its path, also without the tuned-weights measurements
    res = runner.invoke(cli, ["predict", str(llama_dir), str(out), "--data", str(text_data), "--max-iter", "5",
                              "--line", "0:1:3", "--no-at-tuned"])
    assert res.exit_code == 0 and f"\n{out}:\n" in res.output and "None:" not in res.output, res.output
    # another architecture is one line, exit 2
    other = make_checkpoint(tmp_path, "gpt2", toy.build_word_tokenizer(["a b c"]))
    res = runner.invoke(cli, ["predict", str(llama_dir), str(other), "--data", str(text_data)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "error:" in res.output
    res = runner.invoke(cli, ["predict", str(llama_dir), str(out), "--line", "0.5:2:3"])
    assert res.exit_code == 2 and "--line" in res.output
    res = runner.invoke(cli, ["predict", str(llama_dir), str(llama_dir), "--data", str(text_data)])
    assert res.exit_code == 2 and "Δw = 0" in res.output
