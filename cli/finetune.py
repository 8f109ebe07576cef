import click

from landscape.cli._common import (GroupedCommand, config_from, config_options, emit, human_plan, load_options,
                                   output_options, planned_for, show_progress, with_seed)
from landscape.foundation.configs import FinetuneConfig, LoadConfig, ProbeConfig


@click.command("finetune", cls=GroupedCommand)
@click.argument("base", type=click.Path())
@click.option("--data", type=click.Path(), required=True,
              help="Training records ({text} | {prompt, completion} | {input_ids} | chat {messages}): a "
                   ".jsonl/.json/.parquet/.csv file or a datasets save_to_disk directory.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output checkpoint directory.")
@config_options(FinetuneConfig)
@config_options(ProbeConfig)
@load_options
@output_options
@with_seed
def command(base, data, out, as_json, quiet, **kw):
    """Fine-tune BASE with AdamW, SAM or ASAM; write an HF checkpoint dir with its training log.

    SAM takes two forward/backward passes per micro-batch (perturbation per micro-batch, restored
    bit-exactly); weight decay, the schedule and clipping act on the base AdamW step. Ctrl-C or a
    kill keeps the last saved state in OUT.partial; run the same command with --resume.

    --probe-every N measures the model while it trains (LandscapeCallback): the general loss, λ_max
    and, with --probe-metrics, the forgetting predictors against step 0 or the suites' forgetting;
    the trajectory lands in OUT/trajectory.json (`landscape plot OUT/trajectory.json` draws it).

    \b
    Example:
      landscape finetune runs/demo/base --data data/tasks/reverse/train.jsonl \\
          --optimizer sam --rho 0.05 --lr 1e-3 --epochs 2 --out runs/reverse-sam
    """
    from landscape.training.finetune import finetune

    cfg = config_from(FinetuneConfig, kw)  # options fail fast, before anything is loaded
    probe_cfg = config_from(ProbeConfig, kw)
    probe = None
    if probe_cfg.probe_every is not None:
        from landscape.training.callback import LandscapeCallback

        probe = LandscapeCallback(config=probe_cfg)
    with planned_for(kw, cfg.dry_run, base):
        r = finetune(base, data, out, cfg, load=config_from(LoadConfig, kw), progress=show_progress(quiet),
                     probe=probe)
    if "plan" in r:
        return emit(r, as_json, human_plan(base, r["plan"]))
    ev = f", eval loss {r['eval_loss']:.4f}" if r["eval_loss"] is not None else ""
    emit(r, as_json, f"{r['out']}: {r['optimizer']} {r['steps']} steps, train loss "
                     f"{r['train_loss_first']:.4f} → {r['train_loss_last']:.4f}{ev} ({r['seconds']} s)")
