"""The forgetting predictors' ranking across the three scales, in one table with each predictor's cost:
the toy study (0.7M, `benchmarks/results_demo.json`), SmolLM2-135M (`results_real_135m_ranking.json`)
and Qwen2.5-Coder-1.5B (`results_real_1b_study.json`), gathered into `results_scales.json`.

    python benchmarks/scales.py               # gather the committed results and render the block
    python benchmarks/scales.py --table-only  # re-render the block from results_scales.json

The block sits between the ``scales-table`` markers of docs/results/scales.md (tests/test_docs.py
checks it against this rendering and the gathered JSON against its sources).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH = ROOT / "benchmarks"
OUT = BENCH / "results_scales.json"
SOURCES = {"toy": "results_demo.json", "135m": "results_real_135m_ranking.json", "1.5b": "results_real_1b_study.json"}

# what each costs per fine-tune (docs/concepts/forgetting.md, "What each costs"), and where it is measured
# (general: plain English; task: the fine-tune's held-out data)
COST = {"delta_norm": "none (the weights)", "delta_rel": "none (the weights)",
        "grad_delta": "1 gradient per base", "kl_base_tuned": "2 forwards a batch (both directions)",
        "kl_tuned_base": "2 forwards a batch (both directions)",
        "kl_base_tuned_task": "2 forwards a task batch (both directions)",
        "kl_tuned_base_task": "2 forwards a task batch (both directions)",
        "general_loss_increase": "1 forward a batch a line point", "critical_sharpness": "5–12 forwards a batch",
        "kappa_base": "gradient + 1 HVP", "quad_pred": "gradient + 1 HVP", "bound": "+ λ_max once per base",
        "grad_delta_tuned": "1 gradient at the tuned", "kappa_tuned": "gradient + 1 HVP at the tuned",
        "quad_pred_tuned": "gradient + 1 HVP at the tuned", "lambda_max": "≤ max_iter HVPs",
        "trace": "Hutchinson: many HVPs", "sam": "1–2 gradients", "eps": "a few gradients",
        "avg": "forwards at random directions", "surface_curvature": "forwards along a filter-normalised line",
        "average_gradient": "gradients at random directions"}
FLATNESS = {"lambda_max", "trace", "sam", "eps", "avg", "surface_curvature", "average_gradient"}


def _where(m: str) -> str:
    """Where (the library's own label, PREDICTOR_METRICS) and on what data each metric is measured."""
    from landscape.foundation.configs import PREDICTOR_METRICS

    if m in FLATNESS:
        return "tuned, task"
    return f"{PREDICTOR_METRICS[m][0]}, {'task' if m.endswith('_task') else 'general'}"


def _rows(ranking: list[dict]) -> dict:
    return {r["metric"]: {"rho": r.get("spearman"), "ci": r.get("ci"), "p": r.get("p"), "n": r.get("n")}
            for r in ranking}


def gather() -> dict:
    """The three studies' rankings in one record, each with where it came from."""
    toy = json.loads((BENCH / SOURCES["toy"]).read_text())
    mid = json.loads((BENCH / SOURCES["135m"]).read_text())
    big_path = BENCH / SOURCES["1.5b"]
    big = json.loads(big_path.read_text()) if big_path.is_file() else None
    cols = {"toy": {"label": "toy 0.7M (counting)", "date": toy["date"], "rows": _rows(toy["result"]["ranking"])},
            "135m-reverse": {"label": "SmolLM2-135M (reversal)", "date": mid["date"],
                             "rows": _rows(mid["rankings"]["reverse"])},
            "135m-json": {"label": "SmolLM2-135M (JSON)", "date": mid["date"], "rows": _rows(mid["rankings"]["json"])}}
    if big is not None:
        cols["1.5b"] = {"label": "Qwen2.5-1.5B (reversal, bf16)", "date": big["date"],  # below n = 6: exact p, no interval
                        "rows": _rows(big["result"]["ranking"])}
    return {"sources": SOURCES, "columns": cols}


def _cell(v: dict | None) -> str:
    if not v or v.get("rho") is None:
        return "–"
    if v.get("ci") and None not in v["ci"]:
        return f"{v['rho']:+.2f} [{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}]"
    return f"{v['rho']:+.2f} (p {v['p']:.2f})" if v.get("p") is not None else f"{v['rho']:+.2f}"


def table(data: dict) -> str:
    cols = data["columns"]
    order = sorted({m for c in cols.values() for m in c["rows"]},  # predictors first, then flatness at the tuned
                   key=lambda m: (m in FLATNESS, -abs((cols["toy"]["rows"].get(m) or {}).get("rho") or 0), m))
    ns = {k: max((r.get("n") or 0 for r in c["rows"].values()), default=0) for k, c in cols.items()}
    head = "| metric | where, data | cost per fine-tune | " + " | ".join(f"{c['label']}, n {ns[k]}" for k, c in cols.items()) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for m in order:
        lines.append(f"| `{m}` | {_where(m)} | {COST.get(m, '')} | " + " | ".join(_cell(c["rows"].get(m)) for c in cols.values()) + " |")
    dates = ", ".join(f"{c['label']} {c['date']}" for c in cols.values())
    return ("Spearman ρ of each metric with average forgetting over a study's checkpoints [95% cluster-bootstrap "
            "interval over settings]; where n is too small for an interval, ρ with its exact permutation p-value. "
            f"Measured: {dates}. Rendered from `benchmarks/results_scales.json` by "
            "`python benchmarks/scales.py --table-only`.\n\n" + "\n".join(lines))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args(argv)
    if a.table_only:
        data = json.loads(OUT.read_text())
    else:
        data = gather()
        OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    from benchmarks._readme import replace_block

    replace_block("scales-table", table(data))
    return data


if __name__ == "__main__":
    main()
