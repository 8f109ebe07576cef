import click

from landscape.cli._common import emit, output_options, show_progress


@click.command("forgetting")
@click.argument("base", type=click.Path())
@click.argument("tuned", type=click.Path(), nargs=-1, required=True)
@click.option("--suite", "suites", multiple=True, type=click.Path(),
              help="Suite jsonl file or directory of them (repeatable). Default: the embedded data/suites.")
@click.option("--categories", type=click.Path(dir_okay=False), default=None,
              help="JSON {category: [suite, ...]} (default: categories.json beside the suites).")
@click.option("--store", type=click.Path(dir_okay=False), default=None,
              help="SQLite results store: scores are cached by (checkpoint, suite) fingerprints.")
@click.option("--lm-eval-task", "lm_eval_tasks", multiple=True,
              help="Also score this lm-evaluation-harness task (repeatable; extra [lmeval]).")
@click.option("--lm-eval-include", type=click.Path(file_okay=False), default=None,
              help="Directory of your own lm-eval task YAMLs.")
@click.option("--lm-eval-limit", type=int, default=None, help="Score only the first N documents of each task.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option("--trust-pickle", is_flag=True)
@click.option("--trust-remote-code", is_flag=True)
@output_options
def command(base, tuned, suites, categories, store, lm_eval_tasks, lm_eval_include, lm_eval_limit, batch_size,
            device, dtype, trust_pickle, trust_remote_code, as_json, quiet):
    """How much each TUNED checkpoint forgot against BASE, per suite, category and on average.

    delta > 0 means forgotten: base − tuned for accuracies, tuned − base for losses;
    relative = 100·delta/base. The base is scored once for all TUNED checkpoints. With one TUNED
    the JSON is one object; with several, a list of them.

    \b
    Example:
      landscape forgetting runs/demo/base runs/demo/ft/adamw-lr3e-3 --json
    """
    from landscape.forgetting import forgetting
    from landscape.store import Store

    if batch_size < 1:
        raise click.BadParameter("must be >= 1", param_hint="--batch-size")
    res = forgetting(base, tuned, suites=list(suites), categories=categories, store=Store(store) if store else None,
                     device=device, dtype=dtype, batch_size=batch_size, trust_pickle=trust_pickle,
                     trust_remote_code=trust_remote_code, lm_eval_tasks=list(lm_eval_tasks),
                     lm_eval_include=lm_eval_include, lm_eval_limit=lm_eval_limit, progress=show_progress(quiet))
    lines = []
    for r in res:
        lines.append(f"{r['tuned']} vs {r['base']}  (delta > 0: forgotten)")
        lines.append(f"  {'suite':<22} {'metric':<12} {'base':>8} {'tuned':>8} {'delta':>8} {'rel %':>7}")
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
    emit(res[0] if len(res) == 1 else res, as_json, "\n".join(lines))
