import click

from landscape.cli._common import (GroupedCommand, config_from, config_options, emit, load_options, output_options,
                                   show_progress)
from landscape.foundation.configs import ForgettingConfig, LoadConfig


@click.command("forgetting", cls=GroupedCommand)
@click.argument("base", type=click.Path())
@click.argument("tuned", type=click.Path(), nargs=-1, required=True)
@config_options(ForgettingConfig)
@click.option("--store", type=click.Path(dir_okay=False), default=None,
              help="SQLite results store: scores are cached by (checkpoint, suite) fingerprints.")
@load_options
@output_options
def command(base, tuned, store, as_json, quiet, **kw):
    """How much each TUNED checkpoint forgot against BASE, per suite, category and on average.

    delta > 0 means forgotten: base − tuned for accuracies, tuned − base for losses;
    relative = 100·delta/base. The base is scored once for all TUNED checkpoints. With one TUNED
    the JSON is a list with one object per TUNED checkpoint (one or several).

    \b
    Example:
      landscape forgetting runs/demo/base runs/demo/ft/adamw-lr3e-3 --json
    """
    from landscape.foundation.store import Store
    from landscape.measures.forgetting import forgetting

    cfg = config_from(ForgettingConfig, kw)
    res = forgetting(base, tuned, cfg, store=Store(store) if store else None, load=config_from(LoadConfig, kw),
                     progress=show_progress(quiet))
    emit(res, as_json, "\n".join(line for r in res for line in _table(r)))


def _table(r: dict) -> list[str]:
    lines = [f"{r['tuned']} vs {r['base']}  (delta > 0: forgotten)",
             f"  {'suite':<22} {'metric':<12} {'base':>8} {'tuned':>8} {'delta':>8} {'rel %':>7}"]
    for name, row in r["suites"].items():
        rel = f"{row['relative']:7.1f}" if row["relative"] is not None else "      -"
        lines.append(f"  {name:<22} {row['metric']:<12} {row['base']:8.4f} {row['tuned']:8.4f} "
                     f"{row['delta']:8.4f} {rel}")
    for name, row in r["categories"].items():
        lines.append(f"  [{name}]{'':<{max(0, 20 - len(name))}} {'accuracy':<12} {row['base']:8.4f} "
                     f"{row['tuned']:8.4f} {row['delta']:8.4f} {row['relative'] or 0:7.1f}")
    if r["average"]:
        a = r["average"]
        lines.append(f"  {'average':<22} {'accuracy':<12} {a['base']:8.4f} {a['tuned']:8.4f} {a['delta']:8.4f} "
                     f"{a['relative'] or 0:7.1f}")
        it = a.get("items")
        if it:
            span = f"95% CI [{it['ci'][0]:+.4f}, {it['ci'][1]:+.4f}]" if it["ci"] else "no item changed"
            lines.append(f"  over the items (paired; not seeds): {span}; {it['lost']} lost, {it['gained']} "
                         f"gained, sign test p {it['p_sign']:.2g}")
    return lines
