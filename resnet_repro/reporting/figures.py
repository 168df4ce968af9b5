"""The figures of a sweep and of one run, from their rows and metrics.jsonl, drawn by plots.py: a heat
map for a sweep over two keys (seeds averaged), else a bar chart; every point's curves per epoch; the
clipping figure of a sweep over stabilizer.max_norm; one run's curves and its stabilizer figure."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from resnet_repro.reporting import plots, seeds, sweep_answer
from resnet_repro.reporting.job_rows import (
    EARLY_STOP,
    Row,
    finished,
    is_number,
    job_train_rows,
    pct,
    read_metrics,
    score,
    score_splits,
    sort_rows,
    value_text,
    varying_keys,
)
from resnet_repro.reporting.seeds import SEED_KEY, SeedGroup, value_order
from resnet_repro.reporting.sweep_answer import Answer
from resnet_repro.reporting.sweep_stats import MAX_NORM_KEY, seed_groups_of, sweep_answer_of


def _cell_text(row: Row | None) -> str:
    if row is None:
        return "no job"
    if not finished(row):
        return "no score\n" + row["outcome"]
    text = pct(score(row)) + ("" if row["best_top1"] is not None else "\n(final)")
    if row["status"] == EARLY_STOP:
        text += "\nearly stop"
    return text


def _plotted_score(row: Row | None) -> float | None:
    """The percentage that colours a cell or sizes a bar; None (grey) for a job that did not finish
    (its score would be that of a shorter or broken run) or a missing one."""
    if row is None or not finished(row) or score(row) is None:
        return None
    return 100 * score(row)


def _best_of(rows: list[Row]) -> Row | None:
    """The row a grid cell shows when several jobs share it (e.g. the same point in two sweeps)."""
    return sort_rows(rows)[0] if rows else None


def heat_map(rows: list[Row], row_key: str, col_key: str) -> Figure:
    """Best top-1 (%) on a grid of row_key values x col_key values; failed cells grey and labelled."""
    ys = value_order(value_text(r, row_key) for r in rows)
    xs = value_order(value_text(r, col_key) for r in rows)
    grid = [
        [
            _best_of([r for r in rows if (value_text(r, row_key), value_text(r, col_key)) == (y, x)])
            for x in xs
        ]
        for y in ys
    ]
    return plots.heat_map(
        [[_plotted_score(cell) for cell in line] for line in grid],
        [[_cell_text(cell) for cell in line] for line in grid],
        ys,
        xs,
        row_key=row_key,
        col_key=col_key,
        title=f"best top-1 (%) on {score_splits(rows)}; (final) where a run had no selection split",
    )


def bar_chart(rows: list[Row], key: str | None) -> Figure:
    """Horizontal bars of best top-1 (%), one per job: labelled by `key`'s value, or by job name."""
    if key is not None:
        order = value_order(value_text(r, key) for r in rows)
        rows = sorted(rows, key=lambda r: (order.index(value_text(r, key)), r["job"]))
        labels = [value_text(r, key) for r in rows]
    else:
        rows = sort_rows(rows)
        labels = [r["job"] if len(r["job"]) <= 60 else "..." + r["job"][-57:] for r in rows]
    texts = [f"no score ({r['outcome']})" if not finished(r) else _cell_text(r) for r in rows]
    title = "best top-1 (%), else final" + (f" by {key}" if key else "")
    return plots.bars(
        labels, [_plotted_score(r) for r in rows], [t.replace("\n", " ") for t in texts], title=title
    )


