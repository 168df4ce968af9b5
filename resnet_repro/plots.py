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
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, ScalarFormatter

# (epochs, values) of one line
Series = tuple[Sequence[float], Sequence[float]]

FAILED_GREY = "#afafaf"  # grid cells and bars of failed jobs, and grid points without a job
CMAP = matplotlib.colormaps["viridis"]  # perceptually uniform, readable in grey scale


def save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def _norm(values: Sequence[float | None], min_span: float = 0.0) -> Normalize:
    """The colour range: the values' range, widened about its centre to at least `min_span` (so
    a difference of the size of the noise does not use the whole palette); one value: mid-scale."""
    numbers = [v for v in values if v is not None]
    lo, hi = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
    span = max(hi - lo, min_span) or 2.0
    middle = (lo + hi) / 2
    return Normalize(middle - span / 2, middle + span / 2)


def heat_map(
    values: list[list[float | None]],
    texts: list[list[str]],
    row_labels: list[str],
    col_labels: list[str],
    *,
    row_key: str,
    col_key: str,
    title: str,
    min_span: float = 0.0,
    hatched: Sequence[tuple[int, int]] = (),
    label: str = "top-1 (%)",
) -> Figure:
    """values[i][j] colours cell (row i, column j) on viridis; None (a failed job, no job) is grey.
    texts[i][j] is written in the cell; cells in `hatched` (a point with failed seeds) are hatched.
    The colour range spans at least `min_span` and the colour bar names it."""
    norm = _norm([v for row in values for v in row], min_span)
    data = np.ma.masked_invalid(np.array(values, dtype=float))  # None -> nan -> masked -> grey
    fig = Figure(figsize=(2.5 + 1.4 * len(col_labels), 1.6 + 0.8 * len(row_labels)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap=CMAP.with_extremes(bad=FAILED_GREY), norm=norm, aspect="auto")
    for i, row in enumerate(texts):
        for j, text in enumerate(row):
            value = values[i][j]
            dark = value is not None and norm(value) < 0.6  # white text on viridis' dark end
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
    for i, j in hatched:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="crimson", lw=1.5))
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(col_key)
    ax.set_ylabel(row_key)
    ax.set_title(title, fontsize="medium")
    fig.colorbar(image, ax=ax, label=f"{label}; colours span {norm.vmin:.4g} to {norm.vmax:.4g}")
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


def _colours(n: int) -> list:
    """n distinct colours: tab10, tab20 up to 20 lines, then samples of viridis (ordered values)."""
    if n <= 10:
        return list(matplotlib.colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(matplotlib.colormaps["tab20"].colors[:n])
    return [CMAP(i / (n - 1)) for i in range(n)]


def _band(runs: Sequence[Series]) -> tuple[list[float], list[float], list[float], list[float]]:
    """(epochs, mean, low, high) over the runs of one point; an epoch some runs lack (a seed that
    diverged early) averages the runs that have it."""
    by_epoch: dict[float, list[float]] = {}
    for epochs, values in runs:
        for e, v in zip(epochs, values, strict=True):
            by_epoch.setdefault(e, []).append(v)
    epochs = sorted(by_epoch)
    return (
        epochs,
        [float(np.mean(by_epoch[e])) for e in epochs],
        [min(by_epoch[e]) for e in epochs],
        [max(by_epoch[e]) for e in epochs],
    )


def grouped_curves(rows: dict[str, dict[str, dict[str, Sequence[Series]]]], *, title: str) -> Figure:
    """Small multiples of a sweep's curves: one row of panels per entry of `rows` ({row title:
    {panel title: {line label: [one Series per seed]}}}), one line per point (the mean over its
    seeds) with a band from the lowest to the highest seed, a legend in each row's first panel.
    The figure grows with the number of rows, so the legend never has more lines than a row; each
    column shares its y axis, so the rows compare at a glance."""
    names = list(dict.fromkeys(p for panels in rows.values() for p in panels))
    fig = Figure(figsize=(5.5 * len(names), 1.0 + 3.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(names), squeeze=False, sharex=True, sharey="col")
    for line_axes, (row_title, panels) in zip(axes, rows.items(), strict=True):
        for ax, name in zip(line_axes, names, strict=True):
            lines = panels.get(name, {})
            for colour, (label, runs) in zip(_colours(len(lines)), lines.items(), strict=True):
                epochs, mean, low, high = _band(runs)
                ax.plot(epochs, mean, marker="o", markersize=3, color=colour, label=label)
                if len(runs) > 1:
                    ax.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
            ax.set_title(f"{row_title}: {name}" if row_title else name, fontsize="medium")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        line_axes[0].legend(fontsize="small", ncols=1 + len(line_axes[0].lines) // 8)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    fig.suptitle(title)
    return fig


# one number per max-norm value of a line (None: no finished job at that point)
Values = Sequence[float | None]


def clipping(
    max_norms: list[str],
    top1: dict[str, tuple[Values, Values]],
    clipped: dict[str, Values],
    grad_norm: dict[str, Values],
    *,
    split: str,
) -> Figure:
    """A max-norm sweep side by side, x = max_norm (as text: "null" is no clipping), one line per
    value of the other axes: top-1 (mean, error bar one std over seeds), the share of steps clipped
    (%), and the median pre-clip gradient norm next to the max_norm itself (log axis)."""
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    acc, share, norm = fig.subplots(1, 3, sharex=True)
    x = list(range(len(max_norms)))
    colours = _colours(len(top1))

    def draw(ax, values: Values, colour, label: str, errors: Values | None = None) -> None:
        points = [
            (i, v, (errors[i] if errors else None)) for i, v in zip(x, values, strict=True) if v is not None
        ]
        if not points:
            return
        xs, ys, es = zip(*points, strict=True)
        if errors is None:
            ax.plot(xs, ys, marker="o", color=colour, label=label)
        else:  # no error bar where a point has a single finished seed
            ax.errorbar(xs, ys, yerr=[e or 0.0 for e in es], marker="o", capsize=4, color=colour, label=label)

    for colour, label in zip(colours, top1, strict=True):
        draw(acc, top1[label][0], colour, label, top1[label][1])
        draw(share, [None if v is None else 100 * v for v in clipped[label]], colour, label)
        draw(norm, grad_norm[label], colour, label)
    limits = [(i, float(t)) for i, t in zip(x, max_norms, strict=True) if _is_float(t)]
    if limits:
        norm.plot(*zip(*limits, strict=True), "x", color="crimson", markersize=10, mew=2, label="max_norm")
    norm.set_yscale("log")
    norm.yaxis.set_major_formatter(ScalarFormatter())  # 3, not 3 x 10^0
    norm.yaxis.set_minor_formatter(ScalarFormatter())
    acc.set_ylabel(f"top-1 (%) on {split}, mean ± std over seeds")
    share.set_ylabel("steps clipped (%), whole run")
    share.set_ylim(-3, 103)
    norm.set_ylabel("median pre-clip gradient norm")
    for ax, name in (
        (acc, "top-1"),
        (share, "share of steps clipped"),
        (norm, "median gradient norm vs max_norm"),
    ):
        ax.set_xticks(x, [t if _is_float(t) else f"{t} (off)" for t in max_norms])
        ax.set_xlabel("stabilizer.max_norm")
        ax.set_title(name, fontsize="medium")
        ax.grid(alpha=0.3, which="both")
    acc.legend(fontsize="small")
    norm.legend(fontsize="small")
    fig.suptitle(
        "clipping in this sweep: is max_norm too tight? (clipped share near 100% and a median "
        "norm far above max_norm: every step is shortened)",
        fontsize="medium",
    )
    return fig


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
