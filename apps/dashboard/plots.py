"""Equity curve and drawdown of an episode as a PNG, drawn with matplotlib.

Uses matplotlib's object API with the Agg canvas directly (no ``pyplot``): no global figure
state, no GUI backend, safe in any thread of a web server.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from apps.dashboard.selectors import drawdown_curve

PNG_DPI = 100


def equity_drawdown_png(
    equity: Sequence[float], *, title: str, width_px: int = 900, height_px: int = 520
) -> bytes:
    """Two stacked panels sharing the step axis: equity (1.0 = starting value) and drawdown
    from the running peak (percent, drawn downwards). An empty curve gives a labelled blank."""
    values = [float(v) for v in equity if v is not None and math.isfinite(float(v))]
    figure = Figure(figsize=(width_px / PNG_DPI, height_px / PNG_DPI), dpi=PNG_DPI)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2], "hspace": 0.08}
    )
    figure.suptitle(title, fontsize=11)
    if not values:
        top.text(0.5, 0.5, "no equity curve recorded", ha="center", va="center")
        top.set_yticks([])
        bottom.set_yticks([])
    else:
        steps = range(len(values))
        top.plot(steps, values, color="#1f77b4", linewidth=1.2)
        top.axhline(1.0, color="#999999", linewidth=0.8, linestyle="--")
        drawdown = [-d for d in drawdown_curve(values)]
        bottom.fill_between(steps, drawdown, 0, color="#d62728", alpha=0.35, linewidth=0)
        bottom.plot(steps, drawdown, color="#d62728", linewidth=1.0)
        bottom.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_ylabel("equity (x start)")
    bottom.set_ylabel("drawdown")
    bottom.set_xlabel("step")
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()
