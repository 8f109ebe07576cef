import click

from landscape.cli._common import GroupedCommand, emit, output_options, show_progress


@click.command("demo-model", cls=GroupedCommand)
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--steps", type=int, default=None, help="Pretraining steps (default 2000, about 100 s on 2 cores).")
@click.option("--seed", type=int, default=0, show_default=True)
@output_options
def command(out, steps, seed, as_json, quiet):
    """Build the tiny demo base model (Llama architecture, own tokenizer) from the embedded data.

    \b
    Example:
      landscape demo-model runs/base && landscape loss runs/base
    """
    from landscape.study.demo import DEMO_TRAIN, build_demo_model

    s = build_demo_model(out, steps=steps or DEMO_TRAIN["steps"], seed=seed, progress=show_progress(quiet))
    emit(s, as_json, f"{out}: {s['n_params']:,} parameters, {s['steps']} steps in {s['seconds']} s, "
                     f"train loss {s['train_loss']:.4f}, eval loss {s['eval_loss']:.4f}")
