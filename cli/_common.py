"""Options and output shared by every command.

Measurement options are not written here: :func:`config_options` makes one ``--field-name`` option
per field of a config class in :mod:`landscape.foundation.configs` (its type, default, choices and
help come from the field), and :func:`config_from` builds the config back from the parsed values.
This module imports no torch: ``landscape --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys

import click

from landscape.foundation import configs as C


def show_progress(quiet: bool) -> bool:
    """Progress unless --quiet: bars on a terminal, a plain line at most every 30 s on stderr elsewhere
    (:mod:`landscape.foundation.progress`)."""
    return not quiet


class GroupedOption(click.Option):
    """An option that knows its section of ``--help``."""

    def __init__(self, *args, group: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group


# --help sections, in order: what the command does first, the shared plumbing last.
SECTIONS = ("Options", "Data", "Output", "How it is computed (chosen by the memory plan; set to override)",
            "Loading the checkpoint (every command)")
GROUP_OF = {"LoadConfig": SECTIONS[4], "DataConfig": SECTIONS[1]}


class GroupedCommand(click.Command):
    """``--help`` with the options in sections: the command's own, then data, output, and loading."""

    def format_options(self, ctx, formatter):
        rows: dict = {name: [] for name in SECTIONS}
        for param in self.get_params(ctx):
            rec = param.get_help_record(ctx)
            if rec is not None:
                rows[getattr(param, "group", "") or SECTIONS[0]].append(rec)
        for name in SECTIONS:
            if rows[name]:
                with formatter.section(name):
                    formatter.write_dl(rows[name])


def output_options(f):
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars or chatter.", cls=GroupedOption,
                     group=SECTIONS[2])(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout.",
                     cls=GroupedOption, group=SECTIONS[2])(f)
    return f


def _click_option(fld: dataclasses.Field, group: str = ""):
    m = fld.metadata
    flag = C.flag_for(fld.name)
    kw: dict = {"help": m["help"], "show_default": fld.default not in (None, ()), "cls": GroupedOption,
                "group": SECTIONS[3] if fld.name in C.ENGINE else group}
    kind, default = m["kind"], fld.default
    if kind == "bool":
        return click.option(flag, fld.name, is_flag=True, default=default, **{**kw, "show_default": "/" in flag})
    if kind == "list" and m.get("choices") is None:  # a repeatable option: --suite A --suite B
        return click.option(flag, fld.name, multiple=True, **{**kw, "show_default": False})
    if kind == "list":
        kw["default"] = ",".join(default)
    else:
        kw["default"] = default
    if m.get("flag_value") is not None:  # also usable as a bare flag
        kw.update(is_flag=False, flag_value=m["flag_value"])
    if m.get("choices") is not None and kind != "list":
        kw["type"] = click.Choice(list(m["choices"]))
    elif kind in ("int", "float"):
        kw["type"] = {"int": int, "float": float}[kind]
    return click.option(flag, fld.name, **kw)


def config_options(cls, exclude: tuple = ()):
    """One click option per field of the config class ``cls`` (except ``exclude``)."""
    def decorate(f):
        for fld in reversed(dataclasses.fields(cls)):
            if fld.name not in exclude:
                f = _click_option(fld, GROUP_OF.get(cls.__name__, ""))(f)
        return f
    return decorate


def config_from(cls, kwargs: dict, **fixed):
    """Pop ``cls``'s fields out of the command's ``kwargs`` and build the config (validated)."""
    values = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls) if f.name in kwargs}
    return cls(**{**values, **fixed})


def load_options(f):
    """--device, --dtype, --trust-pickle, --trust-remote-code (from LoadConfig)."""
    return config_options(C.LoadConfig)(f)


def seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed (recorded in outputs).")(f)


def load(ckpt_path, kwargs: dict, curvature: bool = False):
    """Load CHECKPOINT with the LoadConfig options popped from ``kwargs`` (``curvature``: see
    :func:`landscape.foundation.checkpoint.load_checkpoint`)."""
    from landscape.foundation.checkpoint import load_checkpoint

    return load_checkpoint(ckpt_path, config_from(C.LoadConfig, kwargs), curvature=curvature)


