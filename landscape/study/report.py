"""Plotly figures → one self-contained HTML file (plotly.js inlined: works offline).

Every user-provided string (file names, titles) is HTML-escaped before it reaches the page.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import numpy as np

from landscape.foundation.io import write_text
from landscape.measures.surface import read_surface


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


def _short(path) -> str:
    """A checkpoint's or data file's name as a reader knows it: its last two path parts."""
    return "/".join(Path(str(path)).parts[-2:]) if path else "?"


# a grid of panels: each panel's height and the gap between rows in pixels (room for the x-axis title
# and the next row's subplot title), and plotly's default top/bottom margins around the plot area
PANEL_PX, ROW_GAP_PX, MARGIN_PX = 270, 90, 180


def _grid(nrows: int, panel_px: int = PANEL_PX) -> dict:
    """The figure height and ``vertical_spacing`` of ``nrows`` rows of panels: plotly's spacing is a
    fraction of the plot area, so a fixed fraction opens a gap that grows with the rows (0.12 of a
    6-row figure was 250 px between rows); this keeps it :data:`ROW_GAP_PX`."""
    area = nrows * panel_px + (nrows - 1) * ROW_GAP_PX
    return {"height": area + MARGIN_PX, "vertical_spacing": ROW_GAP_PX / area if nrows > 1 else 0.0}


def surface_labels(s: dict, log: bool = False) -> dict:
    """What a surface's axes are, from its file: a random filter-normalised direction (α, β) or the
    straight line to another checkpoint (0 = this one, 1 = that one); the loss; checkpoint and data."""
    a = s["attrs"]
    here = _short(a.get("checkpoint"))

    def axis(norm, target, greek, d):
        if norm == "target":
            return f"0 = {here} → 1 = {_short(a.get(target)) if a.get(target) else 'the --to checkpoint'}"
        return f"{greek} along {d} (random, {norm}-normalised)" if norm != "none" else f"{greek} along {d} (random)"

    return {"x": axis(a.get("norm"), "to_checkpoint", "α", "d₁"),
            "y": None if s["y"] is None else axis(a.get("y_norm"), "to_y_checkpoint", "β", "d₂"),
            "z": "log₁₀ loss" if log else "loss (nats/token)",
            "title": f"{here} on {_short(a.get('data'))}"}


def surface_figure(paths: list, log: bool = False, clip: float | None = None, titles: list | None = None):
    """One column per surface file: 2-D files get a 3-D surface over a contour map, 1-D files a curve;
    axes say what they are (α along d₁ or 0 = base → 1 = tuned; loss), each panel names its checkpoint
    and data."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    surfs = [read_surface(p) for p in paths]
    labels = [surface_labels(s, log) for s in surfs]
    titles = [html.escape(str(t)) for t in (titles or [lab["title"] for lab in labels])]
    any2d = any(s["y"] is not None for s in surfs)
    rows = 2 if any2d else 1
    specs = [[{"type": "surface"} if s["y"] is not None else {"type": "xy"} for s in surfs]]
    if any2d:
        specs.append([{"type": "xy"} if s["y"] is not None else None for s in surfs])
    fig = make_subplots(rows=rows, cols=len(surfs), specs=specs, subplot_titles=titles,
                        vertical_spacing=0.08)
    zlabel = labels[0]["z"]
    scenes = {}
    for c, (s, lab) in enumerate(zip(surfs, labels), 1):
        z = _prepare(s["loss"], log, clip)
        xl, yl = html.escape(lab["x"]), html.escape(lab["y"] or "")
        if s["y"] is None:
            fig.add_trace(go.Scatter(x=s["x"].tolist(), y=_none_for_nan(z), mode="lines+markers",
                                     connectgaps=False, name=titles[c - 1]), row=1, col=c)
            fig.update_xaxes(title_text=xl, row=1, col=c)
            fig.update_yaxes(title_text=zlabel, row=1, col=c)
        else:
            zt = _none_for_nan(z.T)  # plotly: z[row = y][col = x]
            fig.add_trace(go.Surface(x=s["x"].tolist(), y=s["y"].tolist(), z=zt, colorscale="Viridis",
                                     showscale=False, name=titles[c - 1]), row=1, col=c)
            bar = {"title": {"text": zlabel, "side": "right"}, "len": 0.45, "y": 0.22,
                   "x": c / len(surfs) - 0.02 if len(surfs) > 1 else 1.02}
            fig.add_trace(go.Contour(x=s["x"].tolist(), y=s["y"].tolist(), z=zt, colorscale="Viridis",
                                     showscale=True, colorbar=bar, ncontours=30, connectgaps=False,
                                     name=titles[c - 1]), row=2, col=c)
            fig.update_xaxes(title_text=xl, row=2, col=c)
            fig.update_yaxes(title_text=yl, row=2, col=c)
            n = sum(1 for t in surfs[:c] if t["y"] is not None)
            scenes["scene" if n == 1 else f"scene{n}"] = {"xaxis_title": "α" if "α" in lab["x"] else "t (x)",
                                                         "yaxis_title": "β" if "β" in (lab["y"] or "") else "t (y)",
                                                         "zaxis_title": "log₁₀ loss" if log else "loss"}
    fig.update_layout(height=900 if any2d else 450, width=max(560 * len(surfs), 700),
                      title_text=f"loss surface ({zlabel}{', clipped at %g' % clip if clip else ''})", **scenes)
    return fig


