import click

from landscape.cli._common import (GroupedCommand, batches, config_from, config_options, emit, human_plan, human_work,
                                   load, load_options, output_options, planned_for, show_progress,
                                   with_seed)
from landscape.foundation.configs import DataConfig, SharpnessConfig


@click.command("sharpness", cls=GroupedCommand)
@click.argument("checkpoint", type=click.Path())
@config_options(DataConfig)
@config_options(SharpnessConfig)
@load_options
@output_options
@with_seed
def command(checkpoint, as_json, quiet, **kw):
    """Curvature and sharpness of CHECKPOINT: λ_max/λ_min (Lanczos), Hessian trace, ε-, SAM- and average sharpness.

    λ_max is the largest algebraic eigenvalue of the Hessian of the token-weighted mean loss over
    all batches; the weights are bit-identical afterwards.

    \b
    Example:
      landscape sharpness runs/demo/base --metrics lambda_max,trace --top-k 3 --json
    """
    from landscape.measures.sharpness import measure

    cfg = config_from(SharpnessConfig, kw)  # fail fast, before loading anything
    with planned_for(kw, cfg.dry_run, checkpoint):
        ck = load(checkpoint, kw, curvature=True)
        bs = batches(ck, kw)
        r = measure(ck.model, bs, cfg, progress=show_progress(quiet))
    if "plan" in r:
        return emit({"checkpoint": str(checkpoint), **r}, as_json, human_plan(checkpoint, r["plan"]) + human_work(r.get("work")))
    r = {"checkpoint": str(checkpoint), "fingerprint": ck.fingerprint,
         "where": {"weights": str(checkpoint), "data": bs.source}, **r}  # which weights, which tokens
    r["config"]["data"] = {"path": bs.source, "fingerprint": bs.fingerprint, **bs.config}
    emit(r, as_json, _human(checkpoint, r))


def _human(checkpoint, r: dict) -> str:
    m = r["metrics"]
    lines = [f"{checkpoint}: loss {r['loss']:.6f} over {r['tokens']} tokens of {r['where']['data']}"]
    for k, v in m.items():
        if isinstance(v, float):
            lines.append(f"  {k:<24} {v:.6g}")
        elif k == "eigenvalues" and v is not None:
            lines.append(f"  {k:<24} {', '.join(f'{x:.6g}' for x in v)}")
    for g, row in m.get("per_layer", {}).items():
        lines.append(f"  λ_max[{g}]{'':<{max(0, 15 - len(g))}} {row['lambda_max']:.6g}")
    lines.append(f"  cost: {r['cost']['hvps']} HVPs ({r['hvp']['hvp_method']}), {r['cost']['seconds']} s, "
                 f"{_peak(r['cost'])} (planned {r['cost']['planned_peak_gb']} GB)")
    lines += [f"  {k:<24} null: {why}" for k, why in r.get("nulls", {}).items() if k != "eigenvalues"]
    lines += [f"  warning: {w}" for w in r.get("warnings", [])]
    return "\n".join(lines)


def _peak(cost: dict) -> str:
    """The peak that the plan predicts, labelled: a GPU's allocator peak (with the host's RSS beside it),
    or the host's RSS."""
    if cost.get("device_peak_gb") is not None:
        return f"{cost['device']} peak {cost['device_peak_gb']} GB (host RSS {cost['peak_rss_gb']} GB)"
    return f"peak RSS {cost['peak_rss_gb']} GB"
