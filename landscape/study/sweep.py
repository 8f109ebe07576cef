"""The field's other protocol: every method at several learning rates, compared at its best one.

Biderman et al. 2024 ("LoRA Learns Less and Forgets Less", Llama-2-7B) sweep the learning rate of each
method, represent a method by the rate that learns the target task best, and measure forgetting as the
plain mean over general suites. Our studies (Li et al. 2024's protocol) compare SAM with AdamW at
matched settings — equal steps, the same rate — and average forgetting over categories. The two can
disagree: a method that needs a smaller rate to learn well may forget less *because* of the rate.

:func:`lr_sweep` turns a study into its sweep (each method — optimizer, steps, ρ, LoRA rank of its
first run — at the spec's rate times each factor); :func:`best_per_method` reads the result the
Biderman way. The sweep runs at one seed: a method's best rate is a point, not an interval, and the
summary says so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from landscape.study.studies import StudySpec, _run, run_study

# the rate of each method's first run times these (Biderman's grids span ~10× around the best rate)
FACTORS = (1 / 3, 1.0, 3.0)
PROTOCOL = ("Biderman et al. 2024: each method at its best learning rate by task exact match; forgetting = "
            "the plain mean over the suites")


def lr_sweep(spec: StudySpec, fast: bool = False, factors: tuple = FACTORS) -> StudySpec:
    """``spec``'s methods each at lr × ``factors`` (one seed, no probes, no predictors; the task loss
    is the only measurement at the checkpoints besides forgetting and task exact match). A method is
    represented by its claim-carrying run (the first of ``seeded``), else its first run; ``fast``: the
    methods of the fast runs only."""
    kept = [r for r in map(_run, spec.runs) if not fast or r[0] in spec.fast_runs]
    seeded = spec.fast_seeded if fast else spec.seeded
    first: dict = {}
    for r in sorted(kept, key=lambda r: r[0] not in seeded):  # stable: the seeded ones first, in order
        first.setdefault(f"{r[1]}-lora" if r[5] else r[1], r)
    runs = []
    for label, opt, lr, steps, rho, rank in first.values():
        for f in factors:
            x = float(f"{lr * f:.2g}")
            name = "-".join(filter(None, ("lora" if rank else "", opt, f"r{rank}" if rank else "",
                                          f"rho{rho:g}" if opt != "adamw" else "", f"lr{_rate(x)}", f"s{steps}")))
            runs.append((name, opt, x, steps, rho, *([rank] if rank else [])))
    data = {k: v for k, v in spec.flatness.items() if k in ("batch_size", "num_batches", "max_length")}
    return replace(spec, name=f"{spec.name}-sweep", title=f"{spec.title}: a learning-rate sweep per method",
                   runs=tuple(runs), fast_runs=tuple(r[0] for r in runs), flatness={**data, "metrics": []},
                   fast_flatness={}, comparisons=(), predictors=None, fast_predictors={}, covariates=(),
                   seeds=spec.seeds[:1], seeded=(), fast_seeded=(), probe=None, fast_probe={})


def _rate(x: float) -> str:
    """3.3e-4, 1e-3: a learning rate for a folder name."""
    m, e = f"{x:.1e}".split("e")
    return f"{m.rstrip('0').rstrip('.')}e{int(e)}"


def run_sweep(spec: StudySpec, out: Path, root: Path, model: dict, fast: bool = False, progress: bool = False) -> dict:
    """The sweep of ``spec`` on the study's base (``out/base``) under ``out/sweep`` (its report
    ``out/sweep/report.html``; the study's results store, so the base is scored once): each method's
    best rate, and the families' frontiers at matched task exact match over all the rates."""
    s = run_study(lr_sweep(spec, fast), out / "base", out / "sweep", root, model, fast=fast, progress=progress,
                  store=out / "report.sqlite")
    return {**best_per_method(s["checkpoints"]), "tradeoff": s["tradeoff"], "report": s["report"],
            "finetunes": s["finetunes"], "seconds": s["seconds"]}


def best_per_method(checkpoints: list[dict]) -> dict:
    """Per method (``optimizer`` label: adamw, sam, adamw-lora, …): every rate's (lr, task EM,
    forgetting), and the rate with the highest task EM (ties: the smaller forgetting) with its
    forgetting as the plain suite mean (and our category average beside it); each method against
    AdamW at their best rates."""
    methods: dict = {}
    for c in checkpoints:
        fg = c["forgetting"]
        methods.setdefault(c.get("optimizer") or "other", []).append(
            {"label": c["label"], "lr": c.get("lr"), "task_exact_match": c.get("task_exact_match"),
             "suite_mean": (fg.get("suite_mean") or fg["average"] or {}).get("delta"),
             "average": (fg["average"] or {}).get("delta")})
    out = {}
    for fam, rows in methods.items():
        rows.sort(key=lambda r: r["lr"] or 0)
        scored = [r for r in rows if r["task_exact_match"] is not None and r["suite_mean"] is not None]
        best = max(scored, key=lambda r: (r["task_exact_match"], -r["suite_mean"])) if scored else None
        out[fam] = {"rates": rows, "best": best,
                    "best_at_edge": best is not None and best["lr"] in (rows[0]["lr"], rows[-1]["lr"])}
    ref = out.get("adamw", {}).get("best")
    vs = [{"method": fam, "against": "adamw", "task_exact_match": [m["best"]["task_exact_match"], ref["task_exact_match"]],
           "forgetting_difference": m["best"]["suite_mean"] - ref["suite_mean"]}
          for fam, m in out.items() if fam != "adamw" and m["best"] and ref]
    return {"protocol": PROTOCOL, "methods": out, "against_adamw": vs, "seeds": 1}


def sweep_lines(r: dict) -> list[str]:
    """The sweep's printed summary: each method's rates and its best, then each against AdamW."""
    lines = ["", f"learning-rate sweep ({r['protocol']}; one seed, so each best rate is a point, not an interval):"]
    for fam, m in r["methods"].items():
        rates = ", ".join(f"{_rate(x['lr'])}: EM {x['task_exact_match']:.2f} forget {x['suite_mean']:+.3f}"
                          for x in m["rates"] if x["task_exact_match"] is not None and x["suite_mean"] is not None)
        b = m["best"]
        edge = " (at the edge of the grid: the best rate may lie beyond it)" if m["best_at_edge"] else ""
        lines.append(f"  {fam:<11} {rates}" + (f"  → best lr {_rate(b['lr'])}{edge}" if b else ""))
    for v in r["against_adamw"]:
        lines.append(f"  {v['method']} vs adamw at their best rates: forgetting difference {v['forgetting_difference']:+.3f} "
                     f"(task EM {v['task_exact_match'][0]:.2f} vs {v['task_exact_match'][1]:.2f})")
    return lines
