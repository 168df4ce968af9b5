"""The figures of `resnet-repro report`, drawn with matplotlib.

Figures are built with matplotlib's object API (`Figure`, saved through the Agg canvas): no pyplot,
so no GUI backend, no display and no global figure state, also on a headless cluster node. Each
function takes plain numbers and labels (report.py reads the files) and returns the Figure, so a
test can look at what was drawn; `save` writes it as PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# (epochs, values) of one line
Series = tuple[Sequence[float], Sequence[float]]

FAILED_GREY = "#afafaf"  # grid cells and bars of failed jobs, and grid points without a job
CMAP = matplotlib.colormaps["viridis"]  # perceptually uniform, readable in grey scale


def save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def _norm(values: Sequence[float | None]) -> Normalize:
    numbers = [v for v in values if v is not None]
    lo, hi = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
    return Normalize(lo, hi) if hi > lo else Normalize(lo - 1, hi + 1)  # one value: mid-scale


def heat_map(
    values: list[list[float | None]],
    texts: list[list[str]],
    row_labels: list[str],
    col_labels: list[str],
    *,
    row_key: str,
    col_key: str,
    title: str,
) -> Figure:
    """values[i][j] colours cell (row i, column j) on viridis; None (a failed job, no job) is grey.
    texts[i][j] is written in the cell."""
    norm = _norm([v for row in values for v in row])
    data = np.ma.masked_invalid(np.array(values, dtype=float))  # None -> nan -> masked -> grey
    fig = Figure(figsize=(2.5 + 1.4 * len(col_labels), 1.6 + 0.8 * len(row_labels)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap=CMAP.with_extremes(bad=FAILED_GREY), norm=norm, aspect="auto")
    for i, row in enumerate(texts):
        for j, text in enumerate(row):
            value = values[i][j]
            dark = value is not None and norm(value) < 0.6  # white text on viridis' dark end
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(col_key)
    ax.set_ylabel(row_key)
    ax.set_title(title, fontsize="medium")
    fig.colorbar(image, ax=ax, label="top-1 (%)")
    return fig


def bars(labels: list[str], values: list[float | None], texts: list[str], *, title: str) -> Figure:
    """Horizontal bars, top to bottom in the given order; None (a failed job) is a grey stub."""
    norm = _norm(values)
    fig = Figure(figsize=(8, 1.2 + 0.45 * len(labels)), layout="constrained")
    ax = fig.add_subplot()
    colours = [CMAP(norm(v)) if v is not None else FAILED_GREY for v in values]
    container = ax.barh(range(len(labels)), [v or 0.0 for v in values], color=colours)
    ax.bar_label(container, texts, padding=4)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("top-1 (%)")
    ax.set_xlim(0, 1.25 * max([v for v in values if v is not None], default=1.0))  # room for the texts
    ax.set_title(title, fontsize="medium")
    return fig


def curves(panels: dict[str, dict[str, Series]], *, title: str) -> Figure:
    """One panel per entry ({panel title: {line label: (epochs, values)}}), side by side, one legend."""
    fig = Figure(figsize=(5 * len(panels), 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, lines) in zip(axes, panels.items(), strict=True):
        if len(lines) > 10:  # the default cycle repeats after 10 colours
            ax.set_prop_cycle(color=matplotlib.colormaps["tab20"].colors)
        for label, (epochs, values) in lines.items():
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(2, len(labels)), fontsize="small")
    fig.suptitle(title)
    return fig


def stabilizer(
    norms: dict[str, Series], clipped: Series, lr: dict[str, Series], *, max_norm: float | None, title: str
) -> Figure:
    """Top: pre-clip gradient-norm quantiles per epoch (log axis), the max_norm line, and the
    fraction of steps clipped (right axis). Bottom: the learning rate per epoch ({label: series})."""
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    for label, (epochs, values) in norms.items():
        top.plot(epochs, values, marker="o", markersize=3, label=label)
    if max_norm is not None:
        top.axhline(max_norm, color="crimson", linestyle="--", label=f"max_norm = {max_norm:g}")
    top.set_yscale("log")
    top.set_ylabel("pre-clip gradient norm")
    top.grid(alpha=0.3, which="both")
    right = top.twinx()
    epochs, fractions = clipped
    right.plot(epochs, [100 * f for f in fractions], ":sk", markersize=3, label="steps clipped (%)")
    right.set_ylim(0, 105)  # 100% stays visible above the frame
    right.set_ylabel("steps clipped (%)")
    handles = top.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    right.legend(handles=handles, loc="lower left", fontsize="small")  # the twin is drawn last: on top
    top.set_title(title + ("" if max_norm is not None else "  (max_norm null: no clipping)"))

    for label, (epochs, values) in lr.items():
        bottom.plot(epochs, values, marker="o", markersize=3, label=label)
    if all(v > 0 for _, values in lr.values() for v in values):
        bottom.set_yscale("log")  # step decay and warm-up span decades
    bottom.set_ylabel("learning rate")
    bottom.legend(fontsize="small")
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.grid(alpha=0.3, which="both")
    return fig