@contextlib.contextmanager
def planned_for(kwargs: dict, dry_run: bool, *paths):
    """Inside the block, plans are made for the machine ``--device-memory``/``--world-size`` describe,
    or for this one when a checkpoint is a directory with only config.json (no weight is read: models
    are built on the meta device). Those are plans only: without ``--dry-run`` they are one line and
    exit status 2. Nothing changes when none of it is asked."""
    from pathlib import Path

    from landscape.foundation import checkpoint as K, params as P
    from landscape.foundation.errors import UserError

    lc = config_from(C.LoadConfig, dict(kwargs))  # peeked: the command pops them when it loads
    weights = (K.SAFE_SINGLE, K.SAFE_INDEX, K.PICKLE_SINGLE, K.PICKLE_INDEX)
    config_only = [p for p in paths if p and (Path(p) / "config.json").is_file()
                   and not any((Path(p) / f).is_file() for f in weights)]
    if lc.device_memory is None and lc.world_size is None and not config_only:
        yield None
        return
    what = "--device-memory" if lc.device_memory is not None else "--world-size" if lc.world_size is not None \
        else f"{config_only[0]} (only config.json, no weights)"
    if not dry_run:
        raise UserError(f"{what} can only be planned for: add --dry-run")
    if (lc.world_size or 1) > 1 and lc.shard != "fsdp":
        raise UserError("--world-size N plans one rank of an FSDP-sharded run: add --shard fsdp (unsharded, every "
                        "process holds the whole model: plan one with --world-size 1)")
    memory = None if lc.device_memory is None else int(lc.device_memory * 2**30)
    with P.planning_for(P.Target(memory=memory, world=lc.world_size or 1)) as t:
        yield t


def batches(ckpt, kwargs: dict):
    """The checkpoint's batches with the DataConfig options popped from ``kwargs``."""
    from landscape.foundation.data import batches_for

    return batches_for(ckpt, config_from(C.DataConfig, kwargs))


def emit(result, as_json: bool, human: str) -> None:
    """The result on stdout (rank 0 only under torchrun): JSON for scripts, or the human summary.
    JSON is always valid: a NaN/inf becomes null, with its reason under ``null_reasons``."""
    from landscape.foundation import distributed
    from landscape.foundation.io import dumps

    if not distributed.is_main():
        return
    click.echo(dumps(result) if as_json else human)


def human_plan(checkpoint, plan: dict) -> str:
    """A memory plan (`--dry-run`) as lines: the peak, its parts in GB and weight units, the choices."""
    lines = [f"{checkpoint}: {plan['command']} would peak at about {plan['peak_gb']:.2f} GB "
             f"(starting from {plan['start_gb']:.2f} GB; one weight copy = {plan['weight_gb']:.2f} GB)"]
    for k, v in plan["parts_gb"].items():
        lines.append(f"  + {k:<22} {v:8.3f} GB  ({plan['in_weight_units'][k]:g} × weights)")
    lines.append("  choices: " + ", ".join(f"{k}={v}" for k, v in plan["choices"].items()))
    t = plan.get("target")
    if t:
        where = (f"{t['world_size']} × " if t["world_size"] > 1 else "") + (
            f"a {t['device_memory_gb']:g} GB device" if t["device_memory_gb"] is not None else "this machine")
        per = " per rank" if t["world_size"] > 1 else ""
        lines.append(f"  on {where}: {'fits' if t['fits'] else 'does NOT fit'} ({plan['peak_gb']:.2f} GB peak{per}; "
                     f"{t['free_gb']:.2f} GB free{per} beside the weights)")
        if not t["fits"]:
            lines.append("  what may fit: the same tokens in smaller batches (--batch-size 1 --num-batches B·N: "
                         "activations scale with the batch), --grad-checkpointing, a --params subset, or more ranks "
                         "(--shard fsdp --world-size N)")
    return "\n".join(lines)


def human_work(work: dict | None) -> str:
    """The dry run's count of products and its rough time, as one line ("" when there is none)."""
    if not work:
        return ""
    n = work["at_most"]
    what = ", ".join(f"{v} {k}" for k, v in n.items() if v)
    t = work["seconds_rough"]
    if t is None:
        return f"\n  work: at most {what or 'nothing'} ({work['forward_equivalents']} forward-pass equivalents)"
    when = f"{t / 3600:.1f} h" if t >= 3600 else f"{t / 60:.1f} min" if t >= 60 else f"{t:.0f} s"
    return f"\n  work: at most {what or 'nothing'}; roughly {when} (one loss evaluation took {work['loss_seconds']:.3g} s)"


def with_seed(f):
    """Seed torch before the command runs (every command's randomness follows --seed)."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        import torch

        torch.manual_seed(kwargs.get("seed", 0) or 0)
        return f(*args, **kwargs)

    return wrapper
