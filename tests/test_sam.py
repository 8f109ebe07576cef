"""SAM / ASAM: against hand-computed references, invariants, toy problems, accumulation, resume."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from landscape.foundation import checkpoint, data, toy
from landscape.training import finetune as F
from landscape.measures.hessian import HessianOperator, lanczos
from landscape.foundation.configs import DataConfig, FinetuneConfig
from landscape.foundation.loss import batch_term, evaluate
from landscape.foundation.objective import FunctionObjective
from landscape.training.sam import SAM, Perturbation
from tests.conftest import write_jsonl


def finetune_(base, data, out, *, on_step=None, device="cpu", dtype="float32", **settings):
    """landscape.training.finetune.finetune with its settings given as keywords."""
    from landscape.foundation.configs import FinetuneConfig, LoadConfig
    from landscape.training import finetune as F

    return F.finetune(base, data, out, FinetuneConfig(**settings), load=LoadConfig(device=device, dtype=dtype),
                      on_step=on_step)

LR, WD, BETAS, EPS = 1e-2, 0.1, (0.9, 0.999), 1e-8


def tiny_model(tokenizer, dtype=torch.float64, seed=0, arch=None):
    # float64 references use GPT-2: its LayerNorm stays float64, while HF's RMSNorm computes in
    # float32, and AdamW's g/(|g| + eps) amplifies that noise wherever a gradient is near zero.
    arch = arch or ("gpt2" if dtype == torch.float64 else "llama")
    cfg = toy.tiny_config(arch, vocab_size=len(tokenizer), tokenizer=tokenizer, hidden=16, layers=1, heads=2)
    return toy.build_model(cfg, seed=seed, dtype=dtype)


def tiny_batch(tokenizer, texts=("the cat sat on the mat .", "the dog is red .", "one plus two is three .")):
    recs = [{"text": t} for t in texts]
    return data.load_batches("mem", tokenizer, batch_size=len(recs), max_length=16, records=recs).batches[0]


def grads_at(model, batch, weights):
    """∇L at ``weights`` (a list of tensors), computed on a copy of the model."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(m.parameters(), weights):
            p.copy_(w)
    loss = batch_term(m, batch, batch.n_tokens)
    return list(torch.autograd.grad(loss, list(m.parameters())))


def adamw_first_step(w, g, lr=LR, wd=WD):
    """AdamW's first step by hand: m̂ = g, v̂ = g², w ← w(1 − lr·wd) − lr·m̂/(√v̂ + eps)."""
    return w * (1 - lr * wd) - lr * g / (g.abs() + EPS)


def sam_step(model, batch, opt):
    def closure():
        opt.zero_grad()
        loss = batch_term(model, batch, batch.n_tokens)
        loss.backward()
        return loss

    return opt.step(closure)


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_step_equals_hand_computed_reference(tokenizer, adaptive):
    model, batch, rho = tiny_model(tokenizer), tiny_batch(tokenizer), 0.05
    w0 = [p.detach().clone() for p in model.parameters()]
    g = grads_at(model, batch, w0)
    if adaptive:  # ε = ρ·w²⊙g / ‖|w|⊙g‖
        norm = torch.sqrt(sum(((w.abs() * gi) ** 2).sum() for w, gi in zip(w0, g)))
        eps = [rho * w * w * gi / norm for w, gi in zip(w0, g)]
    else:  # ε = ρ·g / ‖g‖
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        eps = [rho * gi / norm for gi in g]
    g2 = grads_at(model, batch, [w + e for w, e in zip(w0, eps)])
    expected = [adamw_first_step(w, gi) for w, gi in zip(w0, g2)]

    opt = SAM(model.parameters(), torch.optim.AdamW, rho=rho, adaptive=adaptive, lr=LR, betas=BETAS, eps=EPS,
              weight_decay=WD)
    sam_step(model, batch, opt)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-9)
    # and it is not simply AdamW on the plain gradient
    plain = [adamw_first_step(w, gi) for w, gi in zip(w0, g)]
    assert max(float((p.detach() - q).abs().max()) for p, q in zip(model.parameters(), plain)) > 1e-6


