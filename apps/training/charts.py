"""The model page's charts as SVG: learning curve, held-out equity and drawdown, and the
overlaid equity of several versions (the comparison page).

Drawn with matplotlib's object API on the Agg canvas (no ``pyplot``: no global state, safe in
any server thread) and returned as ``data:image/svg+xml`` URIs for ``<img>`` tags: an SVG shown
as an image runs no script, and the page needs no extra request. Text is drawn as paths
(matplotlib's default ``svg.fonttype``), so no font has to exist in the browser.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

DPI = 100
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def _svg_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width_px: int, height_px: int) -> Figure:
    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _clean(curve: Sequence[float]) -> np.ndarray:
    values = np.asarray([float(v) for v in curve if v is not None], dtype=np.float64)
    return values[np.isfinite(values)]


def mean_curve(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """The step-by-step mean of equity curves, over the steps they all have."""
    cleaned = [c for c in (_clean(c) for c in curves) if c.size]
    if not cleaned:
        return np.zeros(0)
    length = min(c.size for c in cleaned)
    return np.mean([c[:length] for c in cleaned], axis=0)


def drawdown(equity: np.ndarray) -> np.ndarray:
    """Fall from the running peak, as a fraction of that peak (0 at a new high)."""
    if equity.size == 0:
        return equity
    peak = np.maximum.accumulate(equity)
    return np.where(peak > 0, (peak - equity) / np.where(peak > 0, peak, 1), 0.0)


def equity_drawdown_svg(
    series: dict[str, Sequence[Sequence[float]]],
    *,
    title: str,
    width_px: int = 860,
    height_px: int = 440,
) -> str:
    """Equity (1.0 = start) over drawdown, one colour per series; each series' episodes are
    drawn faintly and their mean boldly. An empty input gives a labelled blank."""
    figure = _figure(width_px, height_px)
    top, bottom = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2], "hspace": 0.08}
    )
    figure.suptitle(title, fontsize=11)
    drawn = False
    for index, (label, curves) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        cleaned = [c for c in (_clean(c) for c in curves) if c.size]
        if not cleaned:
            continue
        if len(cleaned) > 1:
            for curve in cleaned:
                top.plot(range(curve.size), curve, color=colour, linewidth=0.6, alpha=0.25)
        mean = mean_curve(cleaned)
        episodes = f" (mean of {len(cleaned)})" if len(cleaned) > 1 else ""
        top.plot(range(mean.size), mean, color=colour, linewidth=1.6, label=label + episodes)
        fall = -drawdown(mean)
        bottom.fill_between(range(mean.size), fall, 0, color=colour, alpha=0.2, linewidth=0)
        bottom.plot(range(mean.size), fall, color=colour, linewidth=1.0)
        drawn = True
    if drawn:
        top.axhline(1.0, color="#999999", linewidth=0.8, linestyle="--")
        top.legend(loc="best", fontsize=8)
        bottom.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        top.text(0.5, 0.5, "no held-out equity curve recorded", ha="center", va="center")
        top.set_yticks([])
        bottom.set_yticks([])
    top.set_ylabel("equity (× start)")
    bottom.set_ylabel("drawdown")
    bottom.set_xlabel("step of the held-out episode")
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
    return _svg_uri(figure)


def learning_curve_svg(
    points: Sequence[tuple[int, float]], *, title: str, width_px: int = 860, height_px: int = 300
) -> str:
    """Mean training-episode reward by timestep."""
    figure = _figure(width_px, height_px)
    axes = figure.subplots()
    figure.suptitle(title, fontsize=11)
    finite = [(s, v) for s, v in points if math.isfinite(v)]
    if finite:
        steps, values = zip(*finite, strict=True)
        axes.plot(
            steps, values, color=COLOURS[0], linewidth=1.4, marker="." if len(steps) < 30 else ""
        )
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        axes.text(0.5, 0.5, "no learning curve recorded", ha="center", va="center")
        axes.set_yticks([])
    axes.set_xlabel("timestep")
    axes.set_ylabel("mean episode reward")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    return _svg_uri(figure)