def write_html(fig, out: str | os.PathLike, title: str = "landscape") -> Path:
    """One self-contained page (plotly.js inline), written atomically."""
    return _write_page(out, title, [fig.to_html(full_html=False, include_plotlyjs=True, div_id="landscape-plot")])


def _write_page(out: str | os.PathLike, title: str, body: list[str]) -> Path:
    """A page of HTML pieces under the escaped ``title``, written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body>\n<h2>{html.escape(title)}</h2>\n" + "\n".join(body) + "\n</body></html>\n")
    return write_text(out, page)


def plot_surfaces(paths: list, out: str | os.PathLike, log: bool = False, clip: float | None = None) -> Path:
    """`landscape plot`: surfaces side by side in one offline HTML page."""
    return write_html(surface_figure(paths, log=log, clip=clip), out,
                      title="loss surfaces: " + ", ".join(Path(p).name for p in paths))


TRAJECTORY_METRICS = ("loss", "lambda_max", "delta_norm", "kappa_base", "quad_pred", "general_loss_increase",
                      "critical_sharpness", "kl_base_tuned", "forgetting")


LOG_AXES = {"lambda_max", "critical_sharpness"}  # spans decades along a run


def _run_label(path) -> str:
    p = Path(path)
    return p.parent.name if p.name == "trajectory.json" else p.stem


def trajectory_figure(paths: list):
    """One panel per measured metric, metric vs optimizer step, one line per run (trajectory JSONs of
    :class:`landscape.training.callback.LandscapeCallback`)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from landscape.training.callback import read_trajectory

    runs = [(html.escape(_run_label(p)), read_trajectory(p)["records"]) for p in paths]
    present = [m for m in TRAJECTORY_METRICS if any(m in r for _, recs in runs for r in recs)]
    if not present:
        from landscape.foundation.errors import UserError

        raise UserError(f"{paths[0]}: the trajectory holds no metric to plot")
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    grid = _grid(nrows)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=present, vertical_spacing=grid["vertical_spacing"])
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
    last = max((x["step"] for _, recs in runs for x in recs), default=1)
    dtick = max(1, math.ceil(last / 8))  # whole optimizer steps (plotly's auto ticks fall at 2.5)
    for k, m in enumerate(present):
        r, c = k // cols + 1, k % cols + 1
        for j, (label, recs) in enumerate(runs):
            pts = [(x["step"], x[m]) for x in recs if isinstance(x.get(m), (int, float))]
            fig.add_trace(go.Scatter(x=[a for a, _ in pts], y=[b for _, b in pts], mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=k == 0,
                                     line={"color": palette[j % len(palette)]}), row=r, col=c)
        fig.update_xaxes(title_text="optimizer step", tick0=0, dtick=dtick, row=r, col=c)
        fig.update_yaxes(title_text=m, row=r, col=c)
        if m in LOG_AXES:
            fig.update_yaxes(type="log", row=r, col=c)
    fig.update_layout(height=grid["height"], width=max(420 * cols, 700), title_text="measured while training")
    return fig


def trajectories_page(trade: dict, paths: list, out: str | os.PathLike, title: str) -> Path:
    """A study's trajectories: every probe as a (learned, forgotten) point, linked along its run, with
    each family's frontier and the matched comparisons; below, every metric against the step."""
    return _write_page(out, title, [
        tradeoff_figure(trade).to_html(full_html=False, include_plotlyjs=True, div_id="tradeoff"), _pair_list(trade),
        trajectory_figure(paths).to_html(full_html=False, include_plotlyjs=False, div_id="trajectories")])


