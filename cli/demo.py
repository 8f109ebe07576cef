from pathlib import Path

import click

from landscape.cli._common import emit, output_options, show_progress


@click.command("demo")
@click.option("--model", type=click.Choice(["toy", "smollm2"]), default="toy", show_default=True,
              help="toy: the embedded world and its 0.7M-parameter demo model; smollm2: the real pretrained "
                   "SmolLM2-135M shipped on PyPI (`make real`), real-world suites.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Study folder [default: runs/demo, or runs/smollm2-study].")
@click.option("--fast", is_flag=True, help="A shorter run (for CI).")
@output_options
def command(model, out, fast, as_json, quiet):
    """The paper's study end to end: fine-tune a base with AdamW, SAM and ASAM, measure flatness and
    forgetting, correlate, write an offline HTML report.

    \b
    Examples:
      landscape demo --out runs/demo
      landscape demo --model smollm2 --fast
    """
    if model == "toy":
        from landscape.study.demo import run_demo

        r = run_demo(out or "runs/demo", fast=fast, progress=show_progress(quiet))
    else:
        from landscape.study.real import run_real

        r = run_real(out or "runs/smollm2-study", fast=fast, progress=show_progress(quiet))
    emit(r, as_json, summary(r))


def _g(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def summary(r: dict) -> str:
    """The printed table, the SAM-vs-AdamW comparisons and the ranking of the metrics."""
    s, how, metrics = r["model"], r["finetunes"], r["metrics"]
    made = f"{s['steps']} steps, " if "steps" in s else f"from {s.get('quantization')} GGUF, "
    lines = [f"{'demo ' if r.get('study') == 'toy' else ''}base model: {r['base']} ({s['n_params']:,} parameters, {made}"
             f"{'reused' if s['reused'] else 'built in %s s' % s.get('seconds', '?')})",
             f"fine-tunes on '{r['task']}': {sum(v == 'trained' for v in how.values())} trained, "
             f"{sum(v == 'reused' for v in how.values())} reused ({r['finetune_seconds']:.0f} s)", "",
             f"{'checkpoint':<20} {'task EM':>7} {'forget':>7} " + " ".join(f"{m[:12]:>12}" for m in metrics)]
    for c in r["checkpoints"]:
        fg = c["forgetting"]["average"]["delta"]
        lines.append(f"{c['label']:<20} {c.get('task_exact_match', float('nan')):7.2f} {fg:7.3f} "
                     + " ".join(f"{_g(c['flatness'].get(m)):>12}" for m in metrics))
    lines.append("")
    for c in r["comparisons"]:
        (ls, la), (fs, fa) = c["lambda_max"], c["forgetting"]
        flatter = "flatter" if ls is not None and la is not None and ls < la else "NOT flatter"
        less = "less" if fs < fa else "NOT less"
        lines.append(f"SAM ρ=0.05 vs AdamW at {c['comparison']}: λ_max {_g(ls)} vs {_g(la)} ({flatter}); "
                     f"forgetting {fs:.3f} vs {fa:.3f} ({less} forgetting); task EM {c['task_exact_match'][0]:.2f} "
                     f"vs {c['task_exact_match'][1]:.2f}")
    lines += ["", "base model's suite scores (accuracy; chance in brackets):"]
    for name, sc in r.get("base_scores", {}).items():
        chance = f"{sc['chance']:.2f}" if sc.get("chance") is not None else "-"  # rows cached before it was kept
        lines.append(f"  {name:<20} {sc['score']:.3f}  [{chance}]  n {sc.get('n')}")
    lines += ["", "flatness metric vs average forgetting (Spearman ρ [95% bootstrap CI], p; n checkpoints):"]
    for row in r["ranking"]:
        c = r["correlations"][row["metric"]]["average"]["spearman"]
        ci = c.get("ci") or [None, None]
        lines.append(f"  {row['metric']:<20} ρ {_g(row['spearman']):>7} [{_g(ci[0])}, {_g(ci[1])}]  "
                     f"p {_g(row['p'])}  n {row['n']}")
    lines += ["", f"report: {r['report']}  (json: {Path(r['report']).with_suffix('.json')}); total {r['seconds']:.0f} s"]
    return "\n".join(lines)
