import click

from landscape.cli._common import batches, data_options, emit, load, model_options, output_options, show_progress, with_seed


@click.command("sharpness")
@click.argument("checkpoint", type=click.Path())
@data_options
@click.option("--metrics", default=None,
              help="Comma list of lambda_max,lambda_min,trace,density,eps,eps_subspace,sam,asam,avg "
                   "[default: lambda_max,lambda_min,trace,eps,sam,avg].")
@click.option("--top-k", type=int, default=1, show_default=True, help="How many top eigenvalues.")
@click.option("--params", "param_regex", default=None, help="Only parameters whose name matches this regex.")
@click.option("--per-layer", is_flag=True, help="Also λ_max (and trace) of each transformer block's Hessian.")
@click.option("--method", type=click.Choice(["lanczos", "power"]), default="lanczos", show_default=True)
@click.option("--max-iter", type=int, default=100, show_default=True, help="Lanczos steps / power iterations.")
@click.option("--tol", type=float, default=1e-3, show_default=True, help="Relative residual ‖Hv−λv‖/|λ| to stop.")
@click.option("--trace-samples", type=int, default=30, show_default=True)
@click.option("--cache-graph", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              is_flag=False, flag_value="on",
              help="Keep the gradient's graph for all batches, so each HVP costs one backward (faster, more "
                   "memory); auto: when one batch's measured graph × batches fits in half the free memory.")
@click.option("--eps", type=float, default=1e-3, show_default=True, help="Box size of ε-sharpness.")
@click.option("--rho", type=float, default=0.05, show_default=True, help="Ball radius of SAM sharpness.")
@click.option("--sigma", type=float, default=0.01, show_default=True, help="Noise scale of average sharpness.")
@model_options
@output_options
@with_seed
def command(checkpoint, data, batch_size, max_length, num_batches, metrics, top_k, param_regex, per_layer, method,
            max_iter, tol, trace_samples, cache_graph, eps, rho, sigma, device, dtype, seed, trust_pickle, trust_remote_code,
            as_json, quiet):
    """Curvature and sharpness of CHECKPOINT: λ_max/λ_min (Lanczos), Hessian trace, ε-, SAM- and average sharpness.

    λ_max is the largest algebraic eigenvalue of the Hessian of the token-weighted mean loss over
    all batches; the weights are bit-identical afterwards.

    \b
    Example:
      landscape sharpness runs/demo/base --metrics lambda_max,trace --top-k 3 --json
    """
    from landscape.sharpness import measure, parse_metrics

    parse_metrics(metrics)  # fail fast, before loading anything
    ck = load(checkpoint, device, dtype, trust_pickle, trust_remote_code)
    bs = batches(ck, data, batch_size, max_length, num_batches)
    r = measure(ck.model, bs, metrics=metrics, top_k=top_k, params=param_regex, per_layer=per_layer,
                method=method, max_iter=max_iter, tol=tol, trace_samples=trace_samples, eps=eps, rho=rho,
                sigma=sigma, seed=seed, progress=show_progress(quiet),
                cache_graph={"auto": "auto", "on": True, "off": False}[cache_graph])
    r = {"checkpoint": str(checkpoint), "fingerprint": ck.fingerprint, **r}
    r["config"]["data"] = {"path": bs.source, "fingerprint": bs.fingerprint, **bs.config}
    m = r["metrics"]
    lines = [f"{checkpoint}: loss {r['loss']:.6f} over {r['tokens']} tokens"]
    for k, v in m.items():
        if isinstance(v, float):
            lines.append(f"  {k:<24} {v:.6g}")
        elif k == "eigenvalues":
            lines.append(f"  {k:<24} {', '.join(f'{x:.6g}' for x in v)}")
    for g, row in m.get("per_layer", {}).items():
        lines.append(f"  λ_max[{g}]{'':<{max(0, 15 - len(g))}} {row['lambda_max']:.6g}")
    lines.append(f"  cost: {r['cost']['hvps']} HVPs, {r['cost']['seconds']} s")
    emit(r, as_json, "\n".join(lines))
