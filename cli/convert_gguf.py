import click

from landscape.cli._common import GroupedCommand, emit, output_options


@click.command("convert-gguf", cls=GroupedCommand)
@click.argument("gguf_file", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it holds something else.")
@output_options
def command(gguf_file, out, overwrite, as_json, quiet):
    """Convert a GGUF file (llama.cpp's format, any quantisation transformers can read) into an HF
    checkpoint directory: float32 safetensors, config, tokenizer, and its provenance (source SHA-256,
    quantisation type), which `landscape info` shows. A directory converted from the same file is reused.

    \b
    Example:
      landscape convert-gguf SmolLM2-135M-Instruct.Q4_1.gguf runs/smollm2 && landscape info runs/smollm2
    """
    from landscape.foundation.convert import convert_gguf

    r = convert_gguf(gguf_file, out, overwrite=overwrite)
    emit({"out": str(out), **r}, as_json,
         f"{out}: {r['architecture']}, {r['n_params']:,} parameters from {r['quantization']} "
         f"({'reused' if r['reused'] else 'converted'}; sha256 {r['sha256'][:16]})")
