"""Run under ``torchrun --nproc-per-node 2`` by tests/test_fsdp.py: invariants of a sharded model that
the CLI cannot show — each rank's rows equal the file's, and every measurement leaves them bit-identical.

Usage: fsdp_check.py measure CKPT DATA OUT.json | fsdp_check.py resume CKPT TRAIN OUTDIR
"""

import json
import sys

import torch
from safetensors.torch import load_file

from landscape.foundation import checkpoint, data, params
from landscape.foundation import distributed as dist
from landscape.foundation.configs import DataConfig, SharpnessConfig, SurfaceConfig
from landscape.measures import sharpness, surface


def measure(ckpt, data_path, out):
    ck = checkpoint.load_checkpoint(ckpt, device="cpu", shard="fsdp")
    whole = load_file(f"{ckpt}/model.safetensors")
    named = dict(ck.model.named_parameters())
    rows_match = all(torch.equal(params.local(p), whole[n][params.rows(p)[1]:params.rows(p)[2]])
                     for n, p in named.items())
    held = sum(params.local(p).numel() for p in named.values())
    before = {n: params.local(p).clone() for n, p in named.items()}
    bs = data.batches_for(ck, DataConfig(data=data_path, batch_size=3))
    cfg = SharpnessConfig(metrics=("lambda_max", "sam", "asam", "eps", "avg", "trace"), hvp_method="fd",
                          trace_samples=3, max_iter=20)
    rows = sharpness.measure(ck.model, bs, cfg)["metrics"]
    surface.surface(ck.model, bs, f"{out}.h5", SurfaceConfig(x="-1:1:3", y="-1:1:2", norm="layer"))
    unchanged = all(torch.equal(params.local(p), before[n]) for n, p in named.items())
    # the same checkpoint loaded whole in this process afterwards: nothing of the sharded load may
    # linger (a process-wide "sharded" flag once summed its whole-vector norms over the ranks: √2 off)
    whole_ck = checkpoint.load_checkpoint(ckpt, device="cpu")
    again = sharpness.measure(whole_ck.model, data.batches_for(whole_ck, DataConfig(data=data_path, batch_size=3)),
                              cfg)["metrics"]
    got = dist.all_gather_object({"rows_match": rows_match, "held": held, "unchanged": unchanged,
                                  "sharded": all(params.is_sharded(p) for p in named.values()),
                                  "sharded_sam": rows["sam_sharpness"], "whole_sam": again["sam_sharpness"],
                                  "sharded_eps": rows["eps_sharpness"], "whole_eps": again["eps_sharpness"]})
    if dist.is_main():
        total = sum(p.numel() for p in named.values())
        with open(out, "w") as f:
            json.dump({"ranks": got, "total": total}, f)


def resume(ckpt, train, out):
    """A sharded SAM fine-tune cut after step 3 (Ctrl-C at a step boundary) and resumed, beside the
    uninterrupted run: their fingerprints go to OUT/result.json."""
    from landscape.foundation.configs import FinetuneConfig, LoadConfig
    from landscape.training.finetune import finetune

    cfg = FinetuneConfig(optimizer="sam", lr=3e-3, max_steps=5, batch_size=3, grad_accum=2, save_every=2,
                         eval_fraction=0.0)
    load = LoadConfig(device="cpu", shard="fsdp")
    full = finetune(ckpt, train, f"{out}/full", cfg, load=load)

    def stop_at_3(state, opt):
        if state.step == 3:
            raise KeyboardInterrupt

    try:
        finetune(ckpt, train, f"{out}/cut", cfg, load=load, on_step=stop_at_3)
    except KeyboardInterrupt:
        pass
    states = sorted(p.name for p in __import__("pathlib").Path(f"{out}/cut.partial").glob("*.pt"))
    dist.barrier()
    resumed = finetune(ckpt, train, f"{out}/cut", cfg.replace(resume=True), load=load)
    if dist.is_main():
        with open(f"{out}/result.json", "w") as f:
            json.dump({"full": full["fingerprint"], "resumed": resumed["fingerprint"],
                       "resumed_from": resumed["resumed_from"], "states": states}, f)


def dither(ckpt, out):
    """fd's dithered steps on each rank's rows equal the rows of the one-process steps (bit for bit)."""
    ck = checkpoint.load_checkpoint(ckpt, device="cpu", shard="fsdp")
    whole = checkpoint.load_checkpoint(ckpt, device="cpu").model
    leaves, full = list(ck.model.parameters()), list(whole.parameters())
    g = torch.Generator().manual_seed(5)
    delta_full = [torch.randn(p.shape, generator=g) for p in full]
    ps = [params.local(p) for p in leaves]
    origin, origin_full = [p.detach().clone() for p in ps], [p.detach().clone() for p in full]
    delta = [d[params.rows(p)[1]:params.rows(p)[2]] if params.is_sharded(p) else d for p, d in zip(leaves, delta_full)]
    same, moved = True, 0
    with torch.no_grad():
        for _ in zip(params.set_dithered_offset(ps, origin, delta, 1e-4, (1.0, -2.0), seed=7, leaves=leaves),
                     params.set_dithered_offset(full, origin_full, delta_full, 1e-4, (1.0, -2.0), seed=7)):
            for p, o, f in zip(leaves, origin, full):
                a, b = params.rows(p)[1:]
                same &= torch.equal(params.local(p), f.detach()[a:b])
                moved += int((params.local(p) != o).sum())
    got = dist.all_gather_object({"same": bool(same), "moved": moved})
    if dist.is_main():
        with open(out, "w") as f:
            json.dump(got, f)


def sam_trainer(ckpt, mode, out):
    """A transformers Trainer with SAMMixin, 2 steps, on a model FSDP2-sharded at load time by
    ``from_pretrained(distributed_config=...)`` (the Trainer neither wraps nor shards it again);
    MODE sam or plain (the Trainer alone). The gathered weights go to OUT (safetensors, rank 0)."""
    from safetensors.torch import save_file
    from transformers import Trainer

    from landscape.training.sam import SAMMixin
    from tests.test_sam import sam_trainer_args, sam_trainer_rows

    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    model = AutoModelForCausalLM.from_pretrained(ckpt, distributed_config=DistributedConfig(fsdp_size=dist.world()))
    assert all(params.is_sharded(p) for p in model.parameters())
    rows = sam_trainer_rows(checkpoint.load_checkpoint(ckpt).tokenizer)
    args = sam_trainer_args(out + ".hf", len(rows) // dist.world(), steps=2)
    if mode == "sam":
        class T(SAMMixin, Trainer):
            pass
        tr = T(model=model, args=args, train_dataset=rows, sam_rho=0.05)
    else:
        tr = Trainer(model=model, args=args, train_dataset=rows)
    tr.train()
    whole = {n: (p.full_tensor() if params.is_sharded(p) else p).detach().contiguous()
             for n, p in model.named_parameters()}
    if dist.is_main():
        save_file(whole, out)


if __name__ == "__main__":
    dist.init_from_env()
    {"measure": measure, "resume": resume, "dither": dither, "sam_trainer": sam_trainer}[sys.argv[1]](*sys.argv[2:5])
    dist.shutdown()
