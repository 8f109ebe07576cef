import click

from landscape.cli._common import emit, model_options, output_options, show_progress, with_seed


@click.command("finetune")
@click.argument("base", type=click.Path())
@click.option("--data", type=click.Path(dir_okay=False), required=True,
              help="Training jsonl ({text} | {prompt, completion} | {input_ids}).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output checkpoint directory.")
@click.option("--optimizer", type=click.Choice(["adamw", "sam", "asam"]), default="adamw", show_default=True)
@click.option("--rho", type=float, default=0.05, show_default=True, help="SAM/ASAM radius ρ.")
@click.option("--eta", type=float, default=0.0, show_default=True, help="ASAM: T = |w| + η.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate (warm-up, cosine to 10%).")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Sequences per micro-batch.")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches per optimizer step.")
@click.option("--max-length", type=int, default=None, help="Tokens per sequence (default: min(128, positions)).")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--warmup", type=int, default=0, show_default=True, help="Linear warm-up steps.")
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--bf16", is_flag=True, help="Autocast forward passes to bfloat16.")
@click.option("--eval-data", type=click.Path(dir_okay=False), default=None,
              help="Held-out jsonl (default: --eval-fraction of --data, split by --seed).")
@click.option("--eval-fraction", type=float, default=0.1, show_default=True)
@click.option("--eval-every", type=int, default=None, help="Evaluate every N steps (always at the end).")
@click.option("--save-every", type=int, default=100, show_default=True, help="Save the resumable state every N steps.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run kept in OUT.partial.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@model_options
@output_options
@with_seed
def command(base, data, out, optimizer, rho, eta, lr, epochs, max_steps, batch_size, grad_accum, max_length,
            weight_decay, warmup, grad_clip, bf16, eval_data, eval_fraction, eval_every, save_every, resume,
            overwrite, device, dtype, seed, trust_pickle, trust_remote_code, as_json, quiet):
    """Fine-tune BASE with AdamW, SAM or ASAM; write an HF checkpoint dir with its training log.

    SAM takes two forward/backward passes per micro-batch (perturbation per micro-batch, restored
    bit-exactly); weight decay, the schedule and clipping act on the base AdamW step. Ctrl-C or a
    kill keeps the last saved state in OUT.partial; run the same command with --resume.

    \b
    Example:
      landscape finetune runs/demo/base --data data/tasks/reverse/train.jsonl \\
          --optimizer sam --rho 0.05 --lr 1e-3 --epochs 2 --out runs/reverse-sam
    """
    from landscape.finetune import finetune

    r = finetune(base, data, out, optimizer=optimizer, lr=lr, rho=rho, eta=eta, epochs=epochs, max_steps=max_steps,
                 batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, seed=seed,
                 weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip or None, bf16=bf16,
                 eval_data=eval_data, eval_fraction=eval_fraction, eval_every=eval_every, save_every=save_every,
                 resume=resume, overwrite=overwrite, device=device, dtype=dtype, trust_pickle=trust_pickle,
                 trust_remote_code=trust_remote_code, progress=show_progress(quiet))
    ev = f", eval loss {r['eval_loss']:.4f}" if r["eval_loss"] is not None else ""
    emit(r, as_json, f"{r['out']}: {r['optimizer']} {r['steps']} steps, train loss "
                     f"{r['train_loss_first']:.4f} → {r['train_loss_last']:.4f}{ev} ({r['seconds']} s)")
