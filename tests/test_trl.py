"""SAM inside users' trainer classes: ``class SAMSFT(SAMMixin, trl.SFTTrainer)``.

One step equals the ``SAM`` optimizer's step; TRL's per-call metrics (its token count, entropy and
token accuracy) are counted once and measured at the unperturbed weights, so they equal a plain
SFTTrainer's first step.
"""

import pytest
import torch

from landscape.training import SAM, SAMMixin
from tests.test_sam import BETAS, EPS, LR, sam_step, tiny_batch, tiny_model

trl = pytest.importorskip("trl", reason="the trl extra is not installed (`make install` installs it)")


def sft_args(tmp_path, batch_size, steps=1):
    # TRL's SFTConfig turns bf16 and gradient checkpointing on by default; bf16 would make this a
    # comparison of roundings, so it is off (checkpointing stays: it recomputes, it changes nothing)
    return trl.SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=batch_size, max_steps=steps,
                         learning_rate=LR, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
                         max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                         adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS, optim="adamw_torch",
                         disable_tqdm=True, dataloader_num_workers=0, seed=0, max_length=None, bf16=False)


def sft_dataset(batch):
    import datasets

    keep = batch.attention_mask == 1
    return datasets.Dataset.from_list([{"input_ids": batch.input_ids[i][keep[i]].tolist()}
                                       for i in range(batch.input_ids.shape[0])])


class SAMSFT(SAMMixin, trl.SFTTrainer):
    pass


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_sft_step_equals_the_sam_optimizer(tokenizer, tmp_path, adaptive):
    batch = tiny_batch(tokenizer)
    model, ref = tiny_model(tokenizer, dtype=torch.float32), tiny_model(tokenizer, dtype=torch.float32)
    rho = 0.5 if adaptive else 0.05
    SAMSFT(model=model, args=sft_args(tmp_path, 3), train_dataset=sft_dataset(batch), processing_class=tokenizer,
           sam_rho=rho, sam_adaptive=adaptive).train()
    opt = SAM(ref.parameters(), torch.optim.AdamW, rho=rho, adaptive=adaptive, lr=LR, betas=BETAS, eps=EPS,
              weight_decay=0.0)
    sam_step(ref, batch, opt)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=n)


def test_trl_metrics_are_counted_once_at_the_unperturbed_weights(tokenizer, tmp_path):
    batch = tiny_batch(tokenizer)
    logs = {}
    for name, cls, kw in (("sam", SAMSFT, {"sam_rho": 0.5}), ("plain", trl.SFTTrainer, {})):
        tr = cls(model=tiny_model(tokenizer, dtype=torch.float32), args=sft_args(tmp_path / name, 3),
                 train_dataset=sft_dataset(batch), processing_class=tokenizer, **kw)
        tr.train()
        logs[name] = tr.state.log_history[0]
    tokens = int(batch.attention_mask.sum())
    assert logs["sam"]["num_tokens"] == logs["plain"]["num_tokens"] == tokens
    for k in ("entropy", "mean_token_accuracy"):  # the first pass's, at w: the plain step's values
        assert logs["sam"][k] == pytest.approx(logs["plain"][k], rel=1e-6), k
    assert logs["sam"]["loss"] > logs["plain"]["loss"]  # the logged loss is L(w + ε), as SAMTrainer's
