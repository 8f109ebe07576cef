"""Plotly figures → one self-contained HTML file (plotly.js inlined: works offline).

Every user-provided string (file names, titles) is HTML-escaped before it reaches the page.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from landscape.surface import read_surface


def _prepare(loss: np.ndarray, log: bool, clip: float | None) -> np.ndarray:
    z = np.array(loss, dtype=float)
    z[~np.isfinite(z)] = np.nan  # NaN/inf and not-computed points are gaps in the plot
    if clip is not None:
        z = np.where(z > clip, clip, z)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(np.where(z > 0, z, np.nan))
    return z


def _none_for_nan(a: np.ndarray):
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in a] if a.ndim == 2 else \
        [None if not np.isfinite(v) else float(v) for v in a]


def surface_figure(paths: list, log: bool = False, clip: float | None = None, titles: list | None = None):
    """One column per surface file: 2-D files get a 3-D surface over a contour map, 1-D files a curve."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    surfs = [read_surface(p) for p in paths]
    titles = [html.escape(str(t)) for t in (titles or [Path(p).name for p in paths])]
    any2d = any(s["y"] is not None for s in surfs)
    rows = 2 if any2d else 1
    specs = [[{"type": "surface"} if s["y"] is not None else {"type": "xy"} for s in surfs]]
    if any2d:
        specs.append([{"type": "xy"} if s["y"] is not None else None for s in surfs])
    fig = make_subplots(rows=rows, cols=len(surfs), specs=specs, subplot_titles=titles,
                        vertical_spacing=0.08)
    zlabel = "log10 loss" if log else "loss"
    for c, s in enumerate(surfs, 1):
        z = _prepare(s["loss"], log, clip)
        if s["y"] is None:
            fig.add_trace(go.Scatter(x=s["x"].tolist(), y=_none_for_nan(z), mode="lines+markers",
                                     connectgaps=False, name=titles[c - 1]), row=1, col=c)
            fig.update_xaxes(title_text="x", row=1, col=c)
            fig.update_yaxes(title_text=zlabel, row=1, col=c)
        else:
            zt = _none_for_nan(z.T)  # plotly: z[row = y][col = x]
            fig.add_trace(go.Surface(x=s["x"].tolist(), y=s["y"].tolist(), z=zt, colorscale="Viridis",
                                     showscale=False, name=titles[c - 1]), row=1, col=c)
            fig.add_trace(go.Contour(x=s["x"].tolist(), y=s["y"].tolist(), z=zt, colorscale="Viridis",
                                     showscale=c == len(surfs), ncontours=30, connectgaps=False,
                                     name=titles[c - 1]), row=2, col=c)
    fig.update_layout(height=900 if any2d else 450, width=max(520 * len(surfs), 700),
                      title_text=f"loss surface ({zlabel}{', clipped at %g' % clip if clip else ''})")
    return fig


def write_html(fig, out: str | os.PathLike, title: str = "landscape") -> Path:
    """One self-contained page (plotly.js inline), written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = fig.to_html(full_html=False, include_plotlyjs=True, div_id="landscape-plot")
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body>\n<h2>{html.escape(title)}</h2>\n{body}\n</body></html>\n")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def plot_surfaces(paths: list, out: str | os.PathLike, log: bool = False, clip: float | None = None) -> Path:
    """`landscape plot`: surfaces side by side in one offline HTML page."""
    return write_html(surface_figure(paths, log=log, clip=clip), out,
                      title="loss surfaces: " + ", ".join(Path(p).name for p in paths))
