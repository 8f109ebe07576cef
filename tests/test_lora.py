"""PEFT/LoRA adapters: loaded like any checkpoint (peft's own loader is the reference), measured merged or
in the adapter's own space, trained with AdamW/SAM into a standard adapter directory, bad dirs refused."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

peft = pytest.importorskip("peft", reason="the [lora] extra (peft) is not installed")

from landscape.cli.main import cli  # noqa: E402
from landscape.foundation import checkpoint, data, params as P, toy  # noqa: E402
from landscape.foundation.configs import FinetuneConfig, LoadConfig, SharpnessConfig  # noqa: E402
from landscape.foundation.loss import batch_term, evaluate, logits_of  # noqa: E402
from landscape.measures import sharpness  # noqa: E402
from landscape.training import finetune as F  # noqa: E402
from landscape.training.sam import SAM  # noqa: E402
from tests.conftest import make_checkpoint, write_jsonl  # noqa: E402
from tests.test_hessian import dense_hessian  # noqa: E402


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tokenizer):
    """A tiny Llama base and a LoRA adapter trained on it by `landscape finetune --lora` (SAM)."""
    root = tmp_path_factory.mktemp("lora")
    base = make_checkpoint(root, "llama", tokenizer)
    rows = [{"prompt": f"task : reverse input : {a} {b} output :", "completion": f"{b} {a}"}
            for a in ("red", "blue", "green", "cat") for b in ("one", "two", "three", "mat")]
    task = write_jsonl(root / "task.jsonl", rows)
    r = CliRunner().invoke(cli, ["finetune", str(base), "--data", str(task), "--out", str(root / "adapter"),
                                 "--lora", "4", "--optimizer", "sam", "--lr", "3e-2", "--max-steps", "8",
                                 "--batch-size", "4", "--device", "cpu", "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    return {"root": root, "base": base, "adapter": root / "adapter", "task": task, "summary": json.loads(r.stdout)}


def _peft_reference(lora_run):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(lora_run["base"], local_files_only=True)
    return peft.PeftModel.from_pretrained(base, str(lora_run["adapter"])).eval()


def test_the_adapter_we_write_is_a_standard_peft_adapter(lora_run, tokenizer):
    a = lora_run["adapter"]
    assert (a / "adapter_config.json").is_file() and (a / "adapter_model.safetensors").is_file()
    assert not (a / "config.json").exists()
    cfg = json.loads((a / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["base_model_name_or_path"] == str(lora_run["base"].resolve())
    ref = _peft_reference(lora_run)
    bs = data.load_batches(lora_run["task"], tokenizer, batch_size=4, max_length=24)
    merged = checkpoint.load_checkpoint(a)  # merged into the base's weights by default
    kept = checkpoint.load_checkpoint(a, adapter="keep")
    assert type(merged.model).__name__ == "LlamaForCausalLM" and type(kept.model).__name__ == "PeftModelForCausalLM"
    with torch.no_grad():
        for b in bs:
            want = ref(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            torch.testing.assert_close(logits_of(merged.model, b), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(logits_of(kept.model, b), want, rtol=0, atol=0)
    # adapter + base loss = merged model's loss; and the adapter moved it
    assert evaluate(kept.model, bs).loss == pytest.approx(evaluate(merged.model, bs).loss, rel=1e-6)
    base = checkpoint.load_checkpoint(lora_run["base"])
    assert evaluate(merged.model, bs).loss < evaluate(base.model, bs).loss
    # the fingerprint covers adapter and base
    assert merged.fingerprint == lora_run["summary"]["fingerprint"] != base.fingerprint
    assert merged.meta["adapter"]["peft_type"] == "LORA"


def test_delta_w_of_a_lora_run_is_its_merged_update(lora_run, tokenizer):
    """`predict` on an adapter: ‖Δw‖ equals ‖(α/r)·B·A‖ summed over the adapted layers, by hand."""
    from safetensors.torch import load_file

    w = load_file(lora_run["adapter"] / "adapter_model.safetensors")
    sq = 0.0
    for k, A in w.items():
        if ".lora_A." in k:
            B = w[k.replace(".lora_A.", ".lora_B.")]
            sq += float(((8 / 4) * (B.double() @ A.double())).pow(2).sum())
    r = CliRunner().invoke(cli, ["predict", str(lora_run["base"]), str(lora_run["adapter"]), "--data",
                                 str(lora_run["task"]), "--no-lambda-max", "--line", "0:1:3", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)["results"][0]["metrics"]
    assert m["delta_norm"] == pytest.approx(sq ** 0.5, rel=1e-4)
    assert m["bound"] is None


def test_adapter_space_hessian_against_a_dense_hessian(lora_run, tokenizer):
    kept = checkpoint.load_checkpoint(lora_run["adapter"], adapter="keep", dtype="float64")
    bs = data.load_batches(lora_run["task"], tokenizer, batch_size=4, max_length=24, num_batches=1)
    every = list(P.select(kept.model, "adapter"))
    assert every and all(".lora_" in n for n in every) and len(every) == 2 * 7 * 2  # A, B × 7 linears × 2 layers
    # the dense reference on one layer's attention adapters (a dense Hessian of all 4352 would take minutes)
    sub = r"layers\.1\.self_attn\.q_proj\.lora_"
    names = list(P.select(kept.model, sub))
    assert set(names) <= set(every) and len(names) == 2
    before = {n: p.detach().clone() for n, p in kept.model.named_parameters()}
    r = sharpness.measure(kept.model, bs, SharpnessConfig(metrics=("lambda_max", "lambda_min"), params=sub,
                                                          tol=1e-8, max_iter=200, top_k=2))
    H = dense_hessian(kept.model, bs, names)
    ev = torch.linalg.eigvalsh(0.5 * (H + H.T)).numpy()
    assert r["config"]["n_params"] == H.shape[0]
    np.testing.assert_allclose(r["metrics"]["eigenvalues"], ev[::-1][:2], rtol=1e-5)
    assert r["metrics"]["lambda_min"] == pytest.approx(ev[0], rel=1e-5)
    for n, p in kept.model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
    merged = checkpoint.load_checkpoint(lora_run["adapter"])
    with pytest.raises(Exception, match="adapter='keep'"):
        P.select(merged.model, "adapter")


def test_sam_lora_step_equals_a_hand_computed_reference(tokenizer):
    """SAM over the adapter only: ε = ρ·g/‖g‖ over A and B, the base frozen; then AdamW's first step."""
    cfg = toy.tiny_config("gpt2", vocab_size=len(tokenizer), tokenizer=tokenizer, hidden=16, layers=1, heads=2)
    model = toy.build_model(cfg, seed=0, dtype=torch.float64)
    lcfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], init_lora_weights=False,
                           lora_dropout=0.0, fan_in_fan_out=True)
    pm = peft.get_peft_model(model, lcfg).double()
    recs = [{"text": t} for t in ("the cat sat on the mat .", "the dog is red .", "one plus two is three .")]
    batch = data.load_batches("mem", tokenizer, batch_size=3, max_length=16, records=recs).batches[0]
    params = [p for p in pm.parameters() if p.requires_grad]
    assert params and all(p.ndim == 2 for p in params)
    frozen = {n: p.detach().clone() for n, p in pm.named_parameters() if not p.requires_grad}
    w0 = [p.detach().clone() for p in params]
    rho, lr, eps_adam = 0.05, 1e-2, 1e-8

    def grads_at(ws):
        with torch.no_grad():
            for p, w in zip(params, ws):
                p.copy_(w)
        return list(torch.autograd.grad(batch_term(pm, batch, batch.n_tokens), params))

    g = grads_at(w0)
    n = torch.sqrt(sum((x ** 2).sum() for x in g))
    g2 = grads_at([w + rho * x / n for w, x in zip(w0, g)])
    expected = [w - lr * x / (x.abs() + eps_adam) for w, x in zip(w0, g2)]
    with torch.no_grad():
        for p, w in zip(params, w0):
            p.copy_(w)
    opt = SAM(params, torch.optim.AdamW, rho=rho, lr=lr, eps=eps_adam, weight_decay=0.0)

    def closure():
        opt.zero_grad()
        loss = batch_term(pm, batch, batch.n_tokens)
        loss.backward()
        return loss

    opt.step(closure)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-9)
    for nme, p in pm.named_parameters():
        if nme in frozen:
            assert torch.equal(p.detach(), frozen[nme]), nme  # the base never moves


