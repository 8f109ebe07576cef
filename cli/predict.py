import click

from landscape.cli._common import (GroupedCommand, config_from, config_options, emit, human_plan, load_options,
                                   output_options, planned_for, show_progress, with_seed)
from landscape.foundation.configs import DataConfig, LoadConfig, PredictConfig


@click.command("predict", cls=GroupedCommand)
@click.argument("base", type=click.Path())
@click.argument("tuned", type=click.Path(), nargs=-1, required=True)
@config_options(DataConfig)
@config_options(PredictConfig)
@load_options
@output_options
@with_seed
def command(base, tuned, as_json, quiet, **kw):
    """What the general loss predicts about each TUNED checkpoint's forgetting, measured at BASE.

    With Δw = w_tuned − w_base and g, H the gradient and Hessian of the loss on --data (general
    text, not the fine-tuning task) at the base weights: ‖Δw‖, gᵀΔw, the curvature along the
    update κ = ΔwᵀHΔw/‖Δw‖², the second-order forgetting F̂ = gᵀΔw + ½ΔwᵀHΔw and its bound with
    λ_max(H); the measured F = L(w_tuned) − L(w_base) and the loss along the line between them; the
    same curvature at the tuned weights. The weights are bit-identical afterwards.

    \b
    Example:
      landscape predict runs/demo/base runs/demo/ft/adamw-lr1e-3 runs/demo/ft/sam-rho0.05 \\
          --data data/eval.jsonl --json
    """
    from landscape.measures.predictors import predict

    cfg = config_from(PredictConfig, kw)  # fail fast, before loading anything
    data = config_from(DataConfig, kw)
    with planned_for(kw, cfg.dry_run, base, *tuned):
        r = predict(base, tuned, cfg, data, load=config_from(LoadConfig, kw), progress=show_progress(quiet))
    if "plan" in r:
        return emit(r, as_json, human_plan(base, r["plan"]))
    emit(r, as_json, _human(r))


def _g(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _human(r: dict) -> str:
    lam = r["lambda_max_base"]
    lines = [f"base {r['base']} on {r['data']['path']} ({r['tokens']} tokens)"
             + (f"; λ_max(H_base) {lam['lambda_max']:.5g}" if lam else "")]
    for x in r["results"]:
        m = x["metrics"]
        lines += [f"{x['tuned']}:",
                  f"  ‖Δw‖ {_g(m['delta_norm'])} ({_g(m['delta_rel'])} of ‖w_base‖)   gᵀΔw {_g(m['grad_delta'])}   "
                  f"κ_base {_g(m['kappa_base'])}",
                  f"  forgetting of the general loss: measured F {_g(m['general_loss_increase'])}   "
                  f"quadratic F̂ {_g(m['quad_pred'])} (explains {_g(x['explained'])} of F; line R² "
                  f"{_g(x['line']['r2'])})   bound {_g(m['bound'])}"]
        kl = f"  KL(base‖tuned) {_g(m.get('kl_base_tuned'))}   KL(tuned‖base) {_g(m.get('kl_tuned_base'))} per token"
        if "kl_base_tuned_task" in m:
            kl += (f";  on the task data {_g(m['kl_base_tuned_task'])} / {_g(m['kl_tuned_base_task'])}")
        lines.append(kl)
        if x["at_tuned"]:
            lines.append(f"  at the tuned weights: g_tᵀΔw {_g(m['grad_delta_tuned'])}   κ_tuned {_g(m['kappa_tuned'])}"
                         f"   F̂_tuned {_g(m['quad_pred_tuned'])}")
    lines.append(f"cost: {r['cost']['seconds']} s, peak RSS {r['cost']['peak_rss_gb']} GB")
    return "\n".join(lines)
