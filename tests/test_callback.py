"""LandscapeCallback: measurements while a transformers.Trainer trains, without changing the run."""

import copy
import json

import pytest
import torch

from landscape.foundation import data, toy
from landscape.foundation.configs import ConfigError, ProbeConfig
from landscape.training import LandscapeCallback
from tests.conftest import write_jsonl

pytest.importorskip("accelerate", reason="transformers.Trainer needs the accelerate package")

TEXTS = ["the cat sat on the mat .", "the dog is red .", "one plus two is three .", "the color of the cat is blue .",
         "the dog lives in the forest .", "red blue green is a color ."]


def model_of(tokenizer, dropout=0.1, seed=0):
    cfg = toy.tiny_config("llama", vocab_size=len(tokenizer), tokenizer=tokenizer, hidden=16, layers=1, heads=2)
    cfg.attention_dropout = dropout  # dropout draws from the global RNG: the callback must not move it
    return toy.build_model(cfg, seed=seed, dtype=torch.float32)


def rows(tokenizer):
    b = data.load_batches("mem", tokenizer, batch_size=len(TEXTS), max_length=16,
                          records=[{"text": t} for t in TEXTS]).batches[0]
    return [{"input_ids": b.input_ids[i], "attention_mask": b.attention_mask[i], "labels": b.labels[i]}
            for i in range(len(TEXTS))]


def train(model, tokenizer, tmp_path, callbacks=(), steps=5, trainer_cls=None):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2, max_steps=steps,
                             learning_rate=5e-2, lr_scheduler_type="constant", report_to=[], use_cpu=True,
                             save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
                             seed=0)
    tr = (trainer_cls or Trainer)(model=model, args=args, train_dataset=rows(tokenizer), callbacks=list(callbacks),
                                  processing_class=tokenizer)
    tr.train()
    return tr


@pytest.fixture()
def probe_data(tmp_path):
    return write_jsonl(tmp_path / "general.jsonl", [{"text": t} for t in TEXTS[:4]])


def test_the_run_is_unchanged_and_lambda_max_is_logged_every_n_steps(tokenizer, tmp_path, probe_data):
    plain = train(model_of(tokenizer), tokenizer, tmp_path / "a")
    cb = LandscapeCallback(data=probe_data, every=2, metrics=["loss", "lambda_max", "predictors"],
                           out=tmp_path / "traj.json")
    probed = train(model_of(tokenizer), tokenizer, tmp_path / "b", [cb])
    for (n, p), q in zip(plain.model.named_parameters(), probed.model.parameters()):
        assert torch.equal(p, q), n  # bit-identical weights
    loss = lambda tr: [e["loss"] for e in tr.state.log_history if "loss" in e]  # noqa: E731
    assert loss(plain) == loss(probed) and len(loss(plain)) == 5
    steps = [e["step"] for e in probed.state.log_history if "landscape/lambda_max" in e]
    assert steps == [0, 2, 4, 5]
    traj = json.loads((tmp_path / "traj.json").read_text())
    assert [r["step"] for r in traj["records"]] == steps and traj["cost"]["share"] > 0
    assert all(r["lambda_max_hvps"] <= 20 + 3 for r in traj["records"])  # 20 steps (+3 measure the noise)
    assert "delta_norm" not in traj["records"][0] and traj["records"][-1]["delta_norm"] > 0
    assert traj["records"][-1]["kl_base_tuned"] > 0 and traj["records"][-1]["kl_tuned_base"] > 0  # KL: forwards only