def test_perturbation_norm_is_rho_and_weights_restore_bit_exactly(tokenizer):
    model, batch = tiny_model(tokenizer, dtype=torch.float32), tiny_batch(tokenizer)
    w0 = [p.detach().clone() for p in model.parameters()]
    batch_term(model, batch, batch.n_tokens).backward()
    for adaptive in (False, True):
        pert = Perturbation(model.parameters(), rho=0.05, adaptive=adaptive)
        pert.perturb()
        e = [p.detach().double() - w.double() for p, w in zip(model.parameters(), w0)]
        if adaptive:  # ‖T⁻¹ε‖ = ρ
            n = math.sqrt(sum(float(((ei / w.double().abs().clamp_min(1e-30)) ** 2).sum()) for ei, w in zip(e, w0)))
        else:
            n = math.sqrt(sum(float((ei ** 2).sum()) for ei in e))
        assert n == pytest.approx(0.05, rel=1e-4)
        pert.restore()
        assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))
    with pytest.raises(RuntimeError):
        pert.restore()


def test_bf16_perturbation_is_rounded_once_from_the_saved_weights(tokenizer):
    """w + ε for bf16 weights is (w in float32 + ε) rounded once, the rounding every measurement uses;
    the old in-place add rounded ε to bf16 first (two roundings) and fails the equality."""
    model, batch = tiny_model(tokenizer, dtype=torch.bfloat16), tiny_batch(tokenizer)
    w0 = [p.detach().clone() for p in model.parameters()]
    batch_term(model, batch, batch.n_tokens).backward()
    g = [p.grad.float() for p in model.parameters()]
    norm = math.sqrt(sum(float((gi.double() ** 2).sum()) for gi in g))
    pert = Perturbation(model.parameters(), rho=0.05)
    assert pert.perturb() == pytest.approx(norm, rel=1e-6)
    scale = torch.tensor(0.05) / (torch.tensor(pert.last_norm, dtype=torch.float32) + 1e-12)
    want = [(w.float() + gi * scale).bfloat16() for w, gi in zip(w0, g)]
    moved = [p for p in model.parameters()]
    assert all(torch.equal(p.detach(), w) for p, w in zip(moved, want))
    assert any(not torch.equal(p.detach(), w) for p, w in zip(moved, w0))
    pert.restore()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))


def test_step_runs_exactly_two_passes_and_restores_on_failure(tokenizer):
    model, batch = tiny_model(tokenizer), tiny_batch(tokenizer)
    opt = SAM(model.parameters(), lr=LR)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = batch_term(model, batch, batch.n_tokens)
        loss.backward()
        if len(calls) == 2 and fail:
            raise ValueError("boom")
        return loss

    fail = False
    opt.step(closure)
    assert len(calls) == 2
    w = [p.detach().clone() for p in model.parameters()]
    fail, calls[:] = True, []
    with pytest.raises(ValueError):
        opt.step(closure)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w))  # not left at w + ε


