"""Figures for papers: the loss surfaces and training trajectories as PNG, PDF or SVG (matplotlib).

matplotlib rather than plotly + kaleido: kaleido 1.x drives a Chrome it would download (nothing is
downloaded here, and CI's Chromium is not always there), while matplotlib writes vector PDF/SVG in
process, offline, the same bytes on every machine. Figures are built on ``matplotlib.figure.Figure``
(no pyplot, no global backend change in a user's notebook). Labels are the interactive plots'
(:func:`landscape.study.report.surface_labels`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from landscape.foundation.io import atomic_write
from landscape.measures.surface import read_surface
from landscape.study.report import (LOG_AXES, TRAJECTORY_METRICS, _prepare, _run_label, surface_labels)

FORMATS = ("png", "pdf", "svg")


def _save(fig, out: Path, fmt: str) -> Path:
    """Text stays text (searchable, editable in a vector editor): SVG text elements, PDF TrueType fonts."""
    import matplotlib

    with atomic_write(out) as tmp, matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        fig.savefig(tmp, format=fmt, dpi=200 if fmt == "png" else None, bbox_inches="tight")
    return out


def save_surfaces(paths: list, out: str | os.PathLike, fmt: str, log: bool = False, clip: float | None = None) -> Path:
    """One column per surface file: a 1-D file a curve; a 2-D file a 3-D surface above a filled contour
    map with its colorbar. Axis labels say what the directions are; each column names checkpoint and data."""
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d import Axes3D  # noqa: F401 (registers the 3-D projection)

    surfs = [read_surface(p) for p in paths]
    any2d = any(s["y"] is not None for s in surfs)
    fig = Figure(figsize=(6.0 * len(surfs), 9.0 if any2d else 4.0))
    fig.subplots_adjust(wspace=0.45, hspace=0.25)
    rows = 2 if any2d else 1
    for c, s in enumerate(surfs):
        lab = surface_labels(s, log)
        z = _prepare(s["loss"], log, clip)
        if s["y"] is None:
            ax = fig.add_subplot(rows, len(surfs), c + 1)
            ax.plot(s["x"], z, marker="o", markersize=3)
            ax.set(xlabel=lab["x"], ylabel=lab["z"], title=lab["title"])
            ax.grid(alpha=0.3)
            continue
        X, Y = np.meshgrid(s["x"], s["y"], indexing="ij")
        ax3 = fig.add_subplot(rows, len(surfs), c + 1, projection="3d")
        ax3.plot_surface(X, Y, np.ma.masked_invalid(z), cmap="viridis", linewidth=0, antialiased=True)
        ax3.set(xlabel="α" if "α" in lab["x"] else "t (x)", ylabel="β" if "β" in lab["y"] else "t (y)",
                zlabel=lab["z"], title=lab["title"])
        ax3.set_box_aspect(None, zoom=0.85)  # room for the z label inside the panel
        ax = fig.add_subplot(rows, len(surfs), len(surfs) + c + 1)
        filled = ax.contourf(X, Y, np.ma.masked_invalid(z), levels=30, cmap="viridis")
        ax.contour(X, Y, np.ma.masked_invalid(z), levels=10, colors="k", linewidths=0.4, alpha=0.5)
        fig.colorbar(filled, ax=ax, label=lab["z"])
        ax.set(xlabel=lab["x"], ylabel=lab["y"])
    return _save(fig, Path(out), fmt)


def save_trajectories(paths: list, out: str | os.PathLike, fmt: str) -> Path:
    """Each measured metric against the optimizer step, one line per run; integer steps on the axis."""
    import math

    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from landscape.foundation.errors import UserError
    from landscape.training.callback import read_trajectory

    runs = [(_run_label(p), read_trajectory(p)["records"]) for p in paths]
    present = [m for m in TRAJECTORY_METRICS if any(m in r for _, recs in runs for r in recs)]
    if not present:
        raise UserError(f"{paths[0]}: the trajectory holds no metric to plot")
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * nrows), layout="constrained")
    for k, m in enumerate(present):
        ax = fig.add_subplot(nrows, cols, k + 1)
        for label, recs in runs:
            pts = [(x["step"], x[m]) for x in recs if isinstance(x.get(m), (int, float))]
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", markersize=3, label=label)
        ax.set(xlabel="optimizer step", ylabel=m, title=m)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if m in LOG_AXES:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize="small")
    fig.suptitle("measured while training")
    return _save(fig, Path(out), fmt)
