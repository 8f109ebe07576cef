import click

from landscape.cli._common import GroupedCommand, emit, output_options


@click.command("surface-metrics", cls=GroupedCommand)
@click.argument("surface_file", type=click.Path())
@output_options
def command(surface_file, as_json, quiet):
    """Flatness metrics of a surface h5: average gradient, mean absolute gradient, surface curvature.

    \b
    Example:
      landscape surface-metrics base.h5 --json
    """
    from landscape.measures.surface import surface_metrics

    m = surface_metrics(surface_file)
    emit({"surface": str(surface_file), **m}, as_json,
         "\n".join(f"{k:<24} {v:.6g}" if isinstance(v, float) else f"{k:<24} {v}" for k, v in m.items()))