def test_a_probe_that_does_not_fit_is_null_with_its_reason_and_the_run_goes_on(tokenizer, tmp_path, probe_data,
                                                                                  monkeypatch):
    """The callback plans like `landscape sharpness` and `predict`: with too little memory left for a
    probe, λ_max and the predictors are null with the refusal's line (one warning each), the loss is
    still measured, and training is the run without the callback, bit for bit — never an OOM.
    FlashAttention or compiled models are sent to fd products (no double backward)."""
    from landscape.foundation import plan as plans
    from landscape.training import callback as C

    plain = train(model_of(tokenizer), tokenizer, tmp_path / "a")
    monkeypatch.setattr(plans, "free_bytes", lambda device: 1024)
    cb = LandscapeCallback(data=probe_data, every=2, metrics=["loss", "lambda_max", "predictors"])
    with pytest.warns(UserWarning, match="not measured") as seen:
        probed = train(model_of(tokenizer), tokenizer, tmp_path / "b", [cb])
    assert sum("lambda_max not measured" in str(w.message) for w in seen) == 1
    assert sum("predictors not measured" in str(w.message) for w in seen) == 1
    for (n, p), q in zip(plain.model.named_parameters(), probed.model.parameters()):
        assert torch.equal(p, q), n
    last = cb.records[-1]
    assert last["lambda_max"] is None and "GB is free" in last["lambda_max_null"] and last["loss"] > 0
    assert last["delta_norm"] is None and "GB is free" in last["predictors_null"]
    m = model_of(tokenizer)
    assert C._twice_differentiable(m)
    m.config._attn_implementation = "flash_attention_2"
    assert not C._twice_differentiable(m) and LandscapeCallback(data=probe_data)._hvp_method(m) == "fd"


def test_the_forgetting_meter_equals_the_predictors_at_one_forward_a_probe(tokenizer, tmp_path, probe_data):
    """The meter's ‖Δw‖, gᵀΔw and KL both ways equal the full predictors' on the same run (two callbacks on
    one Trainer) to float rounding: its g and base log-probabilities are taken once at step 0 and held,
    so a later probe costs one forward a batch, not a gradient, an HVP and the line. At step 0 all four
    are 0; the run is unchanged."""
    plain = train(model_of(tokenizer), tokenizer, tmp_path / "a")
    meter = LandscapeCallback(data=probe_data, every=2, metrics=["meter"])
    full = LandscapeCallback(data=probe_data, every=2, metrics=["predictors"])
    probed = train(model_of(tokenizer), tokenizer, tmp_path / "b", [meter, full])
    for (n, p), q in zip(plain.model.named_parameters(), probed.model.parameters()):
        assert torch.equal(p, q), n
    assert [meter.records[0][k] for k in ("delta_norm", "grad_delta", "kl_base_tuned", "kl_tuned_base")] == [0] * 4
    for a, b in zip(meter.records[1:], full.records[1:]):
        assert a["step"] == b["step"]
        for k in ("delta_norm", "grad_delta", "kl_base_tuned", "kl_tuned_base"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-9), (a["step"], k)
    assert meter.records[-1]["kl_base_tuned"] > 0 and meter.records[-1]["delta_norm"] > 0
    assert LandscapeCallback().cfg.probe_metrics == ("loss", "meter")  # the default: cheap, no HVP


def test_values_equal_the_commands(tokenizer, tmp_path, probe_data):
    """λ_max at step 0 = `sharpness`'s λ_max on the same batches; at the end ‖Δw‖ and the general-loss
    rise F equal a hand computation against the step-0 weights."""
    from landscape.foundation.loss import evaluate
    from landscape.measures import sharpness
    from landscape.foundation.configs import SharpnessConfig

    model = model_of(tokenizer, dropout=0.0)
    w0 = copy.deepcopy(model)
    cb = LandscapeCallback(data=probe_data, every=10, metrics=["loss", "lambda_max", "predictors"],
                           config=ProbeConfig(probe_max_iter=40, probe_tol=1e-6))
    train(model, tokenizer, tmp_path, [cb], steps=3)
    first, last = cb.records[0], cb.records[-1]
    bs = cb._batches
    ref = sharpness.measure(w0, bs, SharpnessConfig(metrics=("lambda_max",), max_iter=40, tol=1e-6))
    assert first["lambda_max"] == pytest.approx(ref["metrics"]["lambda_max"], rel=1e-6)
    assert first["loss"] == pytest.approx(evaluate(w0, bs).loss, rel=1e-6)
    dn = sum(float(((p.double() - q.double()) ** 2).sum()) for p, q in zip(model.parameters(), w0.parameters()))
    assert last["delta_norm"] == pytest.approx(dn ** 0.5, rel=1e-6)
    F = evaluate(model, bs).loss - evaluate(w0, bs).loss
    assert last["general_loss_increase"] == pytest.approx(F, rel=1e-5, abs=1e-7)
    assert last["loss"] == pytest.approx(evaluate(model, bs).loss, rel=1e-6)