def seed_heat_map(
    groups: list[SeedGroup],
    row_key: str,
    col_key: str,
    split: str = "selection split",
    noise: float | None = None,
) -> Figure:
    """Mean best top-1 (%) per point over its finished seeds, each cell "mean ± std (n)"; a point
    with unfinished seeds hatched and its counts "2/3 finished, 1 diverged". The colours come from
    the point means only and span at least four times the seed noise (`noise`, points: the sweep's
    pooled estimate; else the median of the points' stds), so a difference within the noise does
    not take the whole palette and no single run can stretch the range."""
    ys = value_order(g.point.get(row_key, "default") for g in groups)
    xs = value_order(g.point.get(col_key, "default") for g in groups)
    cell = {(g.point.get(row_key, "default"), g.point.get(col_key, "default")): g for g in groups}
    grid = [[cell.get((y, x)) for x in xs] for y in ys]
    if noise is None:
        stds = [100 * g.std for g in groups if g.std is not None]
        noise = statistics.median(stds) if stds else 0.0
    return plots.heat_map(
        [[100 * g.mean if g is not None and g.mean is not None else None for g in line] for line in grid],
        [[g.text().replace(" (", "\n(") if g is not None else "no job" for g in line] for line in grid],
        ys,
        xs,
        row_key=row_key,
        col_key=col_key,
        title=f"best top-1 (%) on {split}: mean ± std (finished seeds); hatched: a seed did not finish",
        min_span=4 * noise,
        hatched=[
            (i, j)
            for i, line in enumerate(grid)
            for j, g in enumerate(line)
            if g is not None and g.unfinished
        ],
        label=f"mean top-1 (%), {split}",
    )


def draw_plot(
    rows: list[Row], path: Path, groups: list[SeedGroup] | None = None, noise: float | None = None
) -> Path:
    """A heat map when exactly two overrides vary across jobs (seeds averaged when trainer.seed is
    a third axis; `noise` the seed noise in points), else a bar chart; saved as PNG."""
    if groups is not None:
        axes = [k for k in varying_keys(rows) if k != SEED_KEY]
        if len(axes) == 2:
            return plots.save(seed_heat_map(groups, axes[0], axes[1], score_splits(rows), noise), path)
    keys = varying_keys(rows)
    if len(keys) == 2:
        return plots.save(heat_map(rows, keys[0], keys[1]), path)
    return plots.save(bar_chart(rows, keys[0] if len(keys) == 1 else None), path)


