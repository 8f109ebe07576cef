"""Loss along 1-D lines and 2-D planes in weight space, written to a resumable h5 file.

Point (x_i, y_j) is evaluated with the weights set to w₀ + x_i·d_x + y_j·d_y, computed from a saved
copy of the origin w₀ (never a walk of add_/sub_), so the centre equals the checkpoint's loss
exactly and the weights are bit-identical afterwards. The directions are held in memory or rebuilt
tensor by tensor at every point (``directions="regenerated"``: the origin is the only extra copy).

h5 layout: ``xcoordinates`` (nx), ``ycoordinates`` (ny, 2-D only), ``loss`` (nx[, ny]) with
``loss[i, j]`` the loss at (x_i, y_j), ``done`` (same shape, 1 where computed: a NaN/inf loss at a far
point is a computed value, not a hole), attributes with seed, normalisation, ignore rule,
checkpoint/data fingerprints and library version; optional ``directions/x/<name>``, ``directions/y/<name>``.

Progress is saved to ``OUT.partial`` (rewritten atomically about once a second, without directions);
the same command resumes from it and the final file is identical to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch
from landscape.foundation.progress import tqdm

import landscape
from landscape.foundation import distributed as dist
from landscape.foundation import params as P
from landscape.foundation import plan as plans
from landscape.foundation.configs import ConfigError, SurfaceConfig, parse_grid  # noqa: F401 (parse_grid: API)
from landscape.foundation.errors import UserError
from landscape.foundation.io import atomic_write
from landscape.foundation.loss import evaluate
from landscape.measures import directions as D


class Targets(NamedTuple):
    """Named parameters of target checkpoints: the x (y) direction becomes w_target − w (a line
    between two checkpoints, or the plane through base, A and B)."""

    to: dict | None = None
    to_y: dict | None = None


class RunControl(NamedTuple):
    """How a run is driven, never what it computes. ``max_points`` stops after that many new points
    (leaving the partial file: tests, time-boxed runs); progress is saved at most every
    ``save_every`` seconds (and when stopping); ``loss_fn()`` replaces ``evaluate(model, batches)``
    (closed-form objectives in tests)."""

    max_points: int | None = None
    save_every: float = 1.0
    loss_fn: object = None


def _write_h5(path: Path, arrays: dict, attrs: dict, dirs: dict | None = None) -> None:
    """Write a complete h5 file atomically (temp file, fsync, rename). No timestamps: same bytes."""
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v, track_times=False)
            for k, v in attrs.items():
                f.attrs[k] = v
            for axis, named in (dirs or {}).items():
                for n, t in named.items():
                    f.create_dataset(f"directions/{axis}/{n}", data=t.detach().cpu().float().numpy(),
                                     track_times=False)


def _read_partial(path: Path, attrs: dict, shape) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            old = {k: f.attrs[k] for k in f.attrs}
            loss, done = f["loss"][()], f["done"][()]
    except (OSError, KeyError) as e:
        raise UserError(f"{path}: unreadable progress file ({e}); delete it to start over") from None
    if old.get("config_hash") != attrs["config_hash"] or loss.shape != tuple(shape):
        raise UserError(f"{path}: written by another configuration (different checkpoint, data, grid or "
                        "directions); refusing to resume into it — delete it or use another output path")
    return loss, done


@dataclass
class _Grid:
    """One surface run's fixed pieces: the model, what is evaluated, the grid and the directions."""

    model: object
    batches: object
    named: dict
    x: np.ndarray
    y: np.ndarray | None
    loss_fn: object = None
    origin: list = field(default_factory=list)
    dx: object = None
    dy: object = None
    layouts: dict | None = None  # FSDP: name → sharded parameter (``named`` holds its local rows)

    @property
    def ps(self) -> list:
        return list(self.named.values())

    @property
    def shape(self) -> tuple:
        return (len(self.x),) if self.y is None else (len(self.x), len(self.y))


