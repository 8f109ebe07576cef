import click

from landscape.cli._common import GroupedCommand, emit, output_options


@click.command("plot", cls=GroupedCommand)
@click.argument("surface_files", type=click.Path(), nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="The file to write: .html (interactive), or a figure for a paper: .png, .pdf, .svg.")
@click.option("--format", "fmt", type=click.Choice(["html", "png", "pdf", "svg"]), default=None,
              help="Output format (default: from --out's suffix; html when it has none of these).")
@click.option("--log", is_flag=True, help="Plot log10(loss).")
@click.option("--clip", type=float, default=None, help="Clip losses above this value (exploding far points).")
@output_options
def command(surface_files, out, fmt, log, clip, as_json, quiet):
    """Interactive 3-D surfaces, contour maps and 1-D curves in one offline HTML page (side by side);
    or, given trajectory JSONs (`finetune --probe-every`, LandscapeCallback), metric-vs-step curves.

    \b
    Examples:
      landscape plot adamw.h5 sam.h5 --out compare.html
      landscape plot base-to-tuned.h5 --out figure.pdf
      landscape plot runs/adamw/trajectory.json runs/sam/trajectory.json --out trajectories.html
    """
    from pathlib import Path

    from landscape.study.report import plot_surfaces, plot_trajectories

    files = list(surface_files)
    kinds = {f.lower().endswith(".json") for f in files}
    if len(kinds) > 1:
        raise click.UsageError("give surface files (.h5) or trajectory files (.json), not both")
    suffix = Path(out).suffix.lower().lstrip(".")
    fmt = fmt or (suffix if suffix in ("png", "pdf", "svg") else "html")
    if fmt == "html":
        p = plot_trajectories(files, out) if kinds == {True} else plot_surfaces(files, out, log=log, clip=clip)
    else:
        from landscape.study.static import save_surfaces, save_trajectories

        p = save_trajectories(files, out, fmt) if kinds == {True} else save_surfaces(files, out, fmt, log=log, clip=clip)
    emit({"out": str(p), "format": fmt}, as_json, str(p))
