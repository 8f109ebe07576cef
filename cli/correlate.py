import click

from landscape.cli._common import GroupedCommand, config_from, emit, load_options, output_options, show_progress
from landscape.foundation.configs import LoadConfig


@click.command("correlate", cls=GroupedCommand)
@click.argument("manifest", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The HTML report (JSON beside it).")
@click.option("--store", type=click.Path(dir_okay=False), default=None,
              help="SQLite results store (default: OUT with .sqlite). Finished measurements are never redone.")
@load_options
@output_options
def command(manifest, out, store, as_json, quiet, **kw):
    """Flatness metrics against forgetting over the checkpoints of MANIFEST (YAML): report + statistics.

    For each metric and each forgetting target (average, per category): Pearson, Spearman and
    Kendall with p-values, n and bootstrap 95% intervals; metrics ranked by |Spearman ρ|. A killed
    run resumes from the store; a re-run recomputes nothing.

    \b
    Example:
      landscape correlate runs/demo/manifest.yaml --out runs/demo/report.html
    """
    from landscape.study.correlate import MIN_BOOTSTRAP_N, SMALL_N
    from landscape.study.runner import run_manifest

    r = run_manifest(manifest, out, store_path=store, load=config_from(LoadConfig, kw), progress=show_progress(quiet))
    lines = [f"{r['report']}: {len(r['checkpoints'])} checkpoints, {len(r['metrics'])} metrics ({r['seconds']} s)",
             "metric vs average forgetting (Spearman ρ, p):"]
    for row in r["ranking"]:
        rho = "-" if row["spearman"] is None else f"{row['spearman']:+.3f}"
        p = "-" if row["p"] is None else f"{row['p']:.3g}"
        lines.append(f"  {row['metric']:<22} ρ {rho:>7}  p {p}  n {row['n']}")
    small = sorted({row["n"] for row in r["ranking"] if row["n"] is not None and row["n"] < SMALL_N})
    if small:
        lines.append(f"note: n = {', '.join(map(str, small))}: p-values exact (permutation), but a correlation over "
                     f"so few checkpoints can be large by chance; intervals are wide or absent (n < {MIN_BOOTSTRAP_N})")
    emit(r, as_json, "\n".join(lines))
