from pathlib import Path

import click

from landscape.cli._common import GroupedCommand, emit, output_options, show_progress


@click.command("demo", cls=GroupedCommand)
@click.option("--model", type=click.Choice(["toy", "smollm2", "qwen2.5-coder-1.5b"]), default="toy", show_default=True,
              help="toy: the embedded world and its 0.7M-parameter demo model; smollm2: the real pretrained "
                   "SmolLM2-135M shipped on PyPI (`make real`), real-world suites; qwen2.5-coder-1.5b: the "
                   "paper's size, trained in bf16 (`make real-1b`; about two hours on 2 cores, ~19 GB; resumes "
                   "where an interrupted run stopped).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Study folder [default: runs/demo, runs/smollm2-study or runs/qwen2.5-coder-1.5b-study].")
@click.option("--fast", is_flag=True, help="A shorter run (for CI).")
@click.option("--lr-sweep", "sweep", is_flag=True,
              help="Also run every method at 1/3, 1 and 3 times its learning rate and compare the methods at their "
                   "best rate by task exact match, forgetting as the plain suite mean (Biderman et al. 2024), "
                   "beside the matched comparisons (toy and smollm2; qwen2.5-coder-1.5b: each method one rate up "
                   "the grid 1e-5, 3e-5, 1e-4 (LoRA 3e-4, 1e-3) in the same study, seven checkpoints, ~70 min more).")
@output_options
def command(model, out, fast, sweep, as_json, quiet):
    """The paper's study end to end: fine-tune a base with AdamW, SAM and ASAM, measure flatness and
    forgetting, correlate, write an offline HTML report.

    \b
    Examples:
      landscape demo --out runs/demo
      landscape demo --model smollm2 --fast
    """
    if model == "toy":
        from landscape.study.demo import run_demo

        r = run_demo(out or "runs/demo", fast=fast, progress=show_progress(quiet), sweep=sweep)
    elif model == "smollm2":
        from landscape.study.real import run_real

        r = run_real(out or "runs/smollm2-study", fast=fast, progress=show_progress(quiet), sweep=sweep)
    else:
        from landscape.foundation.errors import UserError
        from landscape.study.real import run_real_1b

        if fast:
            raise UserError("the 1.5B study has no --fast (two hours already; CI runs the SmolLM2 one)")
        r = run_real_1b(out or "runs/qwen2.5-coder-1.5b-study", progress=show_progress(quiet), sweep=sweep)
    emit(r, as_json, summary(r) + (across_summary(r) if r.get("second_task") else "") + sweep_summary(r))


def sweep_summary(r: dict) -> str:
    if not r.get("lr_sweep"):
        return ""
    from landscape.study.sweep import sweep_lines

    s = r["lr_sweep"]
    trade = [f"  {c['line']}" for c in (s.get("tradeoff") or {}).get("pairs") or []]
    own = [f"  report: {s['report']}"] if s.get("report") not in (None, r.get("report")) else []  # its own study's
    return "\n".join(sweep_lines(s) + (["  over all the rates, at matched task EM:"] + trade if trade else []) + own)


TABLE_PREDICTORS = ("delta_norm", "kappa_base", "quad_pred", "general_loss_increase")


