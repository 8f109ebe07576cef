import click

from landscape.cli._common import batches, data_options, emit, load, model_options, output_options, show_progress, with_seed


@click.command("surface")
@click.argument("checkpoint", type=click.Path())
@data_options
@click.option("--x", "xspec", default="-1:1:21", show_default=True, help="MIN:MAX:COUNT along the first direction.")
@click.option("--y", "yspec", default=None, help="MIN:MAX:COUNT along the second direction (2-D surface).")
@click.option("--norm", type=click.Choice(["filter", "layer", "none"]), default="filter", show_default=True)
@click.option("--ignore", type=click.Choice(["biasbn", "none"]), default="biasbn", show_default=True)
@click.option("--orthogonal", is_flag=True, help="Make the y direction orthogonal to x (after normalisation).")
@click.option("--to", "to_ckpt", type=click.Path(), default=None, help="x direction = OTHER − CHECKPOINT.")
@click.option("--to-y", "to_y_ckpt", type=click.Path(), default=None,
              help="y direction = OTHER − CHECKPOINT (with --to: the plane through three checkpoints).")
@click.option("--params", "param_regex", default=None, help="Perturb only parameters matching this regex.")
@click.option("--save-directions", is_flag=True, help="Store the directions in the h5 (directions/x/<name>).")
# surface.DIRECTION_MODES, spelled out: importing landscape.surface here would load torch at CLI start
@click.option("--directions", "dir_mode", type=click.Choice(["auto", "held", "regenerated"]), default="auto",
              show_default=True, help="Hold the directions in memory, or rebuild them per point so that the "
                                      "only extra copy is the origin (auto: held when they fit in half the free memory).")
@click.option("--points-per-pass", type=int, default=1, show_default=True,
              help="Evaluate this many grid points per vectorised forward (torch.func.vmap): K copies of the "
                   "weights; faster for small models on the CPU.")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@model_options
@output_options
@with_seed
def command(checkpoint, data, batch_size, max_length, num_batches, xspec, yspec, norm, ignore, orthogonal, to_ckpt,
            to_y_ckpt, param_regex, save_directions, dir_mode, points_per_pass, out, device, dtype, seed, trust_pickle, trust_remote_code,
            as_json, quiet):
    """Loss on a 1-D line or 2-D plane around CHECKPOINT (filter-normalised random or checkpoint directions).

    Interrupted runs resume with the same command (progress is kept in OUT.partial).

    \b
    Examples:
      landscape surface runs/demo/base --x -1:1:21 --y -1:1:21 --out base.h5
      landscape surface base/ --to tuned/ --x -0.5:1.5:41 --out line.h5
    """
    from landscape.surface import parse_grid, surface

    x = parse_grid(xspec, "x")
    y = parse_grid(yspec, "y") if yspec else None
    if to_y_ckpt and y is None:
        raise click.UsageError("--to-y needs --y")
    ck = load(checkpoint, device, dtype, trust_pickle, trust_remote_code)
    bs = batches(ck, data, batch_size, max_length, num_batches)
    targets = {}
    for key, path in (("to", to_ckpt), ("to_y", to_y_ckpt)):
        if path:
            t = load(path, ck.device, dtype, trust_pickle, trust_remote_code)
            targets[key] = dict(t.model.named_parameters())
            targets[key + "_fp"] = t.fingerprint
    meta = {"checkpoint": str(checkpoint), "checkpoint_fingerprint": ck.fingerprint, "data": bs.source,
            "data_fingerprint": bs.fingerprint, "to_fingerprint": targets.get("to_fp"),
            "to_y_fingerprint": targets.get("to_y_fp"), "dtype": str(dtype)}
    r = surface(ck.model, bs, out, x, y, norm=norm, ignore=ignore, seed=seed, orthogonal=orthogonal,
                to=targets.get("to"), to_y=targets.get("to_y"), param_regex=param_regex,
                save_directions=save_directions, meta=meta, progress=show_progress(quiet), directions=dir_mode,
                points_per_pass=points_per_pass)
    emit(r, as_json, f"{r['out']}: {r['points']} points ({r['computed']} computed now)")
