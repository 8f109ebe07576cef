"""Every decoder architecture a user may bring: a tiny random config of each family in
``toy.SWEEP_ARCHS`` is saved as a checkpoint dir, loaded by our loader (SDPA, or eager where the
architecture has none), and measured: loss, λ_max of a parameter block against its dense Hessian
(torch.autograd.functional.hessian), a 3×3 surface (centre = loss, weights untouched), one SAM step
and a multiple-choice forgetting score (shared-context scoring = pair-by-pair scoring)."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from landscape.cli.main import cli
from landscape.foundation import checkpoint, data, loss, toy
from landscape.foundation.configs import FinetuneConfig, SurfaceConfig
from landscape.foundation.objective import ModelObjective
from landscape.measures import forgetting as FG
from landscape.measures import hessian, surface
from landscape.training import finetune
from tests.conftest import write_jsonl
from tests.test_hessian import dense_hessian


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("archdata")
    f = write_jsonl(d / "d.jsonl", [{"text": "the cat sat on the mat ."}, {"text": "one plus two is three"},
                                    {"prompt": "the dog is", "completion": "red ."}])
    return data.load_batches(f, tokenizer, batch_size=3)


def _block(model):
    """The last parameter tensor with at most 64 entries (a norm or bias near the output), or the
    smallest one where there is none (OLMo's norms have no weights)."""
    named = list(model.named_parameters())
    small = [(n, p) for n, p in named if p.numel() <= 64] or [min(named, key=lambda x: x[1].numel())]
    return dict(small[-1:])


# a few families in the default tier, the whole sweep in the slow tier (CI runs both)
QUICK = ("llama", "gemma2", "gpt2", "qwen2_moe", "mamba")


@pytest.mark.parametrize("arch", [a if a in QUICK else pytest.param(a, marks=pytest.mark.slow) for a in toy.SWEEP_ARCHS])
def test_every_measurement_runs_on_each_architecture(arch, tokenizer, sweep_data, tmp_path):
    model = toy.build_model(toy.tiny_any_config(arch, tokenizer), seed=0)
    model.save_pretrained(tmp_path / arch)
    tokenizer.save_pretrained(tmp_path / arch)
    ck = checkpoint.load_checkpoint(tmp_path / arch)
    assert ck.meta["attn_implementation"] in ("sdpa", "eager")
    bs = sweep_data
    L0 = loss.evaluate(ck.model, bs).loss
    assert np.isfinite(L0)
    before = [p.detach().clone() for p in ck.model.parameters()]

    sel = _block(ck.model)
    H = dense_hessian(ck.model, bs, list(sel))
    sp = hessian.lanczos(hessian.HessianOperator(ModelObjective(ck.model, bs, sel)), tol=1e-6, max_iter=200,
                         want_min=False)
    assert sp.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-3, abs=1e-6)

    h5 = tmp_path / "s.h5"
    surface.surface(ck.model, bs, h5, SurfaceConfig(x="-1:1:3", y="-1:1:3"))
    grid = surface.read_surface(h5)
    assert grid["done"].all() and grid["loss"][1, 1] == L0  # the centre is the checkpoint, exactly
    for a, b in zip(before, ck.model.parameters()):
        assert torch.equal(a, b)  # measurements leave the weights bit-identical

    suite = FG.Suite(name="colors", kind="mc", category="knowledge", path="colors.jsonl", fingerprint="x",
                     items=[{"context": f"the color of {e} is", "choices": ["red", "blue", "green"], "answer": i % 3}
                            for i, e in enumerate(("cat", "dog", "mat"))])
    r = FG.score_suite(ck.model, ck.tokenizer, suite, batch_size=2)
    groups = [FG._encode_pair(ck.tokenizer, it["context"], c) for it in suite.items for c in it["choices"]]
    pairwise = FG.continuation_logprobs(ck.model, groups)
    shared = FG.choice_logprobs(ck.model, [(g[0][0], [c for _, c in g]) for g in zip(*[iter(groups)] * 3)])
    assert sum(shared, []) == pytest.approx(pairwise, abs=1e-4)
    assert 0.0 <= r["acc"] <= 1.0

    cfg = FinetuneConfig(optimizer="sam", lr=1e-3)
    opt = finetune.make_optimizer(list(ck.model.parameters()), cfg)
    ck.model.train()
    step = finetune.train_step(ck.model, opt, bs.batches[:1], cfg, 1e-3)
    assert np.isfinite(step["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, ck.model.parameters()))


def test_gemma2_passes_every_command(tokenizer, tmp_path):
    """Gemma-2 has no SDPA path in transformers: `--attn auto` loads it eager; every command runs."""
    d = tmp_path / "gemma2"
    toy.build_model(toy.tiny_any_config("gemma2", tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": "the cat sat on the mat ."}, {"text": "one plus two is three"}])
    suite = write_jsonl(tmp_path / "colors.jsonl", [{"context": "the cat is", "choices": ["red", "blue"], "answer": 0}])
    r = CliRunner()
    common = ["--data", str(f), "--batch-size", "2", "--quiet"]
    for args in (["info", str(d), "--json"], ["loss", str(d), *common, "--json"],
                 ["sharpness", str(d), *common, "--metrics", "lambda_max,sam", "--json"],
                 ["surface", str(d), *common, "--x=-1:1:3", "--out", str(tmp_path / "s.h5")],
                 ["finetune", str(d), *common, "--optimizer", "sam", "--max-steps", "1", "--out", str(tmp_path / "ft")],
                 ["forgetting", str(d), str(tmp_path / "ft"), "--suite", str(suite), "--json", "--quiet"]):
        out = r.invoke(cli, args)
        assert out.exit_code == 0, (args[0], out.output)
    assert '"attn_implementation": "eager"' in r.invoke(cli, ["info", str(d), "--json"]).output
    out = r.invoke(cli, ["loss", str(d), *common, "--attn", "sdpa"])
    assert out.exit_code == 2 and "cannot load weights" in out.output and len(out.output.strip().splitlines()) == 1