def _g(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _ci(d: dict | None) -> str:
    return f" [{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}]" if d and d.get("ci") else ""


def _verdict(d: dict | None, yes: str, no: str, items: dict | None = None) -> str:
    """yes/no by the sign of the difference; 'unclear' when its interval includes 0 (over seeds, else,
    given ``items``, over the suites' items)."""
    if not d:
        return "-"
    ci = d.get("ci") or (items or {}).get("ci")
    if ci and ci[0] <= 0 <= ci[1]:
        return "unclear: the interval includes 0"
    if not d.get("ci") and items and items["p_sign"] >= 0.05:  # few changed items: the normal interval is too narrow
        return "unclear: the sign test's p ≥ 0.05"
    return yes if d["difference"] < 0 else no


def _items(it: dict | None) -> str:
    """' [items lo, hi; lost a, gained b, p]': a forgetting figure's interval over the suites' items."""
    if not it:
        return ""
    span = f"{it['ci'][0]:+.4f}, {it['ci'][1]:+.4f}; " if it.get("ci") else "no item changed; "
    return f" [items: {span}{it['lost']} lost, {it['gained']} gained, sign test p {it['p_sign']:.2g}]"


def comparison_line(c: dict) -> str:
    """"SAM ρ=0.05 vs AdamW at equal steps (150), 3 vs 3 seeds: λ_max … ; forgetting … difference d [CI]"."""
    (ls, la), (fs, fa), (es, ea) = c["lambda_max"], c["forgetting"], c["task_exact_match"]
    lam, fg, em = c.get("lambda_max_difference"), c.get("forgetting_difference"), c.get("task_exact_match_difference")
    items = c.get("forgetting_difference_items") if not _ci(fg) else None
    n = c.get("n_seeds") or [1, 1]
    return (f"SAM ρ=0.05 vs AdamW at {c['comparison']}, {n[0]} vs {n[1]} seed{'s' if max(n) > 1 else ''}: "
            f"λ_max {_g(ls)} vs {_g(la)}{(', difference %+.3g' % lam['difference'] + _ci(lam)) if lam else ''} "
            f"({_verdict(lam, 'flatter', 'NOT flatter')}); forgetting {fs:.3f} vs {fa:.3f}, difference "
            f"{fs - fa:+.3f}{_ci(fg)}{_items(items)} ({_verdict(fg, 'less forgetting', 'NOT less forgetting', items)}); task EM "
            f"{_g(es)} vs {_g(ea)}{(', difference %+.3g' % em['difference'] + _ci(em)) if em else ''}")


def summary(r: dict) -> str:
    """The printed table, the SAM-vs-AdamW comparisons and the ranking of the metrics."""
    s, how = r["model"], r["finetunes"]
    info = r.get("metric_info") or {}
    # the table: every flatness metric and the headline predictors (all of them are in the ranking)
    metrics = [m for m in r["metrics"] if info.get(m, {}).get("kind") != "predictor" or m in TABLE_PREDICTORS]
    made = f"{s['steps']} steps, " if "steps" in s else f"from {s.get('quantization')} GGUF, "
    lines = [f"{'demo ' if r.get('study') == 'toy' else ''}base model: {r['base']} ({s['n_params']:,} parameters, {made}"
             f"{'reused' if s['reused'] else 'built in %s s' % s['seconds'] if 'seconds' in s else 'built'})",
             f"fine-tunes on '{r['task']}': {sum(v in ('trained', 'resumed') for v in how.values())} trained, "
             f"{sum(v == 'reused' for v in how.values())} reused ({r['finetune_seconds']:.0f} s)", "",
             f"{'checkpoint':<24} {'task EM':>7} {'forget':>7} " + " ".join(f"{m[:12]:>12}" for m in metrics)]
    for c in r["checkpoints"]:
        fg = c["forgetting"]["average"]["delta"]
        lines.append(f"{c['label']:<24} {c.get('task_exact_match', float('nan')):7.2f} {fg:7.3f} "
                     + " ".join(f"{_g(c['flatness'].get(m)):>12}" for m in metrics))
    lines += _item_lines(r["checkpoints"])
    lines.append("")
    lines += [comparison_line(c) for c in r["comparisons"]]
    trade = (r.get("tradeoff") or {}).get("pairs") or []
    if trade:
        lines += ["", "forgetting at matched task EM (frontiers of each family; + = the first forgets more):"]
        lines += [f"  {c['line']}" for c in trade]
    elif (r.get("tradeoff") or {}).get("families"):
        spans = [f"{fam} {min(t for t, _ in f['frontier']):.2f}–{max(t for t, _ in f['frontier']):.2f}"
                 for fam, f in r["tradeoff"]["families"].items() if f.get("frontier")]
        lines += ["", "forgetting at matched task EM: no two families' frontiers reach a common EM, so none is "
                      "compared (frontier EM ranges: " + "; ".join(spans) + ")"]
    traj = r.get("trajectories") or {}
    if traj.get("pairs"):
        lines += ["", f"forgetting at matched task loss over the runs' trajectories (a probe every "
                      f"{traj['probe_every']} steps, {traj['runs']} runs; {traj.get('plot', '')}):"]
        lines += [f"  {c['line']}" for c in traj["pairs"]]
    lines += ["", "base model's suite scores (accuracy; chance in brackets):"]
    for name, sc in r.get("base_scores", {}).items():
        chance = f"{sc['chance']:.2f}" if sc.get("chance") is not None else "-"  # rows cached before it was kept
        lines.append(f"  {name:<20} {sc['score']:.3f}  [{chance}]  n {sc.get('n')}")
    lam = r.get("lambda_max_base_general")
    if lam:
        lines += ["", f"λ_max of the general loss's Hessian at the base: {_g(lam['lambda_max'])} "
                      f"({lam['hvps']} HVPs, converged {lam['converged']})"]
    lines += _ranking_lines(r, info)
    lines += ["", f"report: {r['report']}  (json: {Path(r['report']).with_suffix('.json')}); total {r['seconds']:.0f} s"]
    return "\n".join(lines)


def _item_lines(checkpoints: list[dict]) -> list[str]:
    """Each checkpoint's forgetting with its interval over the suites' items (when they were kept)."""
    rows = [(c["label"], c["forgetting"]["average"]) for c in checkpoints
            if (c["forgetting"].get("average") or {}).get("items")]
    if not rows:
        return []
    return ["", "forgetting over the suites' items (paired with the base; 95% CI over items, not seeds):"] + [
        f"  {label:<22} {a['delta']:+.4f}{_items(a['items'])}" for label, a in rows]


def _ranking_lines(r: dict, info: dict) -> list[str]:
    """The ranking of every metric against average forgetting (and the best per target)."""
    covs = r.get("covariates") or []
    over = f" over {r['bootstrap_over']}" if r.get("bootstrap_over") else ""
    lines = ["", f"metric vs average forgetting, ranked (Spearman ρ [95% bootstrap CI{over}], p"
             + (f"; partial ρ given {', '.join(covs)} [CI]" if covs else "") + "; n checkpoints):"]
    for row in r["ranking"]:
        ci = row.get("ci") or [None, None]
        i = info.get(row["metric"], {})
        where = f"@{i.get('where', '?')}, {i.get('data_label', '?')}"
        part = ""
        if covs:
            pci = row.get("partial_ci") or [None, None]
            part = f"  partial {_g(row.get('partial_spearman')):>7} [{_g(pci[0])}, {_g(pci[1])}]"
        lines.append(f"  {row['metric']:<22} {where:<30} ρ {_g(row['spearman']):>7} [{_g(ci[0])}, {_g(ci[1])}]  "
                     f"p {_g(row['p'])}{part}  n {row['n']}")
    ranks = r.get("rankings") or {}
    best = [f"{t.replace('category:', '')} {rk[0]['metric']} ({_g(rk[0]['spearman'])})"
            for t, rk in ranks.items() if t.startswith("category:") and rk and rk[0]["spearman"] is not None]
    if best:
        lines.append("  best per category: " + "; ".join(best))
    top = (ranks.get("suite_mean") or [{}])[0]
    if top.get("spearman") is not None:
        lines.append(f"  forgetting as the plain mean over the suites (Biderman et al. 2024): best {top['metric']} "
                     f"({_g(top['spearman'])})")
    return lines


def across_summary(r: dict) -> str:
    """The second task's study, then how the two tasks agree (rankings, matched comparisons)."""
    x = r["across_tasks"]
    lines = ["", "", f"=== the second task: '{x['tasks'][1]}' ===", summary(r["second_task"]), "",
             f"=== across the tasks ('{x['tasks'][0]}' / '{x['tasks'][1]}') ===",
             "metric vs average forgetting on each task (Spearman ρ; sign kept?):"]
    for m in x["metrics"]:
        (a, b), (na, nb) = m["spearman"], m["n"]
        keep = {True: "same sign", False: "SIGN FLIPS", None: "-"}[m["same_sign"]]
        lines.append(f"  {m['metric']:<22} ρ {_g(a):>7} (n {na}) / {_g(b):>7} (n {nb})  {keep}")
    lines.append(f"  rank correlation of the two rankings' ρ: {_g(x['ranking_agreement'])}")
    for key, what in (("tradeoff", "at matched task EM"), ("trajectories", "at matched task loss over trajectories")):
        for c in x["matched"].get(key) or []:
            lines += [f"  {c['pair']} {what}:"] + [f"    {t}: {line}" for t, line in zip(x["tasks"], c["lines"])]
    lines.append(f"total for both tasks {r.get('seconds_both', r['seconds']):.0f} s")
    return "\n".join(lines)
