"""What clipping did at each max norm of a sweep, from the jobs' per-epoch train rows: the share
of steps clipped in the first and last epoch and over the run, the mean clip factor
E[min(1, max_norm / ||g||)] and the median pre-clip gradient norm; optionally beside another
sweep's (`resnet-repro report SWEEP --compare PROXY_SWEEP`): gradient norms, and so the clipped
share at a given max norm, change with weight decay, the data and the schedule, so a max norm
chosen on a proxy is checked against the full run's numbers, not carried over."""

from __future__ import annotations

import statistics
from typing import Any

Stats = dict[str, float | None]
COLUMNS = (
    "clipped first epoch %",
    "clipped last epoch %",
    "clipped whole run %",
    "clip factor",
    "median grad norm",
)


def _numbers(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [
        float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)
    ]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def level_stats(jobs: list[list[dict[str, Any]]]) -> Stats:
    """One max norm's numbers over its jobs (each a list of metrics.jsonl train rows, any order):
    means over jobs of the first and last epoch's clipped_fraction (in %), the mean over all
    epochs of clipped_fraction (%) and clip_factor_mean, and the median of the epochs'
    grad_norm_p50."""
    ordered = [sorted(rows, key=lambda r: r.get("epoch", 0)) for rows in jobs if rows]
    every = [r for rows in ordered for r in rows]

    def pct(values: list[float]) -> float | None:
        mean = _mean(values)
        return None if mean is None else 100 * mean

    norms = _numbers(every, "grad_norm_p50")
    return {
        COLUMNS[0]: pct(_numbers([rows[0] for rows in ordered], "clipped_fraction")),
        COLUMNS[1]: pct(_numbers([rows[-1] for rows in ordered], "clipped_fraction")),
        COLUMNS[2]: pct(_numbers(every, "clipped_fraction")),
        COLUMNS[3]: _mean(_numbers(every, "clip_factor_mean")),
        COLUMNS[4]: statistics.median(norms) if norms else None,
    }


def _text(value: float | None, column: str) -> str:
    if value is None:
        return "-"
    return (
        f"{value:.3f}"
        if column == "clip factor"
        else (f"{value:.3g}" if "norm" in column else f"{value:.0f}")
    )


def table(levels: dict[str, Stats], other: dict[str, Stats] | None = None, other_name: str = "") -> str:
    """A markdown table, one line per max norm; with `other`, each column twice: this sweep's, then
    the other's (named `other_name`), for the max norms either has."""
    names = list(levels) + [k for k in (other or {}) if k not in levels]
    header = ["max norm"]
    for column in COLUMNS:
        header += [column] if other is None else [column, f"{column} ({other_name})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        cells = [name]
        for column in COLUMNS:
            cells.append(_text(levels.get(name, {}).get(column), column))
            if other is not None:
                cells.append(_text(other.get(name, {}).get(column), column))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTE = (
    "Clip factor: the mean over steps of min(1, max_norm / ||g||), the share of each step that "
    "clipping keeps (1: untouched; 0.3: every step cut to a third). Gradient norms, and so these "
    "shares at a given max norm, move with weight decay (with BatchNorm, stronger decay makes "
    "smaller weights and larger gradients), the data and the schedule: compare a proxy's numbers "
    "with the full run's (`resnet-repro report SWEEP --compare OTHER_SWEEP`) before carrying a "
    "max norm over."
)