def test_sam_reaches_the_minimum_of_a_parabola():
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    A = U @ torch.diag(torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.2], dtype=torch.float64)) @ U.T
    c = torch.randn(6, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    opt = SAM([w], torch.optim.SGD, rho=0.05, lr=0.1)
    steps = 800
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = 0.5 * (w - c) @ A @ (w - c)
            loss.backward()
            return loss
        opt.step(closure)
        sched.step()
    assert float((w.detach() - c).norm()) < 1e-3


def test_sam_ends_in_the_flatter_minimum():
    """L(x, y) = (xy − 1)²: every point of xy = 1 is a minimum, with λ_max = 2(x² + y²).

    Gradient descent from (2.5, 0.1) stops where it lands (λ_max ≈ 13); SAM drifts along the valley
    towards the flattest minimum (1, 1), λ_max = 4 (measured with our Lanczos).
    """
    def run(use_sam):
        w = torch.nn.Parameter(torch.tensor([2.5, 0.1], dtype=torch.float64))
        opt = SAM([w], torch.optim.SGD, rho=0.1, lr=0.01) if use_sam else torch.optim.SGD([w], lr=0.01)
        for _ in range(4000):
            def closure():
                opt.zero_grad()
                loss = (w[0] * w[1] - 1) ** 2
                loss.backward()
                return loss
            opt.step(closure) if use_sam else (closure(), opt.step())
        obj = FunctionObjective(lambda: (w[0] * w[1] - 1) ** 2, [w])
        return obj.value(), lanczos(HessianOperator(obj), k=1, max_iter=2).eigenvalues[0]

    loss_gd, lam_gd = run(False)
    loss_sam, lam_sam = run(True)
    assert loss_gd < 1e-8 and loss_sam < 1e-3
    assert lam_gd > 12
    assert lam_sam < 5 < lam_gd


def micro_batches(tokenizer):
    texts = ["the cat sat on the mat .", "the dog is red .", "one plus two is three .", "the a cat .",
             "the color of the cat is blue .", "red blue green .", "the dog lives in the forest .", "two ."]
    recs = [{"text": t} for t in texts]
    return data.load_batches("mem", tokenizer, batch_size=2, max_length=16, records=recs)


def test_accumulation_is_per_micro_batch_sam(tokenizer):
    """4 micro-batches: Σ_k (n_k/N)·∇L_k(w + ε_k), ε_k = ρ·g_k/‖g_k‖, then one AdamW step from w."""
    model, mb = tiny_model(tokenizer), micro_batches(tokenizer)
    cfg = FinetuneConfig(optimizer="sam", lr=LR, weight_decay=WD, rho=0.05, grad_clip=None, grad_accum=4)
    w0 = [p.detach().clone() for p in model.parameters()]
    N = sum(b.n_tokens for b in mb)
    total = [torch.zeros_like(w) for w in w0]
    for b in mb.batches:
        g = grads_at(model, b, w0)
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        g2 = grads_at(model, b, [w + 0.05 * gi / norm for w, gi in zip(w0, g)])
        total = [t + gi * b.n_tokens / N for t, gi in zip(total, g2)]
    expected = [adamw_first_step(w, t) for w, t in zip(w0, total)]
    opt = F.make_optimizer(list(model.parameters()), cfg)
    row = F.train_step(model, opt, mb.batches, cfg, LR)
    # 1e-6 (the bar): summation order differs, and AdamW's first step g/(|g| + 1e-8)
    # amplifies that rounding ~1e6-fold on the few coordinates whose gradient is ~1e-8.
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-6)
    # ... and it is not one perturbation for the whole accumulated batch
    g = [torch.zeros_like(w) for w in w0]
    for b in mb.batches:
        g = [gi + gk * b.n_tokens / N for gi, gk in zip(g, grads_at(tiny_model(tokenizer), b, w0))]
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
    g2 = [torch.zeros_like(w) for w in w0]
    for b in mb.batches:
        at = grads_at(tiny_model(tokenizer), b, [w + 0.05 * gi / norm for w, gi in zip(w0, g)])
        g2 = [gi + gk * b.n_tokens / N for gi, gk in zip(g2, at)]
    whole = [adamw_first_step(w, t) for w, t in zip(w0, g2)]
    assert max(float((p.detach() - q).abs().max()) for p, q in zip(model.parameters(), whole)) > 1e-4
    ref_loss = sum(float(batch_term(tiny_model(tokenizer), b, N)) for b in mb.batches)
    assert row["loss"] == pytest.approx(ref_loss, rel=1e-9)  # the logged loss is at w, not w + ε


def test_adamw_accumulation_equals_one_big_batch(tokenizer):
    mb = micro_batches(tokenizer)
    recs = [{"text": t} for t in ["the cat sat on the mat .", "the dog is red .", "one plus two is three .",
                                  "the a cat .", "the color of the cat is blue .", "red blue green .",
                                  "the dog lives in the forest .", "two ."]]
    big = data.load_batches("mem", tokenizer, batch_size=8, max_length=16, records=recs).batches
    out = []
    for micro, accum in ((mb.batches, 4), (big, 1)):
        model = tiny_model(tokenizer)
        cfg = FinetuneConfig(lr=LR, grad_clip=None, grad_accum=accum)
        F.train_step(model, F.make_optimizer(list(model.parameters()), cfg), micro, cfg, LR)
        out.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_bf16_autocast_step_keeps_float32_weights_and_restores(tokenizer):
    model, mb = tiny_model(tokenizer, dtype=torch.float32), micro_batches(tokenizer)
    cfg = FinetuneConfig(optimizer="asam", lr=1e-3, rho=0.5, bf16=True, grad_accum=2)
    opt = F.make_optimizer(list(model.parameters()), cfg)
    before = [p.detach().clone() for p in model.parameters()]
    row = F.train_step(model, opt, mb.batches[:2], cfg, 1e-3)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(row["loss"]) and row["sam_grad_norm"] > 0
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not opt.perturbation.active