def series(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> plots.Series:
    """(epochs, values) of `key` over metrics rows, in epoch order; rows without a number are skipped."""
    points = sorted((int(r["epoch"]), scale * r[key]) for r in rows if is_number(r.get(key)))
    return [e for e, _ in points], [v for _, v in points]


def _eval_split(metrics: list[dict[str, Any]]) -> str | None:
    """The split a job's curve shows: the holdout when it has one, else its first other evaluation."""
    splits = [r["split"] for r in metrics if r.get("split") != "train" and is_number(r.get("top1"))]
    return "holdout" if "holdout" in splits else (splits[0] if splits else None)


def _in_axis_order(rows: list[Row], keys: list[str]) -> list[Row]:
    """Rows ordered by their values of `keys` (each in axis order: null, numbers, text), then job."""
    order = {k: value_order(value_text(r, k) for r in rows) for k in keys}
    return sorted(rows, key=lambda r: ([order[k].index(value_text(r, k)) for k in keys], r["job"]))


def _point_label(row: Row, keys: list[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={value_text(row, k)}" for k in keys)


def sweep_curves(rows: list[Row]) -> Figure:
    """Evaluation top-1 and train loss per epoch, one line per point (the mean of its seeds, a band
    from the lowest to the highest), small multiples: one row of panels per value of the sweep's
    first axis when it has two or more, lines labelled by the other axes."""
    keys = [k for k in varying_keys(rows) if k != SEED_KEY]
    row_key, line_keys = (keys[0], keys[1:]) if len(keys) >= 2 else (None, keys)
    groups = seed_groups_of(rows)
    failed = {tuple(sorted(g.point.items())): g for g in groups or [] if g.unfinished}
    grid: dict[str, dict[str, dict[str, list[plots.Series]]]] = {}
    splits = set()
    for row in _in_axis_order(rows, keys):
        panel_row = _point_label(row, [row_key]) if row_key else ""
        label = _point_label(row, line_keys) or (row["job"] if groups is None else "all jobs")
        point = tuple(sorted((k, v) for k, v in row["overrides"].items() if k != SEED_KEY))
        if point in failed:
            label += f" ({failed[point].count_text()})"
        metrics = read_metrics(Path(row["path"]) / "metrics.jsonl")
        split = _eval_split(metrics)
        panels = grid.setdefault(panel_row, {"top-1 (%)": {}, "train loss": {}})
        if split is not None:
            splits.add(split)
            top1 = series([r for r in metrics if r.get("split") == split], "top1", 100)
            panels["top-1 (%)"].setdefault(label, []).append(top1)
        loss = series([r for r in metrics if r.get("split") == "train"], "loss")
        panels["train loss"].setdefault(label, []).append(loss)
    name = "/".join(sorted(splits)) or "evaluation"
    for panels in grid.values():
        panels[f"{name} top-1 (%)"] = panels.pop("top-1 (%)")
        panels["train loss"] = panels.pop("train loss")
    seeds = " (mean of seeds, band: lowest to highest)" if groups is not None else ""
    return plots.grouped_curves(grid, title=f"every point, per epoch{seeds}")


def clipping_figure(rows: list[Row], answer: Answer | None = None) -> Figure | None:
    """For a sweep over stabilizer.max_norm (and e.g. weight decay): top-1 against max norm (no
    clipping last), one line per value of the other axes, each point the mean of its finished runs
    with a 95% interval, diverged runs marked and the pooled contrasts against off written in;
    beside it, per epoch and max norm, the share of steps clipped and the mean clip factor. None
    when max_norm does not vary."""
    keys = [k for k in varying_keys(rows) if k != SEED_KEY]
    if MAX_NORM_KEY not in keys:
        return None
    answer = answer or sweep_answer_of(rows)
    others = [k for k in keys if k != MAX_NORM_KEY]
    levels = value_order((value_text(r, MAX_NORM_KEY) for r in rows), off_last=True)
    combos = list(
        dict.fromkeys(tuple(value_text(r, k) for k in others) for r in _in_axis_order(rows, others))
    )
    by_values = {tuple(g.point.get(k, "default") for k in [*others, MAX_NORM_KEY]): g for g in answer.groups}
    top1: dict[str, list[plots.LevelTop1 | None]] = {}
    for combo in combos:
        label = (
            ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, combo, strict=True)) or "all jobs"
        )
        line = []
        for level in levels:
            g = by_values.get((*combo, level))
            interval = None if g is None else answer.interval(g)
            line.append(
                None
                if g is None
                else plots.LevelTop1(
                    None if g.mean is None else 100 * g.mean,
                    None if interval is None else interval[0],
                    None if interval is None else interval[1],
                    g.diverged,
                    g.jobs,
                )
            )
        top1[label] = line
    pooled = sweep_answer.pooled(answer, MAX_NORM_KEY)
    text = [
        pooled[level].words().split(": ", 1)[1].join([f"{level}: ", " *" if pooled[level].marked else ""])
        for level in levels
        if level in pooled
    ]
    clipping_levels = [level for level in levels if not seeds.is_off(level)]
    # each job's metrics.jsonl read once, for both per-epoch panels
    train = {
        level: [job_train_rows(r) for r in rows if value_text(r, MAX_NORM_KEY) == level]
        for level in clipping_levels
    }
    return plots.clipping(
        levels,
        top1,
        {level: [series(t, "clipped_fraction") for t in train[level]] for level in clipping_levels},
        {level: [series(t, "clip_factor_mean") for t in train[level]] for level in clipping_levels},
        text,
        split=score_splits(rows),
    )


def run_curves(metrics: list[dict[str, Any]], title: str) -> Figure:
    """One run's loss and top-1 per epoch, for the train split and every evaluated split."""
    splits = list(dict.fromkeys(r.get("split") for r in metrics if is_number(r.get("loss"))))
    by_split = {s: [r for r in metrics if r.get("split") == s] for s in splits}
    return plots.curves(
        {
            "loss": {s: series(rs, "loss") for s, rs in by_split.items()},
            "top-1 (%)": {s: series(rs, "top1", 100) for s, rs in by_split.items()},
        },
        title=title,
    )


def stabilizer_figure(metrics: list[dict[str, Any]], max_norm: float | None, title: str) -> Figure:
    """Per epoch: pre-clip gradient-norm p50/p90/p99/max, the max_norm line, the clipped fraction, LR."""
    train = [r for r in metrics if r.get("split") == "train"]
    norms = {q: series(train, f"grad_norm_{q}") for q in ("p50", "p90", "p99", "max")}
    # the LR each epoch started and ended with: warm-up rises within an epoch, milestones step between
    lr = {"at epoch start": series(train, "lr"), "at epoch end": series(train, "lr_end")}
    return plots.stabilizer(norms, series(train, "clipped_fraction"), lr, max_norm=max_norm, title=title)