def surface(model, batches, out: str | os.PathLike, config: SurfaceConfig | None = None, *,
            targets: Targets | None = None, meta: dict | None = None, progress: bool = False,
            control: RunControl | None = None) -> dict:
    """Evaluate the loss on the grid of ``config`` and write ``out`` (h5). Resumes from ``out.partial``.

    ``config.directions``: ``"held"`` keeps the normalised directions in memory (float32, two copies of
    the selected weights for a plane; drawn on the CPU, so any device gives the same directions);
    ``"regenerated"`` holds none and rebuilds each parameter's direction tensor by tensor at every
    point (the only extra copy is the origin w₀ — what a 7B model on one GPU needs; on CUDA the draws
    come from the GPU's generator, recorded in the file); ``"auto"`` holds them when they take less
    than half of the free memory of the model's device.

    ``config.points_per_pass`` K > 1 evaluates K grid points in one vectorised forward
    (``torch.func.vmap`` over K stacked weight sets): K copies of the selected weights, worth it for
    small models on the CPU, where per-operator overhead dominates. Points are grouped in fixed blocks
    of the grid order, so a resumed run computes the same blocks and writes the same bytes; the
    values agree with K = 1 to float rounding (~1e-7), and K is part of the file's configuration.
    ``meta`` is recorded in the file's attributes (and its identity). Returns a summary dict.
    """
    cfg, targets, control = config or SurfaceConfig(), targets or Targets(), control or RunControl()
    out = Path(out)
    selected = P.select(model, cfg.params)
    layouts = _check_sharded(selected, cfg, targets)
    named = {n: P.local(p) for n, p in selected.items()} if layouts else selected
    grid = _Grid(model, batches, named, cfg.coords("x"), cfg.coords("y"), control.loss_fn, layouts=layouts)
    if cfg.points_per_pass > 1 and grid.loss_fn is not None:
        raise ConfigError("points_per_pass", "> 1 needs a model objective (not loss_fn)")
    mode = _direction_mode(cfg, grid)
    attrs = _file_attrs(cfg, grid, targets, mode, meta)
    partial = out.with_name(out.name + ".partial")
    if out.exists() and not partial.exists():
        with h5py.File(out, "r") as f:
            if f.attrs.get("config_hash") == attrs["config_hash"]:
                return {"out": str(out), "points": int(np.prod(grid.shape)), "computed": 0, "complete": True,
                        **grid_values(read_surface(out))}
        raise UserError(f"{out}: exists and was written by another configuration; choose another output path")
    pl = _plan(grid, cfg, mode)
    if grid.loss_fn is None:  # a closed-form objective (tests) has no model to plan for
        plans.check_fits(pl, plans.free_bytes(grid.ps[0].device), "surface",
                         hint="directions regenerated, points_per_pass 1, a params subset, or a larger machine")
    state = dist.broadcast_object(_read_partial(partial, attrs, grid.shape) if dist.is_main() else None)
    loss, done = state if state is not None else (np.full(grid.shape, np.nan), np.zeros(grid.shape, np.uint8))
    t0 = time.perf_counter()
    P.reset_peak(grid.ps[0].device)
    with P.perturbed(grid.ps) as grid.origin:
        grid.dx, grid.dy = _directions(grid, mode, cfg, targets)
        computed = _walk(grid, cfg.points_per_pass, (loss, done), (partial, attrs), control, progress)
        complete = bool(done.all())
        if computed and not complete and dist.is_main():
            _write_h5(partial, _arrays(grid, loss, done), attrs)
        if complete and dist.is_main():
            dirs = _saved_directions(grid, mode) if cfg.save_directions else None
            _write_h5(out, _arrays(grid, loss, done), attrs, dirs)
            partial.unlink(missing_ok=True)
    dist.barrier()
    return {"out": str(out) if complete else str(partial), "points": int(np.prod(grid.shape)), "computed": computed,
            "complete": complete, "directions": mode,
            **grid_values({"x": cfg.coords("x"), "y": cfg.coords("y"), "loss": np.where(done, loss, np.nan)}), "seconds": round(time.perf_counter() - t0, 3),
            "cost": {**P.peak_memory(grid.ps[0].device), "planned_peak_gb": round(pl.peak / 2**30, 3)}}