def plot_trajectories(paths: list, out: str | os.PathLike) -> Path:
    """`landscape plot RUN/trajectory.json ...`: metric-vs-step curves of several runs, overlaid."""
    return write_html(trajectory_figure(paths), out,
                      title="trajectories: " + ", ".join(_run_label(p) for p in paths))


# --------------------------------------------------------------------------------------------
# The correlation report: one page, several figures, plotly.js inlined once.

def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not np.isfinite(v):
            return "–"
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    # a wide table (many metrics and categories) scrolls inside the page instead of overflowing it
    return f"<div class='scroll'><table class='{cls}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>"


def _ci(c: dict) -> str:
    lo, hi = c.get("ci", [None, None])
    return f"[{_fmt(lo, 2)}, {_fmt(hi, 2)}]" if lo is not None else "–"


def _where(result: dict, m: str) -> str:
    """"kappa_base @ base, eval.jsonl": the metric with where and on what data it was measured."""
    i = (result.get("metric_info") or {}).get(m)
    return f"{m} @ {i['where']}, {i['data_label']}" if i else m


def scatter_figure(result: dict):
    """One panel per metric: metric (x) against average forgetting (y), coloured by optimizer."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = result["metrics"]
    cols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    grid = _grid(nrows)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[html.escape(_where(result, m)) for m in metrics],
                        horizontal_spacing=0.08, vertical_spacing=grid["vertical_spacing"])
    rows = result["checkpoints"]
    groups = sorted({str(r.get("optimizer") or "?") for r in rows})
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    for i, m in enumerate(metrics):
        r_, c_ = i // cols + 1, i % cols + 1
        for gi, g in enumerate(groups):
            sel = [r for r in rows if str(r.get("optimizer") or "?") == g]
            xs = [r["flatness"].get(m) for r in sel]
            ys = [r["forgetting"]["average"]["delta"] if r["forgetting"]["average"] else None for r in sel]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=html.escape(g), legendgroup=g,
                                     showlegend=i == 0, marker=dict(size=10, color=palette[gi % len(palette)]),
                                     text=[html.escape(r["label"]) for r in sel],
                                     hovertemplate="%{text}<br>%{x:.4g}, forgetting %{y:.4f}<extra></extra>"),
                          row=r_, col=c_)
        vals = [r["flatness"].get(m) for r in rows]
        vals = [v for v in vals if isinstance(v, (int, float)) and np.isfinite(v)]
        wide = bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 100  # spans decades: log axis
        fig.update_xaxes(title_text=html.escape(m) + (" (log)" if wide else ""), type="log" if wide else None,
                         row=r_, col=c_)
        fig.update_yaxes(title_text="forgetting (avg Δacc)" if c_ == 1 else None, row=r_, col=c_)
    # long "metric @ where, data" titles: a smaller font, so that neighbours do not run into each other
    fig.update_annotations(font_size=12)
    fig.update_layout(height=grid["height"], width=1150, title_text="flatness vs forgetting")
    return fig


PREDICTED_PANELS = (("quad_pred", "general_loss_increase", "F̂ = gᵀΔw + ½ΔwᵀHΔw (base)", "measured F (general loss)"),
                    ("bound", "general_loss_increase", "bound gᵀΔw + ½λ_max‖Δw‖²", "measured F (general loss)"),
                    ("general_loss_increase", None, "measured F (general loss)", "forgetting (avg Δacc)"))


def predicted_figure(result: dict):
    """Predicted against measured forgetting: F̂ and the bound against the measured increase of the
    general loss (with the line y = x), and that increase against the accuracy forgetting."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [p for p in PREDICTED_PANELS if p[0] in result["metrics"] and (p[1] is None or p[1] in result["metrics"])]
    if not panels:
        return None
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[html.escape(f"{a} vs {b}") for _, _, a, b in panels])
    rows = result["checkpoints"]
    groups = sorted({str(r.get("optimizer") or "?") for r in rows})
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    for i, (xm, ym, xt, yt) in enumerate(panels, 1):
        for gi, g in enumerate(groups):
            sel = [r for r in rows if str(r.get("optimizer") or "?") == g]
            xs = [r["flatness"].get(xm) for r in sel]
            ys = [r["flatness"].get(ym) if ym else (r["forgetting"]["average"] or {}).get("delta") for r in sel]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=html.escape(g), legendgroup=g, showlegend=i == 1,
                                     marker=dict(size=10, color=palette[gi % len(palette)]),
                                     text=[html.escape(r["label"]) for r in sel],
                                     hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>"), row=1, col=i)
        if ym:  # y = x: where a perfect prediction would lie
            vals = [v for r in rows for v in (r["flatness"].get(xm), r["flatness"].get(ym))
                    if isinstance(v, (int, float)) and np.isfinite(v)]
            if vals:
                fig.add_trace(go.Scatter(x=[min(vals), max(vals)], y=[min(vals), max(vals)], mode="lines",
                                         line=dict(dash="dot", color="#888"), name="y = x", showlegend=i == 1),
                              row=1, col=i)
        fig.update_xaxes(title_text=html.escape(xt), row=1, col=i)
        fig.update_yaxes(title_text=html.escape(yt), row=1, col=i)
    fig.update_layout(height=420, width=1150, title_text="predicted vs measured forgetting")
    return fig