def test_lora_predictors_are_in_merged_space(tokenizer, tmp_path, probe_data):
    peft = pytest.importorskip("peft")
    from landscape.foundation.loss import evaluate

    base = model_of(tokenizer, dropout=0.0)
    ref_base = copy.deepcopy(base)
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights="gaussian"))
    cb = LandscapeCallback(data=probe_data, every=10, metrics=["predictors", "lambda_max"])
    train(model, tokenizer, tmp_path, [cb], steps=2)
    merged = copy.deepcopy(model).merge_and_unload()
    dn = sum(float(((p.double() - q.double()) ** 2).sum())
             for p, q in zip(merged.parameters(), ref_base.parameters()))
    last = cb.records[-1]
    assert last["delta_norm"] == pytest.approx(dn ** 0.5, rel=1e-5)
    F = evaluate(merged, cb._batches).loss - evaluate(ref_base, cb._batches).loss
    assert last["general_loss_increase"] == pytest.approx(F, rel=1e-4, abs=1e-6)
    assert cb.records[0]["lambda_max"] > 0


def test_sam_trainer_with_the_callback_is_unchanged(tokenizer, tmp_path, probe_data):
    from landscape.training import SAMTrainer

    class SAM(SAMTrainer):
        def __init__(self, *a, **k):
            super().__init__(*a, sam_rho=0.05, **k)

    plain = train(model_of(tokenizer), tokenizer, tmp_path / "a", steps=3, trainer_cls=SAM)
    cb = LandscapeCallback(data=probe_data, every=1, metrics=["lambda_max", "predictors"])
    probed = train(model_of(tokenizer), tokenizer, tmp_path / "b", [cb], steps=3, trainer_cls=SAM)
    for p, q in zip(plain.model.parameters(), probed.model.parameters()):
        assert torch.equal(p, q)