def plan(model, batches, config: SurfaceConfig | None = None) -> "plans.Plan":
    """The memory plan of :func:`surface` with these settings, before anything is allocated (what
    `landscape surface --dry-run` prints): the saved origin, the directions as ``auto`` would keep
    them, K stacked points, one forward. Target checkpoints, loaded by then, are in its start."""
    cfg = config or SurfaceConfig()
    selected = P.select(model, cfg.params)
    layouts = _check_sharded(selected, cfg, Targets())
    named = {n: P.local(p) for n, p in selected.items()} if layouts else selected
    grid = _Grid(model, batches, named, cfg.coords("x"), cfg.coords("y"), None, layouts=layouts)
    return _plan(grid, cfg, _direction_mode(cfg, grid))


def _plan(grid: _Grid, cfg: SurfaceConfig, mode: str) -> "plans.Plan":
    from landscape.foundation.loss import param_device

    if grid.loss_fn is not None:  # a closed-form objective (tests): no model to plan for
        return plans.Plan("surface", {}, 0, P.nbytes(grid.ps))
    dev = param_device(grid.model)
    fwd = plans.forward_bytes(grid.model, grid.batches)
    return plans.surface(grid.ps, plans.start_bytes(grid.model, dev), 1 if grid.y is None else 2, mode == "held",
                         cfg.points_per_pass, fwd)


def _check_sharded(selected: dict, cfg: SurfaceConfig, targets: Targets) -> dict | None:
    """name → sharded parameter on an FSDP-sharded model (None otherwise), after refusing what does
    not run there: several points per pass (vmap over whole weights), regenerated directions and
    checkpoint axes (both read whole tensors)."""
    if not P.any_sharded(selected.values()):
        return None
    if cfg.points_per_pass > 1:
        raise ConfigError("points_per_pass", "a sharded model evaluates one grid point per pass")
    if cfg.directions == "regenerated":
        raise ConfigError("directions", "a sharded model holds its directions (each rank its rows); use held or auto")
    if cfg.save_directions:
        raise ConfigError("save_directions", "a sharded model's directions are split across ranks; they are "
                                             "regenerable from the seed recorded in the file")
    if targets.to is not None or targets.to_y is not None:
        raise UserError("checkpoint axes (a target checkpoint) are not available on a sharded model yet")
    return selected


def _direction_mode(cfg: SurfaceConfig, grid: _Grid) -> str:
    """held or regenerated: K > 1 stacks whole direction tensors; auto holds them when they fit;
    a sharded model holds them (its rows of them)."""
    if cfg.points_per_pass > 1 or grid.layouts:
        return "held"
    if cfg.directions != "auto":
        return cfg.directions
    axes = 1 if grid.y is None else 2
    free = P.free_memory(grid.ps[0].device)
    if free is not None and axes * 4 * P.numel(grid.ps) > free // 2:
        return "regenerated"
    if free is not None and grid.loss_fn is None:  # held only if the whole held plan fits, too
        pl = _plan(grid, cfg, "held")
        if pl.peak - pl.start > plans.HEADROOM * free:
            return "regenerated"
    return "held"