def test_lora_finetune_resumes_to_the_same_adapter(lora_run, tmp_path):
    kw = dict(lora=4, optimizer="sam", lr=3e-2, max_steps=6, batch_size=4, save_every=2)
    full = F.finetune(lora_run["base"], lora_run["task"], tmp_path / "full", FinetuneConfig(**kw),
                      load=LoadConfig(device="cpu"))

    def stop_at_3(state, opt):
        if state.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        F.finetune(lora_run["base"], lora_run["task"], tmp_path / "cut", FinetuneConfig(**kw),
                   load=LoadConfig(device="cpu"), on_step=stop_at_3)
    resumed = F.finetune(lora_run["base"], lora_run["task"], tmp_path / "cut", FinetuneConfig(**kw, resume=True),
                         load=LoadConfig(device="cpu"))
    assert resumed["resumed_from"] == 3 and resumed["fingerprint"] == full["fingerprint"]


def test_bad_adapter_dirs_are_one_line_errors(lora_run, tmp_path, tokenizer):
    runner = CliRunner()

    def one_line(args, match):
        r = runner.invoke(cli, args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], (match, r.stderr)

    hub = tmp_path / "hub"
    shutil.copytree(lora_run["adapter"], hub)
    cfg = json.loads((hub / "adapter_config.json").read_text())
    (hub / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "HuggingFaceTB/SmolLM2"}))
    one_line(["info", str(hub)], "'HuggingFaceTB/SmolLM2' is not a local checkpoint directory")
    one_line(["info", str(hub)], "--adapter-base")
    assert runner.invoke(cli, ["info", str(hub), "--adapter-base", str(lora_run["base"])]).exit_code == 0
    # an adapter trained on another architecture's shapes
    other = make_checkpoint(tmp_path / "o", "llama", tokenizer)
    big = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**big, "intermediate_size": big["intermediate_size"] * 2}))
    from landscape.foundation import toy as T
    m = T.build_model(T.tiny_config("llama", vocab_size=len(tokenizer), tokenizer=tokenizer, hidden=32, layers=2,
                                    heads=4, intermediate=128), seed=0)
    m.save_pretrained(other)
    one_line(["loss", str(lora_run["adapter"]), "--adapter-base", str(other), "--data", str(lora_run["task"])],
             "adapter shapes do not match the base")
    # pickle adapter weights without --trust-pickle
    pk = tmp_path / "pickle"
    shutil.copytree(lora_run["adapter"], pk)
    from safetensors.torch import load_file

    torch.save(load_file(pk / "adapter_model.safetensors"), pk / "adapter_model.bin")
    (pk / "adapter_model.safetensors").unlink()
    one_line(["info", str(pk)], "--trust-pickle")
    # malformed config, no weights
    bad = tmp_path / "bad"
    shutil.copytree(lora_run["adapter"], bad)
    (bad / "adapter_config.json").write_text("{not json")
    one_line(["info", str(bad)], "malformed adapter config")
    empty = tmp_path / "empty"
    shutil.copytree(lora_run["adapter"], empty)
    (empty / "adapter_model.safetensors").unlink()
    one_line(["info", str(empty)], "adapter without weights")
    one_line(["sharpness", str(lora_run["base"]), "--params", "adapter", "--data", str(lora_run["task"])],
             "adapter")