def test_finetune_probe_every_writes_a_trajectory_and_plot_draws_it(llama_dir, tmp_path, probe_data):
    from click.testing import CliRunner

    from landscape.cli.main import cli

    train_f = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in TEXTS])
    outs = []
    for opt in ("adamw", "sam"):
        out = tmp_path / f"<{opt}>"
        r = CliRunner().invoke(cli, ["finetune", str(llama_dir), "--data", str(train_f), "--out", str(out),
                                     "--optimizer", opt, "--max-steps", "4", "--batch-size", "2", "--lr", "1e-2",
                                     "--eval-fraction", "0", "--probe-every", "2", "--probe-data", str(probe_data),
                                     "--probe-metrics", "loss,lambda_max,predictors", "--json"])
        assert r.exit_code == 0, r.output
        traj = json.loads((out / "trajectory.json").read_text())
        assert [x["step"] for x in traj["records"]] == [0, 2, 4]
        assert traj["records"][-1]["delta_norm"] > traj["records"][1]["delta_norm"] > 0
        outs.append(str(out / "trajectory.json"))
    # the probe changes nothing: the same fine-tune without it gives the same weights
    r = CliRunner().invoke(cli, ["finetune", str(llama_dir), "--data", str(train_f), "--out", str(tmp_path / "plain"),
                                 "--max-steps", "4", "--batch-size", "2", "--lr", "1e-2", "--eval-fraction", "0"])
    assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "<adamw>" / "model.safetensors"), load_file(tmp_path / "plain" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    html_out = tmp_path / "t.html"
    r = CliRunner().invoke(cli, ["plot", *outs, "--out", str(html_out)])
    assert r.exit_code == 0, r.output
    page = html_out.read_text()
    assert "&lt;adamw&gt;" in page and "<adamw>" not in page and "lambda_max" in page
    r = CliRunner().invoke(cli, ["plot", outs[0], "x.h5", "--out", str(html_out)])
    assert r.exit_code == 2 and "not both" in r.output


def test_task_loss_trajectory_gives_frontier_points(tokenizer, tmp_path, probe_data):
    from landscape.foundation.loss import evaluate
    from landscape.study.tradeoff import frontier, trajectory_points

    task = write_jsonl(tmp_path / "task.jsonl", [{"text": t} for t in TEXTS[4:]])
    model = model_of(tokenizer, dropout=0.0)
    cb = LandscapeCallback(data=probe_data, every=1, metrics=["task_loss", "predictors"],
                           config=ProbeConfig(probe_task_data=str(task)))
    train(model, tokenizer, tmp_path, [cb], steps=3)
    assert cb.records[-1]["task_loss"] == pytest.approx(evaluate(model, cb._task).loss, rel=1e-6)
    rows = trajectory_points(cb.document(), "adamw", seed=0, forgetting="general_loss_increase", label="a")
    assert [r["label"] for r in rows] == ["a@1", "a@2", "a@3"]
    assert frontier([(r["task"], r["forgetting"]) for r in rows])  # a non-empty frontier from one run
    with pytest.raises(ConfigError, match="probe_task_data"):  # at construction, before any training
        LandscapeCallback(data=probe_data, every=1, metrics=["task_loss"])


def test_forgetting_probes_on_a_suite_subset_score_its_first_items(tokenizer, tmp_path, probe_data):
    """probe_suite_items N: each probe's forgetting is the base-minus-now score of the first N items
    (not of all of them), the same items at every probe."""
    from landscape.measures.forgetting import load_suite, score_suite

    items = [{"context": f"the {a} is", "choices": [" red", " blue", " green"], "answer": k % 3}
             for k, a in enumerate(["cat", "dog", "mat", "forest", "color", "cat", "dog", "mat"])]
    suite = write_jsonl(tmp_path / "colors.jsonl", items)
    model = model_of(tokenizer, dropout=0.0)
    w0 = copy.deepcopy(model)
    cb = LandscapeCallback(data=probe_data, every=10, metrics=["forgetting"],
                           config=ProbeConfig(probe_suites=(str(suite),), probe_suite_items=3))
    train(model, tokenizer, tmp_path, [cb], steps=3)
    full = load_suite(suite)
    head = type(full)(**{**full.__dict__, "items": full.items[:3]})
    want = score_suite(w0, tokenizer, head)["score"] - score_suite(model, tokenizer, head)["score"]
    assert cb.records[-1]["forgetting/colors"] == pytest.approx(want, abs=1e-12)
    assert {round(r["forgetting/colors"] * 3, 9) % 1 for r in cb.records} == {0.0}  # thirds: 3 items scored


def test_a_resumed_probed_finetune_has_the_uninterrupted_trajectory(llama_dir, tmp_path, probe_data):
    from landscape.foundation.configs import FinetuneConfig, LoadConfig
    from landscape.training.finetune import finetune

    train_f = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in TEXTS])
    kw = dict(lr=1e-2, max_steps=6, batch_size=2, save_every=2, eval_fraction=0.0)
    probe = lambda: LandscapeCallback(data=probe_data, every=2, metrics=["loss", "predictors", "forgetting"])  # noqa: E731
    load = LoadConfig(device="cpu")
    finetune(llama_dir, train_f, tmp_path / "full", FinetuneConfig(**kw), load=load, probe=probe())

    def stop_at_3(state, opt):
        if state.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(llama_dir, train_f, tmp_path / "cut", FinetuneConfig(**kw), load=load, probe=probe(), on_step=stop_at_3)
    finetune(llama_dir, train_f, tmp_path / "cut", FinetuneConfig(**kw, resume=True), load=load, probe=probe())
    a, b = (json.loads((tmp_path / k / "trajectory.json").read_text())["records"] for k in ("full", "cut"))
    assert [r["step"] for r in b] == [r["step"] for r in a] == [0, 2, 4, 6]
    for x, y in zip(a, b):  # the same values (forgetting against the base's scores, Δw against the base)
        assert {k: v for k, v in x.items() if k != "probe_seconds"} == {k: v for k, v in y.items()
                                                                        if k != "probe_seconds"}


