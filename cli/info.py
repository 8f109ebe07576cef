import click

from landscape.cli._common import emit, output_options


@click.command("info")
@click.argument("checkpoint", type=click.Path())
@click.option("--trust-pickle", is_flag=True, help="Allow pickle (.bin) weights (weights_only=True).")
@output_options
def command(checkpoint, trust_pickle, as_json, quiet):
    """Validate a checkpoint directory and print its architecture, size and content fingerprint.

    \b
    Example:
      landscape info runs/demo/base --json
    """
    from landscape.foundation.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint, device="cpu", trust_pickle=trust_pickle)
    r = {"checkpoint": str(checkpoint), "fingerprint": ck.fingerprint, **ck.meta,
         "vocab_size": ck.vocab_size, "tokenizer": ck.tokenizer is not None}
    human = (f"{checkpoint}: {r['model_type']}, {r['n_params']:,} parameters, "
             f"{r['format']}, fingerprint {r['fingerprint'][:16]}")
    if "provenance" in r:
        pv = r["provenance"]
        human += (f"\n  converted from {pv['source']} ({pv['quantization']}, sha256 {pv['sha256'][:16]}, "
                  f"{pv['architecture']}; tensor types {pv['tensor_types']})")
    emit(r, as_json, human)