def test_sam_trainer_on_a_peft_model_equals_sam_over_the_adapter(tokenizer, tmp_path):
    """`SAMTrainer` with a PeftModel: one Trainer step equals one SAM step over the adapter parameters."""
    pytest.importorskip("accelerate", reason="transformers.Trainer needs the accelerate package")
    from landscape.training.sam import SAMTrainer
    from tests.test_sam import BETAS, EPS, LR, one_step_args, sam_step, tiny_batch, tiny_model

    def lora_model():
        cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                              lora_dropout=0.0)
        torch.manual_seed(1)
        return peft.get_peft_model(tiny_model(tokenizer, dtype=torch.float32), cfg)

    model, ref = lora_model(), lora_model()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = tiny_batch(tokenizer)
    rows = [{"input_ids": batch.input_ids[i], "attention_mask": batch.attention_mask[i], "labels": batch.labels[i]}
            for i in range(batch.input_ids.shape[0])]
    SAMTrainer(model=model, args=one_step_args(tmp_path, len(rows)), train_dataset=rows, sam_rho=0.05).train()
    opt = SAM([p for p in ref.parameters() if p.requires_grad], torch.optim.AdamW, rho=0.05, lr=LR, betas=BETAS,
              eps=EPS, weight_decay=0.0)
    sam_step(ref, batch, opt)
    moved = []
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=n)
        if not torch.equal(p.detach(), init[n]):
            moved.append(n)
    assert len(moved) == 4 and all(".lora_" in n for n in moved)  # A and B of q_proj and v_proj; the base stays


def test_no_peft_warning_a_user_cannot_act_on(lora_run, tmp_path, monkeypatch):
    """A base loaded by a relative path made peft warn that base_model_name_or_path "was renamed"
    (seven times in `make demo`); the adapter records the absolute path either way."""
    import warnings

    from landscape.foundation import checkpoint
    from landscape.foundation.configs import FinetuneConfig
    from landscape.training.finetune import with_lora

    monkeypatch.chdir(lora_run["base"].parent)
    ck = checkpoint.load_checkpoint(lora_run["base"].name)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pm = with_lora(ck.model, FinetuneConfig(lora=4), lora_run["base"].name)
    assert [str(w.message) for w in seen] == []
    assert pm.peft_config["default"].base_model_name_or_path == str(lora_run["base"].resolve())