def _file_attrs(cfg: SurfaceConfig, grid: _Grid, targets: Targets, mode: str, meta: dict | None) -> dict:
    """The h5 attributes: every setting that changes the file's numbers, and their hash."""
    to, to_y, y = targets.to, targets.to_y, grid.y
    config = {**cfg.numbers(), "params": cfg.params or "", "x": grid.x.tolist(), "y": None if y is None else y.tolist(),
              "y_norm": None if y is None else ("target" if to_y is not None else cfg.norm), **(meta or {})}
    if to is not None:  # the x axis is a checkpoint's: no normalisation, nothing ignored
        config.update(norm="target", ignore="none")
    if cfg.points_per_pass > 1:
        config["points_per_pass"] = cfg.points_per_pass  # other blocking, other rounding: never mixed in one file
    rng = grid.ps[0].device.type if mode == "regenerated" else "cpu"
    if rng != "cpu" and (to is None or (y is not None and to_y is None)):
        config["direction_rng"] = rng  # other random numbers than the CPU's: never mix them in one file
    attrs = {**{k: (json.dumps(v) if isinstance(v, (list, dict)) or v is None else v) for k, v in config.items()},
             "version": landscape.__version__, "dims": len(grid.shape)}
    attrs["config_hash"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return attrs


def _arrays(grid: _Grid, loss, done) -> dict:
    return {"xcoordinates": grid.x, **({"ycoordinates": grid.y} if grid.y is not None else {}),
            "loss": loss, "done": done}


def _saved_directions(grid: _Grid, mode: str) -> dict:
    names = list(grid.named.keys())
    lazy = mode == "regenerated"
    dirs = {"x": grid.dx if lazy else dict(zip(names, grid.dx))}
    if grid.dy is not None:
        dirs["y"] = grid.dy if lazy else dict(zip(names, grid.dy))
    return dirs


def _walk(grid: _Grid, K: int, state: tuple, files: tuple, control: RunControl, progress: bool) -> int:
    """Evaluate the points not yet done, saving progress; returns how many were computed.

    Blocks of K consecutive grid points, fixed by the grid alone (a block is saved only whole, so a
    resumed run meets the same blocks). Rounds of ``world`` blocks: rank r takes the r-th block of
    each round (on all batches), every rank learns every result, rank 0 alone writes.
    """
    loss, done = state
    partial, attrs = files
    points = list(np.ndindex(*grid.shape))
    blocks = [blk for blk in (points[i:i + K] for i in range(0, len(points), K)) if not all(done[j] for j in blk)]
    if control.max_points is not None:
        blocks = blocks[:max(1, control.max_points // K) if control.max_points else 0]
    W, R = dist.point_workers(grid.layouts is not None)
    computed, last_save = 0, time.perf_counter()
    bar = tqdm(total=sum(len(b) for b in blocks), desc="surface", disable=not progress or not dist.is_main(),
               leave=False)
    for chunk in (blocks[i:i + W] for i in range(0, len(blocks), W)):
        mine = chunk[R] if R < len(chunk) else None
        result = None
        if mine is not None:
            result = [(mine[0], _point_loss(grid, mine[0]))] if K == 1 else list(zip(mine, _block_losses(grid, mine)))
        for got in (dist.all_gather_object(result) if W > 1 else [result]):  # sharded: every rank has it
            for idx, value in got or []:
                loss[idx], done[idx] = value, 1
                computed += 1
        bar.update(sum(len(b) for b in chunk))
        if dist.is_main() and time.perf_counter() - last_save >= control.save_every:
            _write_h5(partial, _arrays(grid, loss, done), attrs)  # bounded loss on a kill, no fsync per point
            last_save = time.perf_counter()
    bar.close()
    return computed


def _directions(grid: _Grid, mode: str, cfg: SurfaceConfig, targets: Targets):
    """(dx, dy): lists of float32 tensors (held) or :class:`directions.Lazy` (regenerated)."""
    named, plane = grid.named, grid.y is not None
    to, to_y = targets.to, targets.to_y
    if mode == "regenerated":
        names = list(named.keys())
        dx = D.Lazy(names, grid.origin, cfg.seed, "x", cfg.norm, cfg.ignore, target=to)
        dy = None
        if plane:
            dy = D.Lazy(names, grid.origin, cfg.seed, "y", cfg.norm, cfg.ignore, target=to_y,
                        against=dx if cfg.orthogonal else None)
        return dx, dy
    drawn = grid.layouts or named  # the sharded parameters themselves: directions drawn whole, cut to rows
    dx = D.target_direction(named, to) if to is not None else D.random_direction(drawn, cfg.seed, "x", cfg.norm,
                                                                                 cfg.ignore)
    dy = None
    if plane:
        dy = D.target_direction(named, to_y) if to_y is not None else \
            D.random_direction(drawn, cfg.seed, "y", cfg.norm, cfg.ignore)
        if cfg.orthogonal:
            dy = D.orthogonalize(dy, dx, sharded=grid.layouts is not None)
    return dx, dy


def _point_loss(grid: _Grid, idx) -> float:
    """Set w = w0 + a·dx + b·dy (from the saved origin, never by accumulation) and evaluate.
    With regenerated directions, each parameter's tensors are built just before use (skipped at 0)."""
    a = float(grid.x[idx[0]])
    b = float(grid.y[idx[1]]) if grid.y is not None else 0.0
    dx, dy = grid.dx, grid.dy
    with torch.no_grad():
        for i, (p, o) in enumerate(zip(grid.ps, grid.origin)):
            if a == 0.0 and (dy is None or b == 0.0):
                p.copy_(o)
                continue
            terms = [(c, d[i]) for c, d in ((a, dx), (b, dy)) if d is not None and c != 0.0]
            (c1, e1), rest = terms[0], terms[1:]
            if p.dtype == e1.dtype:  # float32: in place, no temporaries
                torch.add(o, e1, alpha=c1, out=p.data)
                for c, e in rest:
                    p.data.add_(e, alpha=c)
            else:  # bf16/fp16/fp64: combine in the wider dtype, round once
                v = o.to(torch.promote_types(o.dtype, torch.float32)) + c1 * e1
                for c, e in rest:
                    v = v + c * e
                p.copy_(v.to(p.dtype))
    if grid.loss_fn is not None:
        return grid.loss_fn()
    # one process per point, every batch; sharded: all ranks on this point, the batches split among them
    return evaluate(grid.model, grid.batches, reduce=bool(grid.layouts)).loss


def _block_losses(grid: _Grid, block) -> list[float]:
    """Losses at several grid points in one vectorised pass: vmap over stacked weights
    w0 + a_k·dx + b_k·dy (the float32 combination rounded once to the parameter dtype)."""
    from torch.func import vmap

    from landscape.foundation.loss import functional, nll_sum, total_tokens

    dev = grid.origin[0].device
    x, y, dx, dy = grid.x, grid.y, grid.dx, grid.dy
    a = torch.tensor([float(x[i[0]]) for i in block], dtype=torch.float32, device=dev)
    b = torch.tensor([float(y[i[1]]) if y is not None else 0.0 for i in block], dtype=torch.float32, device=dev)
    stacked = {}
    for j, (n, o) in enumerate(zip(grid.named.keys(), grid.origin)):
        shape = (-1,) + (1,) * o.dim()
        w = o.to(torch.float32)[None] + a.view(shape) * dx[j][None]
        if dy is not None:
            w = w + b.view(shape) * dy[j][None]
        stacked[n] = w.to(o.dtype)
    n_tok = total_tokens(grid.batches)
    acc = torch.zeros(len(block), dtype=torch.float64, device=dev)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")  # SDPA falls back to a loop
        for batch in grid.batches:
            batch = batch.to(dev)
            acc += vmap(lambda wts, batch=batch: nll_sum(functional(grid.model, wts), batch))(stacked).double()
    return [float(v) / n_tok for v in acc.cpu()]


def read_surface(path: str | os.PathLike) -> dict:
    """The arrays and attributes of a surface h5 file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such surface file")
    try:
        with h5py.File(p, "r") as f:
            r = {"x": f["xcoordinates"][()], "y": f["ycoordinates"][()] if "ycoordinates" in f else None,
                 "loss": f["loss"][()], "done": f["done"][()].astype(bool),
                 "attrs": {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}}
    except (OSError, KeyError) as e:
        raise UserError(f"{p}: not a landscape surface file ({e})") from None
    r["loss"] = np.where(r["done"], r["loss"], np.nan)
    return r


def grid_values(r: dict) -> dict:
    """The coordinates and losses of a surface as JSON values (None where a point is not computed yet),
    with the loss at the origin (the grid point nearest 0) and the range."""
    loss = np.asarray(r["loss"], dtype=float)
    x = np.asarray(r["x"], dtype=float)
    y = None if r.get("y") is None else np.asarray(r["y"], dtype=float)
    centre = (int(np.abs(x).argmin()),) + ((int(np.abs(y).argmin()),) if y is not None else ())
    finite = loss[np.isfinite(loss)]
    out = {"x": x.tolist(), "y": None if y is None else y.tolist(),
           "loss": np.where(np.isfinite(loss), loss, None).tolist(),
           "loss_at_origin": float(loss[centre]) if np.isfinite(loss[centre]) else None,
           "loss_min": float(finite.min()) if finite.size else None,
           "loss_max": float(finite.max()) if finite.size else None}
    return out


def surface_metrics(path: str | os.PathLike) -> dict:
    """Flatness metrics of a stored surface, by finite differences on the grid.

    With L_ij the loss at (x_i, y_j) and steps h_x, h_y, over interior points (central differences):
      ∂xL ≈ (L_{i+1,j} − L_{i−1,j}) / 2h_x,   ∂yL likewise,
      ∂xxL ≈ (L_{i+1,j} − 2L_ij + L_{i−1,j}) / h_x²,   ∂yyL likewise;
    each metric is a mean over interior points of a per-point quantity over the D axes (D = 1 or 2):
    - ``average_gradient``       = mean ‖∇L‖:              2-D √((∂xL)² + (∂yL)²),  1-D |∂xL|
    - ``mean_absolute_gradient`` = mean (1/D) Σ_axes |∂L|:  2-D (|∂xL| + |∂yL|)/2,   1-D |∂xL|
    - ``surface_curvature``      = mean |Σ_axes ∂²L|:       2-D |∂xxL + ∂yyL|,       1-D |∂xxL|
    These follow the names of Li et al. 2024's AG, MAG and SC, whose definitions (their appendix
    A.3) we could not read: they are our reconstructions, not the paper's formulas. Plus ``center_curvature`` = ∂xxL (1-D) or ∂xxL + ∂yyL (2-D) at the grid point nearest the origin,
    ``center_loss`` and ``max_increase`` = max L − L(centre). Larger = sharper. Points with a
    non-finite loss are left out of the means. Grids need ≥ 3 points per axis.
    """
    s = read_surface(path)
    L, x, y = s["loss"], s["x"], s["y"]
    if len(x) < 3 or (y is not None and len(y) < 3):
        raise UserError(f"{path}: surface metrics need at least 3 points per axis")
    hx = float(x[1] - x[0])
    i0 = int(np.argmin(np.abs(x)))
    out = {"dims": 1 if y is None else 2, "points": int(L.size), "finite": int(np.isfinite(L).sum())}
    if y is None:
        gx = (L[2:] - L[:-2]) / (2 * hx)
        cxx = (L[2:] - 2 * L[1:-1] + L[:-2]) / hx**2
        out.update(average_gradient=float(np.nanmean(np.abs(gx))), mean_absolute_gradient=float(np.nanmean(np.abs(gx))),
                   surface_curvature=float(np.nanmean(np.abs(cxx))))
        ic = min(max(i0, 1), len(x) - 2)
        out["center_curvature"] = float(cxx[ic - 1])
        out["center_loss"] = float(L[i0])
    else:
        hy = float(y[1] - y[0])
        j0 = int(np.argmin(np.abs(y)))
        c = L[1:-1, 1:-1]
        gx = (L[2:, 1:-1] - L[:-2, 1:-1]) / (2 * hx)
        gy = (L[1:-1, 2:] - L[1:-1, :-2]) / (2 * hy)
        lap = (L[2:, 1:-1] - 2 * c + L[:-2, 1:-1]) / hx**2 + (L[1:-1, 2:] - 2 * c + L[1:-1, :-2]) / hy**2
        with np.errstate(invalid="ignore"):
            out.update(average_gradient=float(np.nanmean(np.sqrt(gx**2 + gy**2))),
                       mean_absolute_gradient=float(np.nanmean((np.abs(gx) + np.abs(gy)) / 2)),
                       surface_curvature=float(np.nanmean(np.abs(lap))))
        ic, jc = min(max(i0, 1), len(x) - 2), min(max(j0, 1), len(y) - 2)
        out["center_curvature"] = float(lap[ic - 1, jc - 1])
        out["center_loss"] = float(L[i0, j0])
    out["max_increase"] = float(np.nanmax(np.where(np.isfinite(L), L, np.nan)) - out["center_loss"])
    return out
