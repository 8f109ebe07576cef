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
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

import landscape
from landscape import distributed as dist
from landscape import directions as D
from landscape import params as P
from landscape.errors import UserError
from landscape.loss import evaluate


DIRECTION_MODES = ("auto", "held", "regenerated")


def parse_grid(spec: str, name: str = "x") -> np.ndarray:
    """``"MIN:MAX:N"`` → N evenly spaced coordinates (N = 1 means the single point MIN, MIN = MAX)."""
    try:
        lo, hi, n = spec.split(":")
        lo, hi, n = float(lo), float(hi), int(n)
    except (ValueError, AttributeError):
        raise UserError(f"--{name} {spec!r}: expected MIN:MAX:COUNT, e.g. -1:1:51") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise UserError(f"--{name} {spec!r}: bounds must be finite")
    if n < 1 or n > 100_000:
        raise UserError(f"--{name} {spec!r}: COUNT must be between 1 and 100000")
    if n == 1 and lo != hi:
        raise UserError(f"--{name} {spec!r}: one point needs MIN = MAX")
    if n > 1 and not lo < hi:
        raise UserError(f"--{name} {spec!r}: MIN must be below MAX")
    return np.linspace(lo, hi, n)


def _write_h5(path: Path, arrays: dict, attrs: dict, dirs: dict | None = None) -> None:
    """Write a complete h5 file atomically (temp file, fsync, rename). No timestamps: same bytes."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v, track_times=False)
            for k, v in attrs.items():
                f.attrs[k] = v
            for axis, named in (dirs or {}).items():
                for n, t in named.items():
                    f.create_dataset(f"directions/{axis}/{n}", data=t.detach().cpu().float().numpy(),
                                     track_times=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:  # full disk, read-only or missing folder: no half-written file stays behind
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise UserError(f"{path}: cannot write ({getattr(e, 'strerror', None) or str(e).splitlines()[0]})") from None


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
                        "directions); refusing to resume into it — delete it or choose another --out")
    return loss, done


def surface(model, batches, out: str | os.PathLike, x: np.ndarray, y: np.ndarray | None = None,
            norm: str = "filter", ignore: str = "biasbn", seed: int = 0, orthogonal: bool = False,
            to: dict | None = None, to_y: dict | None = None, param_regex: str | None = None,
            save_directions: bool = False, meta: dict | None = None, progress: bool = False,
            max_points: int | None = None, save_every: float = 1.0, loss_fn=None, directions: str = "auto",
            points_per_pass: int = 1) -> dict:
    """Evaluate the loss on the grid and write ``out`` (h5). Resumes from ``out.partial``.

    ``to`` / ``to_y``: named parameters of target checkpoints; the x (y) direction becomes
    w_target − w (a line between two checkpoints, or the plane through base, A and B).
    ``max_points`` stops after that many new points (leaving the partial file), for tests and
    time-boxed runs. Progress is saved at most every ``save_every`` seconds (and when stopping),
    so a kill loses at most that much work. ``loss_fn()`` replaces ``evaluate(model, batches)``
    (closed-form objectives in tests). Returns a summary dict.

    ``directions``: ``"held"`` keeps the normalised directions in memory (float32, two copies of the
    selected weights for a plane; drawn on the CPU, so any device gives the same directions);
    ``"regenerated"`` holds none and rebuilds each parameter's direction tensor by tensor at every
    point (the only extra copy is the origin w₀ — what a 7B model on one GPU needs; on CUDA the draws
    come from the GPU's generator, recorded in the file); ``"auto"`` holds them when they take less
    than half of the free memory of the model's device.

    ``points_per_pass`` K > 1 evaluates K grid points in one vectorised forward (``torch.func.vmap``
    over K stacked weight sets): K copies of the selected weights, worth it for small models on the
    CPU, where per-operator overhead dominates (see the README's performance table). Points are
    grouped in fixed blocks of the grid order, so a resumed run computes the same blocks and
    writes the same bytes; the values agree with K = 1 to float rounding (~1e-7), and K is part of
    the file's configuration.
    """
    out = Path(out)
    named = P.select(model, param_regex)
    ps = list(named.values())
    if directions not in DIRECTION_MODES:
        raise UserError(f"unknown directions mode {directions!r}; choose auto, held or regenerated")
    if not 1 <= int(points_per_pass) <= 4096:
        raise UserError(f"--points-per-pass must be between 1 and 4096, got {points_per_pass}")
    K = int(points_per_pass)
    if K > 1 and loss_fn is not None:
        raise UserError("points_per_pass > 1 needs a model objective (not loss_fn)")
    if K > 1:
        directions = "held"  # the stacked weights are built from whole direction tensors
    if directions == "auto":
        axes = 1 if y is None else 2
        free = P.free_memory(ps[0].device)
        directions = "held" if free is None or axes * 4 * P.numel(ps) <= free // 2 else "regenerated"
    shape = (len(x),) if y is None else (len(x), len(y))
    config = {"seed": seed, "norm": "target" if to is not None else norm, "ignore": ignore if to is None else "none",
              "orthogonal": orthogonal, "params": param_regex or "", "x": x.tolist(),
              "y": None if y is None else y.tolist(), "y_norm": None if y is None else ("target" if to_y is not None else norm),
              **(meta or {})}
    if K > 1:
        config["points_per_pass"] = K  # other blocking, other float rounding: never mixed in one file
    rng = ps[0].device.type if directions == "regenerated" else "cpu"
    if rng != "cpu" and (to is None or (y is not None and to_y is None)):
        config["direction_rng"] = rng  # other random numbers than the CPU's: never mix them in one file
    attrs = {**{k: (json.dumps(v) if isinstance(v, (list, dict)) or v is None else v) for k, v in config.items()},
             "version": landscape.__version__, "dims": len(shape)}
    attrs["config_hash"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    partial = out.with_name(out.name + ".partial")
    if out.exists() and not partial.exists():
        with h5py.File(out, "r") as f:
            if f.attrs.get("config_hash") == attrs["config_hash"]:
                return {"out": str(out), "points": int(np.prod(shape)), "computed": 0, "complete": True}
        raise UserError(f"{out}: exists and was written by another configuration; choose another --out")
    state = dist.broadcast_object(_read_partial(partial, attrs, shape) if dist.is_main() else None)
    loss_grid, done = state if state is not None else (np.full(shape, np.nan), np.zeros(shape, np.uint8))
    arrays = lambda: {"xcoordinates": x, **({"ycoordinates": y} if y is not None else {}),  # noqa: E731
                      "loss": loss_grid, "done": done}
    # Blocks of K consecutive grid points (K = points_per_pass), fixed by the grid alone; a block
    # is saved only whole, so a resumed run meets the same blocks.
    grid = list(np.ndindex(*shape))
    blocks = [blk for blk in (grid[i:i + K] for i in range(0, len(grid), K)) if not all(done[j] for j in blk)]
    if max_points is not None:
        blocks = blocks[:max(1, max_points // K) if max_points else 0]
    # Rounds of `world` blocks: rank r takes the r-th block of each round (on all batches), then
    # every rank learns every result, and rank 0 alone writes. One process: rounds of one block.
    W, R = dist.world(), dist.rank()
    rounds = [blocks[i:i + W] for i in range(0, len(blocks), W)]
    computed = 0
    t0 = last_save = time.perf_counter()
    bar = tqdm(total=sum(len(b) for b in blocks), desc="surface", disable=not progress or not dist.is_main(),
               leave=False)
    with P.perturbed(ps) as origin:
        dx, dy = _directions(named, origin, directions, y is not None, seed, norm, ignore, orthogonal, to, to_y)
        for chunk in rounds:
            mine = chunk[R] if R < len(chunk) else None
            result = None
            if mine is not None and K == 1:
                result = [(mine[0], _point_loss(model, batches, ps, origin, dx, dy, x, y, mine[0], loss_fn))]
            elif mine is not None:
                result = list(zip(mine, _block_losses(model, batches, named, origin, dx, dy, x, y, mine)))
            for got in dist.all_gather_object(result):
                for idx, value in got or []:
                    loss_grid[idx] = value
                    done[idx] = 1
                    computed += 1
            bar.update(sum(len(b) for b in chunk))
            if dist.is_main() and time.perf_counter() - last_save >= save_every:
                _write_h5(partial, arrays(), attrs)  # bounded loss on a kill, no fsync per point
                last_save = time.perf_counter()
    bar.close()
    if computed and not done.all() and dist.is_main():
        _write_h5(partial, arrays(), attrs)
    complete = bool(done.all())
    if complete and dist.is_main():
        dirs = None
        if save_directions:
            lazy = directions == "regenerated"
            dirs = {"x": dx if lazy else dict(zip(named.keys(), dx))}
            if dy is not None:
                dirs["y"] = dy if lazy else dict(zip(named.keys(), dy))
        _write_h5(out, arrays(), attrs, dirs)
        partial.unlink(missing_ok=True)
    dist.barrier()
    return {"out": str(out) if complete else str(partial), "points": int(np.prod(shape)), "computed": computed,
            "complete": complete, "directions": directions, "seconds": round(time.perf_counter() - t0, 3)}


def _directions(named, origin, mode, plane, seed, norm, ignore, orthogonal, to, to_y):
    """(dx, dy): lists of float32 tensors (held) or :class:`directions.Lazy` (regenerated)."""
    if mode == "regenerated":
        names = list(named.keys())
        dx = D.Lazy(names, origin, seed, "x", norm, ignore, target=to)
        dy = None
        if plane:
            dy = D.Lazy(names, origin, seed, "y", norm, ignore, target=to_y, against=dx if orthogonal else None)
        return dx, dy
    dx = D.target_direction(named, to) if to is not None else D.random_direction(named, seed, "x", norm, ignore)
    dy = None
    if plane:
        dy = D.target_direction(named, to_y) if to_y is not None else D.random_direction(named, seed, "y", norm, ignore)
        if orthogonal:
            dy = D.orthogonalize(dy, dx)
    return dx, dy


def _point_loss(model, batches, ps, origin, dx, dy, x, y, idx, loss_fn) -> float:
    """Set w = w0 + a·dx + b·dy (from the saved origin, never by accumulation) and evaluate.
    With regenerated directions, each parameter's tensors are built just before use (skipped at 0)."""
    a = float(x[idx[0]])
    b = float(y[idx[1]]) if y is not None else 0.0
    with torch.no_grad():
        for i, (p, o) in enumerate(zip(ps, origin)):
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
    return loss_fn() if loss_fn is not None else evaluate(model, batches, reduce=False).loss


def _block_losses(model, batches, named, origin, dx, dy, x, y, block) -> list[float]:
    """Losses at several grid points in one vectorised pass: vmap over stacked weights
    w0 + a_k·dx + b_k·dy (the float32 combination rounded once to the parameter dtype)."""
    from torch.func import vmap

    from landscape.loss import functional, nll_sum, total_tokens

    dev = origin[0].device
    a = torch.tensor([float(x[i[0]]) for i in block], dtype=torch.float32, device=dev)
    b = torch.tensor([float(y[i[1]]) if y is not None else 0.0 for i in block], dtype=torch.float32, device=dev)
    stacked = {}
    for j, (n, o) in enumerate(zip(named.keys(), origin)):
        shape = (-1,) + (1,) * o.dim()
        w = o.to(torch.float32)[None] + a.view(shape) * dx[j][None]
        if dy is not None:
            w = w + b.view(shape) * dy[j][None]
        stacked[n] = w.to(o.dtype)
    n_tok = total_tokens(batches)
    acc = torch.zeros(len(block), dtype=torch.float64, device=dev)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")  # SDPA falls back to a loop
        for batch in batches:
            batch = batch.to(dev)
            acc += vmap(lambda wts, batch=batch: nll_sum(functional(model, wts), batch))(stacked).double()
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


def surface_metrics(path: str | os.PathLike) -> dict:
    """Flatness metrics of a stored surface, by finite differences on the grid.

    With L_ij the loss at (x_i, y_j) and steps h_x, h_y, over interior points (central differences):
      ∂xL ≈ (L_{i+1,j} − L_{i−1,j}) / 2h_x,   ∂yL likewise,
      ∂xxL ≈ (L_{i+1,j} − 2L_ij + L_{i−1,j}) / h_x²,   ∂yyL likewise;
    - ``average_gradient``       = mean √((∂xL)² + (∂yL)²)          (mean gradient magnitude)
    - ``mean_absolute_gradient`` = mean (|∂xL| + |∂yL|) / 2
    - ``surface_curvature``      = mean |∂xxL + ∂yyL|                (mean absolute Laplacian)
    plus ``center_curvature`` = ∂xxL (1-D) or ∂xxL + ∂yyL (2-D) at the grid point nearest the origin,
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
