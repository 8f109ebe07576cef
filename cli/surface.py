import click

from landscape.cli._common import (GroupedCommand, batches, config_from, config_options, emit, human_plan, load,
                                   load_options, output_options, planned_for, show_progress,
                                   with_seed)
from landscape.foundation.configs import DataConfig, SurfaceConfig


@click.command("surface", cls=GroupedCommand)
@click.argument("checkpoint", type=click.Path())
@config_options(DataConfig)
@config_options(SurfaceConfig)
@click.option("--to", "to_ckpt", type=click.Path(), default=None, help="x direction = OTHER − CHECKPOINT.")
@click.option("--to-y", "to_y_ckpt", type=click.Path(), default=None,
              help="y direction = OTHER − CHECKPOINT (with --to: the plane through three checkpoints).")
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@load_options
@output_options
@with_seed
def command(checkpoint, to_ckpt, to_y_ckpt, out, as_json, quiet, **kw):
    """Loss on a 1-D line or 2-D plane around CHECKPOINT (filter-normalised random or checkpoint directions).

    Interrupted runs resume with the same command (progress is kept in OUT.partial).

    \b
    Examples:
      landscape surface runs/demo/base --x -1:1:21 --y -1:1:21 --out base.h5
      landscape surface base/ --to tuned/ --x -0.5:1.5:41 --out line.h5
    """
    from landscape.measures.surface import Targets, surface

    cfg = config_from(SurfaceConfig, kw)
    if to_y_ckpt and cfg.y is None:
        raise click.UsageError("--to-y needs --y")
    load_kw = dict(kw)
    with planned_for(kw, cfg.dry_run, checkpoint, to_ckpt, to_y_ckpt):
        ck = load(checkpoint, kw)
        bs = batches(ck, kw)
        targets, fps = {}, {}
        for key, path in (("to", to_ckpt), ("to_y", to_y_ckpt)):
            if path:
                t = load(path, {**load_kw, "device": str(ck.device)})
                targets[key], fps[key] = dict(t.model.named_parameters()), t.fingerprint
        if cfg.dry_run:
            from landscape.measures.surface import plan

            pl = plan(ck.model, bs, cfg).as_dict()
            return emit({"checkpoint": str(checkpoint), "plan": pl}, as_json, human_plan(checkpoint, pl))
    meta = {"checkpoint": str(checkpoint), "checkpoint_fingerprint": ck.fingerprint, "data": bs.source,
            "data_fingerprint": bs.fingerprint, "to_fingerprint": fps.get("to"),
            "to_y_fingerprint": fps.get("to_y"), "dtype": str(load_kw["dtype"]),
            **({"to_checkpoint": str(to_ckpt)} if to_ckpt else {}),
            **({"to_y_checkpoint": str(to_y_ckpt)} if to_y_ckpt else {})}
    r = surface(ck.model, bs, out, cfg, targets=Targets(**targets), meta=meta, progress=show_progress(quiet))
    span = (f"; loss {r['loss_min']:.6g} … {r['loss_max']:.6g}, {r['loss_at_origin']:.6g} at the origin"
            if r.get("loss_at_origin") is not None else "")
    emit(r, as_json, f"{r['out']}: {r['points']} points ({r['computed']} computed now){span}")
