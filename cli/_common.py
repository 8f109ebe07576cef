"""Options and output shared by every command: --json, --quiet, --device, --dtype, --seed, data options."""

from __future__ import annotations

import functools
import json
import sys

import click


def show_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal, never with --quiet or when stderr is piped."""
    return not quiet and sys.stderr.isatty()


def output_options(f):
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars or chatter.")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout.")(f)
    return f


def model_options(f):
    """--device, --dtype, --seed, --trust-pickle, --trust-remote-code."""
    f = click.option("--trust-remote-code", is_flag=True,
                     help="Allow the checkpoint's own Python code (off by default: it runs arbitrary code).")(f)
    f = click.option("--trust-pickle", is_flag=True,
                     help="Allow pickle (.bin) weights, still read with torch.load(weights_only=True).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Random seed (recorded in outputs).")(f)
    f = click.option("--dtype", default="float32", show_default=True,
                     help="float32 | bfloat16 | float64 | float16")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")(f)
    return f


def data_options(f):
    """--data, --batch-size, --max-length, --num-batches."""
    f = click.option("--num-batches", type=int, default=None, help="Use only the first N batches.")(f)
    f = click.option("--max-length", type=int, default=None,
                     help="Tokens per sequence (longer ones are cut). Default: min(128, model positions).")(f)
    f = click.option("--batch-size", type=int, default=8, show_default=True)(f)
    f = click.option("--data", type=click.Path(dir_okay=False), default=None,
                     help="jsonl of {text} | {prompt, completion} | {input_ids}. Default: embedded eval data.")(f)
    return f


def load(ckpt_path, device, dtype, trust_pickle, trust_remote_code, **kw):
    from landscape.checkpoint import load_checkpoint

    return load_checkpoint(ckpt_path, device=device, dtype=dtype, trust_pickle=trust_pickle,
                           trust_remote_code=trust_remote_code, **kw)


def batches(ckpt, data, batch_size, max_length, num_batches):
    from landscape.data import batches_for
    from landscape.demo import default_eval_data

    return batches_for(ckpt, data or default_eval_data(), batch_size=batch_size, max_length=max_length,
                       num_batches=num_batches).to(ckpt.device)


def emit(result: dict, as_json: bool, human: str) -> None:
    """The result on stdout (rank 0 only under torchrun): JSON for scripts, or the human summary."""
    from landscape import distributed

    if not distributed.is_main():
        return
    if as_json:
        click.echo(json.dumps(result, sort_keys=False, default=float))
    else:
        click.echo(human)


def with_seed(f):
    """Seed torch before the command runs (every command's randomness follows --seed)."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        import torch

        torch.manual_seed(kwargs.get("seed", 0) or 0)
        return f(*args, **kwargs)

    return wrapper