def test_state_dict_round_trips_base_state(tokenizer):
    model, batch = tiny_model(tokenizer), tiny_batch(tokenizer)
    opt = SAM(model.parameters(), rho=0.07, adaptive=True, lr=LR)
    sam_step(model, batch, opt)
    sd = copy.deepcopy(opt.state_dict())  # torch's load_state_dict would share the tensors
    model2 = tiny_model(tokenizer)
    model2.load_state_dict(model.state_dict())
    opt2 = SAM(model2.parameters(), lr=LR)
    opt2.load_state_dict(sd)
    assert opt2.rho == 0.07 and opt2.adaptive
    sam_step(model, batch, opt)
    sam_step(model2, batch, opt2)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))


def test_lr_scheduler_drives_the_base_step(tokenizer):
    model = tiny_model(tokenizer)
    opt = SAM(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5


@pytest.fixture()
def task_data(tmp_path):
    rows = [{"prompt": f"task : reverse input : {a} {b} output :", "completion": f"{b} {a}"}
            for a in ("red", "blue", "green", "cat", "dog") for b in ("one", "two", "three", "mat")]
    return write_jsonl(tmp_path / "train.jsonl", rows)


@pytest.mark.parametrize("optimizer,dtype", [("adamw", "float32"), ("sam", "float32"), ("sam", "bfloat16")])
def test_finetune_resume_gives_the_same_weights(llama_dir, task_data, tmp_path, optimizer, dtype):
    # bf16: StochasticAdamW's random rounding is seeded by the step, so a resumed run draws the same bits
    kw = dict(optimizer=optimizer, lr=3e-3, max_steps=6, batch_size=4, grad_accum=2, save_every=2,
              device="cpu", eval_fraction=0.2, dtype=dtype)
    full = finetune_(llama_dir, task_data, tmp_path / "full", **kw)

    def stop_at_3(state, opt):
        if state.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune_(llama_dir, task_data, tmp_path / "cut", on_step=stop_at_3, **kw)
    assert (tmp_path / "cut.partial" / F.STATE_FILE).is_file() and not (tmp_path / "cut").exists()
    resumed = finetune_(llama_dir, task_data, tmp_path / "cut", resume=True, **kw)
    assert resumed["resumed_from"] == 3
    assert resumed["update_rounding"].startswith("stochastic" if dtype == "bfloat16" else "none")
    assert resumed["fingerprint"] == full["fingerprint"]  # bit-identical weights
    a = checkpoint.load_checkpoint(tmp_path / "full").model.state_dict()
    b = checkpoint.load_checkpoint(tmp_path / "cut").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((tmp_path / "cut" / "training_log.json").read_text())
    assert [r["step"] for r in log["log"]] == list(range(1, 7)) and log["evals"][-1]["step"] == 6
    assert not (tmp_path / "cut.partial").exists()
    cfg = json.loads((tmp_path / "cut" / "finetune_config.json").read_text())
    assert cfg["config"]["optimizer"] == optimizer and cfg["base_fingerprint"] == full["base_fingerprint"]


def test_finetune_refuses_a_resume_under_another_config(llama_dir, task_data, tmp_path):
    from landscape.foundation.errors import UserError

    def stop(state, opt):
        raise KeyboardInterrupt

    kw = dict(max_steps=4, batch_size=4, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        finetune_(llama_dir, task_data, tmp_path / "o", on_step=stop, **kw)
    with pytest.raises(UserError, match="another config_hash"):
        finetune_(llama_dir, task_data, tmp_path / "o", resume=True, lr=1.0, **kw)
    with pytest.raises(UserError, match="interrupted run"):
        finetune_(llama_dir, task_data, tmp_path / "o", **kw)


def test_finetune_lowers_the_task_loss(llama_dir, task_data, tmp_path):
    r = finetune_(llama_dir, task_data, tmp_path / "t", optimizer="sam", lr=1e-2, max_steps=30, batch_size=8,
                   eval_data=task_data, device="cpu")
    ck = checkpoint.load_checkpoint(tmp_path / "t")
    base = checkpoint.load_checkpoint(llama_dir)
    bs = data.batches_for(ck, DataConfig(data=str(task_data)))
    assert evaluate(ck.model, bs).loss < 0.7 * evaluate(base.model, bs).loss
    assert r["eval_loss"] == pytest.approx(evaluate(ck.model, bs).loss, rel=1e-5)


def one_step_args(tmp_path, batch_size: int):
    """transformers TrainingArguments for one plain AdamW step (lr LR, no decay, schedule or clipping) on the CPU."""
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=batch_size, max_steps=1,
                             learning_rate=LR, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
                             max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1000,
                             adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS, optim="adamw_torch",
                             disable_tqdm=True, dataloader_num_workers=0, seed=0)


def sam_trainer_rows(tokenizer):
    """8 rows of the Trainer tests that run several steps (one global batch per step)."""
    texts = ["the cat sat on the mat .", "the dog is red .", "one plus two is three .", "the a cat .",
             "the color of the cat is blue .", "red blue green .", "the dog lives in the forest .", "two ."]
    b = data.load_batches("mem", tokenizer, batch_size=len(texts), max_length=16,
                          records=[{"text": t} for t in texts]).batches[0]
    return [{"input_ids": b.input_ids[i], "attention_mask": b.attention_mask[i], "labels": b.labels[i]}
            for i in range(len(texts))]


def sam_trainer_args(out, batch_size: int, steps: int):
    """TrainingArguments of ``steps`` SGD steps (lr 0.5: AdamW's first steps, lr·g/(|g| + eps), turn the
    rounding of near-zero gradients into differences of up to lr) with the Trainer's default clipping."""
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=steps,
                             learning_rate=0.5, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=1000,
                             optim="sgd", disable_tqdm=True, dataloader_num_workers=0, seed=0)