def test_a_run_killed_between_its_saved_state_and_that_steps_probe_resumes_with_the_probe(llama_dir, tmp_path,
                                                                                          probe_data):
    """The state is saved before the step's probe runs: a kill in between (the 1.5B study's AdamW 1e-4
    lost its step-10 probe so) must not leave a hole in the trajectory — the resume measures it."""
    from landscape.foundation.configs import FinetuneConfig, LoadConfig
    from landscape.training.finetune import finetune

    class KilledAt4(LandscapeCallback):
        def at_step(self, model, step, max_steps, state=None):
            if step == 4:
                raise KeyboardInterrupt
            super().at_step(model, step, max_steps, state)

    train_f = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in TEXTS])
    kw = dict(lr=1e-2, max_steps=6, batch_size=2, save_every=2, eval_fraction=0.0)
    probe = dict(data=probe_data, every=2, metrics=["loss", "forgetting"])
    load = LoadConfig(device="cpu")
    finetune(llama_dir, train_f, tmp_path / "full", FinetuneConfig(**kw), load=load, probe=LandscapeCallback(**probe))
    with pytest.raises(KeyboardInterrupt):
        finetune(llama_dir, train_f, tmp_path / "cut", FinetuneConfig(**kw), load=load, probe=KilledAt4(**probe))
    kept = json.loads((tmp_path / "cut.partial" / "trajectory.json").read_text())["records"]
    assert [r["step"] for r in kept] == [0, 2]  # the state at step 4 is saved, its probe is not
    finetune(llama_dir, train_f, tmp_path / "cut", FinetuneConfig(**kw, resume=True), load=load,
             probe=LandscapeCallback(**probe))
    a, b = (json.loads((tmp_path / k / "trajectory.json").read_text())["records"] for k in ("full", "cut"))
    assert [r["step"] for r in b] == [r["step"] for r in a] == [0, 2, 4, 6]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "probe_seconds"} == {k: v for k, v in y.items()
                                                                        if k != "probe_seconds"}


def test_settings_come_from_the_config_unless_given():
    cb = LandscapeCallback(config=ProbeConfig(probe_every=7, probe_metrics=("loss",), probe_data="g.jsonl"))
    assert (cb.cfg.probe_every, cb.cfg.probe_metrics, cb.cfg.probe_data) == (7, ("loss",), "g.jsonl")
    cb = LandscapeCallback(data="h.jsonl", every=3, metrics=["lambda_max"], config=cb.cfg)
    assert (cb.cfg.probe_every, cb.cfg.probe_metrics, cb.cfg.probe_data) == (3, ("lambda_max",), "h.jsonl")
    assert LandscapeCallback().cfg.probe_every == 100 and LandscapeCallback().cfg.probe_metrics == ("loss", "meter")


def test_a_trainer_without_processing_class_finds_the_models_own_tokenizer(tokenizer, tmp_path, probe_data):
    """Pre-tokenized data and an own collator: a common script builds its Trainer without a tokenizer."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model_of(tokenizer).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2, max_steps=2,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    for given in (None, tokenizer):  # found beside the weights; or given to the callback
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
        cb = LandscapeCallback(data=probe_data, every=1, metrics=["loss"], tokenizer=given)
        Trainer(model=model, args=args, train_dataset=rows(tokenizer), callbacks=[cb]).train()
        assert [r["step"] for r in cb.records] == [0, 1, 2] and all(r["loss"] > 0 for r in cb.records)
    (tmp_path / "m" / "tokenizer.json").unlink()  # none anywhere: the one-line error, before any step
    (tmp_path / "m" / "tokenizer_config.json").unlink()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with pytest.raises(data.DataError, match="needs a tokenizer"):
        Trainer(model=model, args=args, train_dataset=rows(tokenizer), callbacks=[LandscapeCallback(
            data=probe_data, every=1, metrics=["loss"])]).train()
