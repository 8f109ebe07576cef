import click

from landscape.cli._common import batches, data_options, emit, load, model_options, output_options, with_seed


@click.command("loss")
@click.argument("checkpoint", type=click.Path())
@data_options
@model_options
@output_options
@with_seed
def command(checkpoint, data, batch_size, max_length, num_batches, device, dtype, seed,
            trust_pickle, trust_remote_code, as_json, quiet):
    """Token-weighted mean next-token loss of CHECKPOINT on the data (the loss every measurement uses).

    \b
    Example:
      landscape loss runs/demo/base --data data/eval.jsonl --json
    """
    from landscape.loss import evaluate

    ck = load(checkpoint, device, dtype, trust_pickle, trust_remote_code)
    bs = batches(ck, data, batch_size, max_length, num_batches)
    r = evaluate(ck.model, bs)
    if r.loss != r.loss or r.loss in (float("inf"), float("-inf")):
        from landscape.errors import UserError

        raise UserError(f"{checkpoint}: the loss is {r.loss} (NaN/inf weights, or an overflowing dtype: "
                        "try --dtype float32)")
    out = {"checkpoint": str(checkpoint), "fingerprint": ck.fingerprint, "loss": r.loss, "tokens": r.tokens,
           "data": {"path": bs.source, "fingerprint": bs.fingerprint, "examples": bs.n_examples,
                    "truncated": bs.n_truncated, "dropped": bs.n_dropped, **bs.config}}
    emit(out, as_json, f"loss {r.loss:.6f} over {r.tokens} tokens ({bs.n_examples} examples)")