def test_sam_trainer_step_equals_sam(tokenizer, tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs the accelerate package")
    from landscape.training.sam import SAMTrainer

    torch.manual_seed(0)
    model = tiny_model(tokenizer, dtype=torch.float32)
    ref = tiny_model(tokenizer, dtype=torch.float32)
    batch = tiny_batch(tokenizer)
    labels = batch.labels.clone()
    rows = [{"input_ids": batch.input_ids[i], "attention_mask": batch.attention_mask[i], "labels": labels[i]}
            for i in range(batch.input_ids.shape[0])]
    trainer = SAMTrainer(model=model, args=one_step_args(tmp_path, len(rows)), train_dataset=rows, sam_rho=0.05)
    trainer.train()
    opt = SAM(ref.parameters(), torch.optim.AdamW, rho=0.05, lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0)
    sam_step(ref, batch, opt)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=n)


def test_sam_trainer_is_one_class():
    """``landscape.training.sam.SAMTrainer`` is built once (lazily: it needs transformers' Trainer),
    so isinstance checks and subclasses see the same class on every access."""
    pytest.importorskip("accelerate", reason="transformers.Trainer needs the accelerate package")
    from landscape.training import sam

    assert sam.SAMTrainer is sam.SAMTrainer
    from landscape.training.sam import SAMTrainer

    assert SAMTrainer is sam.SAMTrainer


def test_bf16_perturbation_holds_one_parameters_float32_temporaries_at_a_time():
    """SAM's ε on bf16 weights: the saved bf16 copy (191 MB here) plus one parameter's float32
    temporaries (a few × 38 MB) — 367 MB measured. ε of every parameter at once in float32 (400 MB more:
    710 MB measured) is what got a bf16 1.5B SAM fine-tune killed by the OS at 24 GB."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "tests" / "sam_peak_check.py"), str(root)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    saved_mb = 10 * 10_000_000 * 2 / 2**20
    assert float(r.stdout.strip()) < 2.5 * saved_mb, r.stdout
