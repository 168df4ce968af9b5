"""The statistics of a sweep's rows: its answer (contrasts against off, the points; sweep_answer.py),
its seed groups (seeds.py) and what clipping did per max norm (clipping_stats.py), with only finished
jobs scored."""

from __future__ import annotations

from resnet_repro.reporting import clipping_stats, sweep_answer
from resnet_repro.reporting.job_rows import Row, finished, job_train_rows, score, value_text, varying_keys
from resnet_repro.reporting.seeds import SeedGroup, seed_groups, value_order
from resnet_repro.reporting.sweep_answer import Answer

MAX_NORM_KEY = "stabilizer.max_norm"


def answer_text(rows: list[Row]) -> str:
    """The contrasts against off and, with seeds, the points, as report.md has them."""
    answer = sweep_answer_of(rows)
    parts = sweep_answer.contrast_section(answer) + (
        sweep_answer.points_section(answer) if answer.seeded else []
    )
    return "\n".join(parts).strip() or "(no axis with an off value and no seeds: nothing more to compare)"


def _finished_score(row: Row) -> float | None:
    return score(row) if finished(row) else None


def _outcome(row: Row) -> str:
    return row["outcome"]


def sweep_answer_of(rows: list[Row]) -> Answer:
    """The sweep's points, seed noise, contrasts against off and best set (reporting/sweep_answer.py)."""
    return sweep_answer.answer(rows, varying_keys(rows), _finished_score, _outcome)


def seed_groups_of(rows: list[Row]) -> list[SeedGroup] | None:
    """The sweep's seed groups (resnet_repro.reporting.seeds), None without a seed axis: only finished jobs
    are scored; the others count in a group's jobs by outcome, beside its mean."""
    return seed_groups(rows, _finished_score, _outcome)


def clipping_levels(rows: list[Row]) -> dict[str, clipping_stats.Stats]:
    """clipping_stats.level_stats per max norm value of the sweep (off last)."""
    levels = value_order((value_text(r, MAX_NORM_KEY) for r in rows), off_last=True)
    return {
        level: clipping_stats.level_stats(
            [
                job_train_rows(r)
                for r in rows
                if value_text(r, MAX_NORM_KEY) == level and r.get("path") is not None
            ]
        )
        for level in levels
    }


def clipping_table(rows: list[Row], compare: list[Row] | None = None, compare_name: str = "") -> str:
    """The clipping statistics per max norm as markdown, beside `compare`'s (another sweep) when
    given; "" for a sweep whose max norm does not vary and no comparison."""
    if compare is None and MAX_NORM_KEY not in varying_keys(rows):
        return ""
    other = None if compare is None else clipping_levels(compare)
    return clipping_stats.table(clipping_levels(rows), other, compare_name)
