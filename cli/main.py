"""`landscape` entry point: the command group and the error policy.

Errors a user can cause (:class:`landscape.foundation.errors.UserError`, click usage errors) print one line on
stderr and exit with status 2; ``--debug`` shows the traceback. Internal bugs keep their traceback.
"""

from __future__ import annotations

import sys

import click

import landscape
from landscape.foundation.errors import Interrupted, UserError, one_line


def _in_cli_terms(e: UserError) -> str:
    """The library names settings by field (``points_per_pass: must be ...``); the CLI by flag."""
    from landscape.foundation.configs import flag_for

    field = getattr(e, "field", None)  # a ConfigError starts with it; others name it once
    return str(e).replace(field, flag_for(field), 1) if field else str(e)


class LandscapeGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {_in_cli_terms(e)}", err=True)
            ctx.exit(2)
        except OSError as e:  # unreadable input, full disk, read-only or missing output folder
            if ctx.params.get("debug"):
                raise
            what = e.strerror or str(e).splitlines()[0] if str(e) else type(e).__name__
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            click.echo(one_line(f"error: {where}{what}"), err=True)
            ctx.exit(2)

    def main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        args = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=args, prog_name=prog_name or "landscape", standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:  # usage errors, bad option values, missing files
            if "--debug" in args:
                raise
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(2)
        except click.exceptions.Abort as e:
            cause = e.__cause__ or e.__context__
            click.echo(str(cause) if isinstance(cause, Interrupted) and str(cause) else "aborted", err=True)
            sys.exit(130)
        except Interrupted as e:  # raised outside click's own KeyboardInterrupt handling
            click.echo(str(e) or "aborted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(1)
        finally:
            from landscape.foundation import distributed

            distributed.shutdown()
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=LandscapeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for user errors too.")
@click.version_option(landscape.__version__, prog_name="landscape")
def cli(debug: bool) -> None:
    """Loss-landscape flatness, curvature and forgetting for Hugging Face causal LMs.

    Every command takes a local checkpoint directory (config.json + safetensors). Start with
    `landscape demo` (or `make demo`), which builds a tiny model from the embedded data.
    """
    from landscape.foundation import distributed

    if not debug:
        quiet_third_party()
    distributed.init_from_env()  # under torchrun: join the process group; otherwise nothing


THIRD_PARTY = r"(transformers|peft|trl|datasets|accelerate|torch|huggingface_hub|tokenizers)(\.|$)"


def quiet_third_party() -> None:
    """Normal output carries no third-party warnings a user cannot act on (deprecations inside
    transformers/peft/torch, renamed config keys); ``--debug`` shows them. Our own warnings, and the
    libraries' errors, are untouched."""
    import os
    import warnings

    for category in (UserWarning, FutureWarning, DeprecationWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
    os.environ.setdefault("DATASETS_VERBOSITY", "error")



def _register() -> None:
    from landscape.cli import (convert_gguf, correlate, demo, demo_model, finetune, forgetting, info, loss, plot,
                               predict, real_model, sharpness, surface, surface_metrics)

    for mod in (demo_model, real_model, convert_gguf, info, loss, sharpness, surface, surface_metrics, plot, finetune,
                forgetting, predict, correlate, demo):
        cli.add_command(mod.command)


_register()


def main(argv=None) -> None:
    cli.main(args=argv)
