import click

from landscape.cli._common import emit, output_options, show_progress


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--fast", is_flag=True, help="A shorter run (for CI).")
@output_options
def command(out, fast, as_json, quiet):
    """The main job on the embedded default: build (or reuse) the demo base model and measure it.

    \b
    Example:
      landscape demo --out runs/demo
    """
    from landscape.demo import run_demo

    r = run_demo(out, fast=fast, progress=show_progress(quiet))
    emit(r, as_json, r["summary"])
