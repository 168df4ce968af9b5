"""The figures of `resnet-repro report`, drawn with matplotlib.

Figures are built with matplotlib's object API (`Figure`, saved through the Agg canvas): no pyplot,
so no GUI backend, no display and no global figure state, also on a headless cluster node. Each
function takes plain numbers and labels (figures.py reads the files) and returns the Figure, so a
test can look at what was drawn; `save` writes it as PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

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
    fig = Figure(figsize=(2.5 + 1.9 * len(col_labels), 1.8 + 0.9 * len(row_labels)), layout="constrained")
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
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"{label}; colours span {norm.vmin:.4g} to {norm.vmax:.4g}", fontsize="small")
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


@dataclass(frozen=True)
class LevelTop1:
    """One point of the clipping figure's top-1 panel: the mean of its finished runs (None: none
    finished) with its 95% interval (None: no noise estimate), and its jobs by outcome."""

    mean: float | None
    low: float | None
    high: float | None
    diverged: int
    jobs: int


def clipping(
    levels: list[str],
    top1: dict[str, list[LevelTop1 | None]],
    clipped: dict[str, list[Series]],
    factor: dict[str, list[Series]],
    answer: list[str],
    *,
    split: str,
) -> Figure:
    """A max-norm sweep read at a glance. Left: top-1 against max norm (`levels` in order, "off"
    last, after the largest), one line per value of the other axes, each point its mean with a 95%
    interval; a red cross at the bottom where runs diverged ("2/3 diverged"), and the pooled
    contrasts against off (`answer`, one line each) written in the panel. Middle and right: per
    epoch and per max norm ({level: one Series per run}, the line the mean, the band lowest to
    highest), the share of steps clipped (%) and the mean clip factor E[min(1, max_norm / ||g||)]:
    how much of each step clipping keeps."""
    fig = Figure(figsize=(17, 5.6), layout="constrained")
    acc, share, kept = fig.subplots(1, 3, width_ratios=(1.25, 1, 1))
    x = np.arange(len(levels), dtype=float)
    is_off = [not _is_float(t) or float(t) == 0 for t in levels]
    labels = [f"{t} (off)" if off else t for t, off in zip(levels, is_off, strict=True)]
    n_on = is_off.index(True) if True in is_off else len(levels)  # the off levels come last
    tops: list[float] = []
    lows: list[float] = []
    offsets = np.linspace(-0.12, 0.12, len(top1)) if len(top1) > 1 else [0.0]
    bottom = acc.get_xaxis_transform()  # x in data, y in axes fractions
    for colour, offset, (label, points) in zip(_colours(len(top1)), offsets, top1.items(), strict=True):
        # clipping levels joined by a line; "off" is not a max norm, so it stands apart, unjoined
        for part, style in ((slice(0, n_on), "-"), (slice(n_on, None), "none")):
            drawn = [
                (i + offset, p)
                for i, p in zip(x[part], points[part], strict=True)
                if p is not None and p.mean is not None
            ]
            if drawn:
                errors = [
                    [p.mean - p.low if p.low is not None else 0.0 for _, p in drawn],
                    [p.high - p.mean if p.high is not None else 0.0 for _, p in drawn],
                ]
                acc.errorbar(
                    [d[0] for d in drawn],
                    [p.mean for _, p in drawn],
                    yerr=errors,
                    marker="o",
                    capsize=4,
                    color=colour,
                    linestyle=style,
                    label=label if style == "-" or n_on == 0 else None,
                )
                tops.extend(p.high if p.high is not None else p.mean for _, p in drawn)
                lows.extend(p.low if p.low is not None else p.mean for _, p in drawn)
        for i, p in zip(x, points, strict=True):
            if p is not None and p.diverged:
                acc.plot(
                    i + offset, 0.04, "X", color="crimson", markersize=11, transform=bottom, clip_on=False
                )
                acc.annotate(
                    f"{p.diverged}/{p.jobs} diverged",
                    (i + offset, 0.04),
                    xycoords=bottom,
                    xytext=(0, 9),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize="small",
                    color="crimson",
                )
    acc.set_xticks(x, labels)
    acc.set_xlim(-0.5, len(levels) - 0.5)
    if tops:  # head room above the data for the legend and the contrasts, below for the X marks
        span = max(max(tops) - min(lows), 1e-3)
        acc.set_ylim(min(lows) - 0.15 * span, max(tops) + 0.6 * span)
    acc.set_xlabel("stabilizer.max_norm (no clipping last)")
    acc.set_ylabel(f"top-1 (%) on {split}: mean of finished runs, 95% CI")
    acc.set_title("top-1 by max norm; red X: runs that diverged", fontsize="medium")
    acc.grid(alpha=0.3)
    if acc.get_legend_handles_labels()[0]:
        acc.legend(fontsize="small", loc="upper left")
    if answer:
        acc.text(
            0.99,
            0.99,
            "pooled against off (* Holm p < 0.05):\n" + "\n".join(answer),
            transform=acc.transAxes,
            ha="right",
            va="top",
            fontsize="small",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
        )
    for ax, lines, name, scale in (
        (share, clipped, "steps clipped (%)", 100.0),
        (kept, factor, "mean clip factor E[min(1, max_norm / ||g||)]", 1.0),
    ):
        for colour, (label, runs) in zip(_colours(len(lines)), lines.items(), strict=True):
            runs = [r for r in runs if len(r[0])]
            if not runs:
                continue
            epochs, mean, low, high = _band([(e, [scale * v for v in vs]) for e, vs in runs])
            ax.plot(epochs, mean, marker="o", markersize=3, color=colour, label=f"max_norm={label}")
            if len(runs) > 1:
                ax.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
        if not any(len(e) for runs in lines.values() for e, _ in runs):
            ax.text(0.5, 0.5, "not in these runs' metrics.jsonl", transform=ax.transAxes, ha="center")
        ax.set_ylim(-0.03 * scale, 1.05 * scale)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{name.split(' E[')[0]} per epoch (band: lowest to highest run)", fontsize="medium")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle(
        "clipping in this sweep: what it costs (left) and how much of each step it removes (right: "
        "a clip factor of 0.5 halves the step)",
        fontsize="medium",
    )
    return fig


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