def surfaces_grid_figure(paths: list, titles: list, cols: int = 4):
    """Many surfaces at once: 1-D curves overlaid in one panel; 2-D surfaces as a grid of contour maps
    (one colour scale, so equal colours are equal losses). `landscape plot` gives the 3-D views."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    surfs = [read_surface(p) for p in paths]
    titles = [html.escape(str(t)) for t in titles]
    if all(s["y"] is None for s in surfs):
        fig = go.Figure()
        for s, t in zip(surfs, titles):
            fig.add_trace(go.Scatter(x=s["x"].tolist(), y=_none_for_nan(_prepare(s["loss"], False, None)),
                                     mode="lines+markers", name=t))
        fig.update_layout(height=480, width=1150, xaxis_title="distance along the filter-normalised direction",
                          yaxis_title="loss", yaxis_type="log", title_text="1-D loss curves (log scale)")
        return fig
    two = [(s, t) for s, t in zip(surfs, titles) if s["y"] is not None]
    rows = math.ceil(len(two) / cols)
    grid = _grid(rows, panel_px=230)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[t for _, t in two], horizontal_spacing=0.05,
                        vertical_spacing=grid["vertical_spacing"])
    zs = [np.log10(np.where(_prepare(s["loss"], False, None) > 0, _prepare(s["loss"], False, None), np.nan))
          for s, _ in two]
    lo = float(np.nanmin([np.nanmin(z) for z in zs]))
    hi = float(np.nanmax([np.nanmax(z) for z in zs]))
    for i, ((s, t), z) in enumerate(zip(two, zs)):
        fig.add_trace(go.Contour(x=s["x"].tolist(), y=s["y"].tolist(), z=_none_for_nan(z.T), zmin=lo, zmax=hi,
                                 colorscale="Viridis", showscale=i == 0, ncontours=25, name=t,
                                 colorbar=dict(title="log10 loss")), row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(height=grid["height"], width=1150, title_text="2-D loss surfaces (log10 loss, shared scale)")
    return fig


def spectra_figure(result: dict):
    """Top Hessian eigenvalues of every checkpoint (base first)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    entries = [("base", result.get("base_flatness", {}))] + [(r["label"], r["flatness"]) for r in result["checkpoints"]]
    for label, fl in entries:
        ev = fl.get("eigenvalues") or []
        if ev:
            fig.add_trace(go.Scatter(x=list(range(1, len(ev) + 1)), y=ev, mode="lines+markers",
                                     name=html.escape(label)))
    fig.update_layout(height=420, width=1150, title_text="top Hessian eigenvalues (Lanczos)",
                      xaxis_title="k", yaxis_title="λ_k", yaxis_type="log")
    return fig


CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse;
margin:8px 0 24px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#f3f3f3}td:first-child{text-align:left}.note{color:#555;font-size:13px}
.scroll{overflow-x:auto;max-width:100%}"""


def _ranking_tables(result: dict) -> list[str]:
    """The ranking against average forgetting (with where/data and partial correlations) and the
    ranking per forgetting target, as HTML."""
    targets, info, covs = result["targets"], result.get("metric_info") or {}, result.get("covariates") or []
    rank_rows = [[html.escape(r["metric"]), html.escape(info.get(r["metric"], {}).get("where", "tuned")),
                  html.escape(str(info.get(r["metric"], {}).get("data_label", "?"))), _fmt(r["spearman"]),
                  _ci(result["correlations"][r["metric"]]["average"]["spearman"]), _fmt(r["p"])]
                 + ([_fmt(r.get("partial_spearman")), _ci({"ci": r.get("partial_ci") or [None, None]}),
                     _fmt(r.get("partial_pearson"))] if covs else [])
                 + [_fmt(r["kendall"]), _fmt(r["pearson"]), _fmt(r["n"])] for r in result["ranking"]]
    rank_head = ["metric", "where", "data", "Spearman ρ", "95% CI", "p"] + (
        [f"partial ρ | {', '.join(covs)}", "95% CI", "partial r"] if covs else []) + ["Kendall τ", "Pearson r", "n"]
    cat_rows = [[html.escape(r["metric"])] + [f"{_fmt(result['correlations'][r['metric']][t]['spearman']['r'])} "
                                              f"{_ci(result['correlations'][r['metric']][t]['spearman'])}"
                                              for t in targets] for r in result["ranking"]]
    best = [f"{html.escape(t)}: <b>{html.escape(rk[0]['metric'])}</b>" for t, rk in (result.get("rankings") or {}).items()
            if rk and rk[0]["spearman"] is not None]
    small = sorted({r["n"] for r in result["ranking"] if isinstance(r["n"], int) and r["n"] < 10})
    warn = (f"<p class='note'><b>n = {', '.join(map(str, small))}</b>: p-values are exact (the permutation "
            "distribution), but a correlation over so few checkpoints can be large by chance; intervals are wide, "
            "or absent below 6.</p>") if small else ""
    return ["<h2>Which metric tracks forgetting (ranked by |Spearman ρ| vs average forgetting)</h2>",
            "<p class='note'>where: the weights a metric is measured at (tuned, base, or base→tuned along the update "
            "Δw); data: what it is measured on. Partial correlations control for the covariates (residuals of "
            "regressions on them; ranks for Spearman).</p>", warn,
            _table(rank_head, rank_rows, "ranking"),
            "<h2>Ranking per forgetting target (Spearman ρ [95% CI])</h2>",
            "<p class='note'>average: the mean of the category means (Li et al. 2024's protocol)"
            + ("; suite_mean: the plain mean over the suites (Biderman et al. 2024's)" if "suite_mean" in targets else "")
            + "; category:X: that category's mean.</p>",
            f"<p class='note'>best per target: {' · '.join(best) or '–'}</p>",
            _table(["metric", *targets], cat_rows, "per-target")]


def tradeoff_figure(trade: dict):
    """Forgetting against task learned, one colour per family: its checkpoints and its frontier."""
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
    for j, (fam, f) in enumerate(sorted(trade["families"].items())):
        color, name = palette[j % len(palette)], html.escape(fam)
        pts = f["points"]
        fig.add_trace(go.Scatter(x=[p["task"] for p in pts], y=[p["forgetting"] for p in pts], mode="markers",
                                 name=name, legendgroup=name, marker={"color": color, "size": 9},
                                 text=[html.escape(str(p["label"])) for p in pts], hoverinfo="text+x+y"))
        fig.add_trace(go.Scatter(x=[x for x, _ in f["frontier"]], y=[y for _, y in f["frontier"]], mode="lines",
                                 name=f"{name} frontier", legendgroup=name, line={"color": color}, showlegend=False))
        runs: dict = {}  # probes of one run (points with a ``run``), linked in step order
        for p in pts:
            if p.get("run") is not None:
                runs.setdefault(p["run"], []).append(p)
        for run, rp in runs.items():
            rp = sorted(rp, key=lambda p: p.get("step") or 0)
            fig.add_trace(go.Scatter(x=[p["task"] for p in rp], y=[p["forgetting"] for p in rp], mode="lines",
                                     name=html.escape(str(run)), legendgroup=name, showlegend=False,
                                     line={"color": color, "width": 1, "dash": "dot"}, hoverinfo="skip"))
    fig.update_layout(height=480, width=760, xaxis_title=html.escape(trade["task"]) + " (higher = learned more)",
                      yaxis_title="forgetting (average Δ)")
    return fig


def _pair_list(trade: dict) -> str:
    """The matched comparisons' lines as an HTML list ('' without any)."""
    lines = "".join(f"<li>{html.escape(c['line'])}</li>" for c in trade.get("pairs", []))
    return f"<ul>{lines}</ul>" if lines else ""


