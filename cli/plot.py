import click

from landscape.cli._common import emit, output_options


@click.command("plot")
@click.argument("surface_files", type=click.Path(), nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="HTML file to write.")
@click.option("--log", is_flag=True, help="Plot log10(loss).")
@click.option("--clip", type=float, default=None, help="Clip losses above this value (exploding far points).")
@output_options
def command(surface_files, out, log, clip, as_json, quiet):
    """Interactive 3-D surfaces, contour maps and 1-D curves in one offline HTML page (side by side);
    or, given trajectory JSONs (`finetune --probe-every`, LandscapeCallback), metric-vs-step curves.

    \b
    Examples:
      landscape plot adamw.h5 sam.h5 --out compare.html
      landscape plot runs/adamw/trajectory.json runs/sam/trajectory.json --out trajectories.html
    """
    from landscape.study.report import plot_surfaces, plot_trajectories

    files = list(surface_files)
    kinds = {f.lower().endswith(".json") for f in files}
    if len(kinds) > 1:
        raise click.UsageError("give surface files (.h5) or trajectory files (.json), not both")
    p = plot_trajectories(files, out) if kinds == {True} else plot_surfaces(files, out, log=log, clip=clip)
    emit({"out": str(p)}, as_json, str(p))
