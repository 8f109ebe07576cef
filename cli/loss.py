import click

from landscape.cli._common import (GroupedCommand, batches, config_options, emit, load, load_options, output_options,
                                   seed_option, with_seed)
from landscape.foundation.configs import DataConfig


@click.command("loss", cls=GroupedCommand)
@click.argument("checkpoint", type=click.Path())
@config_options(DataConfig)
@load_options
@seed_option
@output_options
@with_seed
def command(checkpoint, seed, as_json, quiet, **kw):
    """Token-weighted mean next-token loss of CHECKPOINT on the data (the loss every measurement uses).

    \b
    Example:
      landscape loss runs/demo/base --data data/eval.jsonl --json
    """
    import math

    from landscape.foundation.errors import UserError
    from landscape.foundation.loss import evaluate

    ck = load(checkpoint, kw)
    bs = batches(ck, kw)
    r = evaluate(ck.model, bs)
    if not math.isfinite(r.loss):
        raise UserError(f"{checkpoint}: the loss is {r.loss} (NaN/inf weights, or an overflowing dtype: "
                        "try --dtype float32)")
    out = {"checkpoint": str(checkpoint), "fingerprint": ck.fingerprint, "loss": r.loss, "tokens": r.tokens,
           "data": {"path": bs.source, "fingerprint": bs.fingerprint, "examples": bs.n_examples,
                    "truncated": bs.n_truncated, "dropped": bs.n_dropped, **bs.config}}
    emit(out, as_json, f"loss {r.loss:.6f} over {r.tokens} tokens ({bs.n_examples} examples)")