def _tradeoff_section(result: dict) -> list[str]:
    """The learning–forgetting trade-off: the frontier plot and one line per family pair."""
    trade = result.get("tradeoff") or {}
    if not trade.get("families"):
        return []
    return ["<h2>Forgetting at matched learning</h2>",
            "<p class='note'>frontier = the family's Pareto points (learned as much, forgot less) joined by lines; "
            "differences on the overlap of two frontiers only; + = the first family forgets more</p>",
            _pair_list(trade),
            tradeoff_figure(trade).to_html(full_html=False, include_plotlyjs=False, div_id="tradeoff")]


def correlation_report(result: dict, out: str | os.PathLike) -> Path:
    """The batch report: ranking, scatter plots, every correlation, every checkpoint, surfaces, spectra."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metrics, targets = result["metrics"], result["targets"]
    corr_rows = []
    for m in metrics:
        for t in targets:
            c = result["correlations"][m][t]
            corr_rows.append([html.escape(m), html.escape(t), _fmt(c["n"])] + [
                f"{_fmt(c[k]['r'])} {_ci(c[k])} p={_fmt(c[k]['p'], 2)}" for k in ("pearson", "spearman", "kendall")])
    cats = [t.split(":", 1)[1] for t in targets if t.startswith("category:")]
    ck_rows = []
    for r in result["checkpoints"]:
        fg = r["forgetting"]
        ck_rows.append([html.escape(r["label"])] + [_fmt(r.get(k)) for k in ("optimizer", "rho", "lr", "steps", "epochs",
                                                                             "dataset")]
                       + [_fmt(r["flatness"].get(m)) for m in metrics]
                       + [_fmt(fg["average"]["delta"] if fg["average"] else None)]
                       + [_fmt(fg["categories"].get(c, {}).get("delta")) for c in cats])
    figs = [("Flatness against forgetting", scatter_figure(result))] if metrics else []  # a sweep measures none
    pf = predicted_figure(result)
    if pf is not None:
        figs.append(("Predicted vs measured forgetting (general loss at the base along Δw)", pf))
    surf = [(r["label"], r["flatness"].get("surface_file")) for r in result["checkpoints"]]
    base_surf = result.get("base_flatness", {}).get("surface_file")
    surf = ([("base", base_surf)] if base_surf else []) + [s for s in surf if s[1]]
    if surf:
        figs.append(("Loss surfaces (filter-normalised random directions, same seed)",
                     surfaces_grid_figure([p for _, p in surf], [lab for lab, _ in surf])))
    if any(r["flatness"].get("eigenvalues") for r in result["checkpoints"]):
        figs.append(("Hessian spectra", spectra_figure(result)))
    parts = []
    for i, (h, fig) in enumerate(figs):
        parts.append(f"<h2>{html.escape(h)}</h2>" + fig.to_html(full_html=False, include_plotlyjs=i == 0,
                                                                 div_id=f"fig{i}"))
    title = html.escape(result["title"])
    page = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{title}</title>",
        f"<style>{CSS}</style></head><body>", f"<h1>{title}</h1>",
        f"<p class='note'>base <span title='{html.escape(str(result['base']))}'>{html.escape(_short(result['base']))}"
        f"</span> · {len(result['checkpoints'])} checkpoints · "
        f"forgetting Δ &gt; 0 = forgotten (base − tuned accuracy) · bootstrap 95% intervals over "
        f"{html.escape(result.get('bootstrap_over') or 'checkpoints')} · landscape "
        f"{html.escape(result['version'])}</p>",
        *_ranking_tables(result),
        *parts[:2 if pf is not None else 1],
        *_tradeoff_section(result),
        "<h2>Checkpoints</h2>",
        _table(["label", "optimizer", "ρ", "lr", "steps", "epochs", "dataset", *metrics, "forgetting avg",
                *[f"forgetting {c}" for c in cats]], ck_rows, "checkpoints"),
        "<h2>All correlations</h2>",
        _table(["metric", "forgetting", "n", "Pearson r [CI] p", "Spearman ρ [CI] p", "Kendall τ [CI] p"],
               corr_rows, "correlations"),
        *parts[2 if pf is not None else 1:], "</body></html>",
    ]
    return write_text(out, "\n".join(page))
