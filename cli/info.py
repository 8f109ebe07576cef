import click

from landscape.cli._common import GroupedCommand, config_from, config_options, emit, output_options
from landscape.foundation.configs import LoadConfig


@click.command("info", cls=GroupedCommand)
@click.argument("checkpoint", type=click.Path())
@config_options(LoadConfig, exclude=("device", "dtype"))
@output_options
def command(checkpoint, as_json, quiet, **kw):
    """Validate a checkpoint directory (or a PEFT adapter directory and its base) and print its
    architecture, size and content fingerprint.

    \b
    Example:
      landscape info runs/demo/base --json
    """
    from landscape.foundation.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint, config_from(LoadConfig, kw), device="cpu")
    r = {"checkpoint": str(checkpoint), "fingerprint": ck.fingerprint, **ck.meta,
         "vocab_size": ck.vocab_size, "tokenizer": ck.tokenizer is not None}
    human = (f"{checkpoint}: {r['model_type']}, {r['n_params']:,} parameters, "
             f"{r['format']}, fingerprint {r['fingerprint'][:16]}")
    if "adapter" in r:
        human += f"\n  {r['adapter']['peft_type']} adapter over {r['adapter']['base']} ({r['adapter']['weights']})"
    if "provenance" in r:
        pv = r["provenance"]
        human += (f"\n  converted from {pv['source']} ({pv['quantization']}, sha256 {pv['sha256'][:16]}, "
                  f"{pv['architecture']}; tensor types {pv['tensor_types']})")
    emit(r, as_json, human)
