"""The points of a sweep: jobs that differ only in trainer.seed are one point, with the outcome of
each job and the scores of the finished ones (`make sweep SEEDS=3`).

A job ends in one of four outcomes, and only finished jobs have a score:

- finished: it wrote final.json (trained every epoch, or stopped early by its own rule);
- diverged: it stopped on a non-finite loss or gradient (nonfinite_report.json with a step that
  stopped it), or finished with a non-finite loss (stabilizer.nonfinite=off trains on): in a
  max-norm sweep this is a result, counted per point and per contrast level, never averaged in;
- failed: it stopped on an error (error.txt);
- incomplete: preempted, killed, or still running: its score would be that of a shorter run.

A point is ranked by the mean of its finished jobs, its counts beside it; what can be said about
which point is best and about the sweep's axes is in `resnet_repro.reporting.contrasts`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SEED_KEY = "trainer.seed"

FINISHED, DIVERGED, FAILED, INCOMPLETE = "finished", "diverged", "failed", "incomplete"
OUTCOMES = (FINISHED, DIVERGED, FAILED, INCOMPLETE)


@dataclass(frozen=True)
class SeedGroup:
    point: dict[str, str]  # the overrides shared by the group, trainer.seed left out
    scores: tuple[float, ...]  # fractions, one per finished job
    outcomes: tuple[str, ...]  # one per job of the group, finished ones included
    skips: tuple[int, ...] = ()  # steps skipped as non-finite, one per finished job (when counted)

    @property
    def jobs(self) -> int:
        return len(self.outcomes)

    @property
    def n(self) -> int:
        """Finished jobs: the ones in the mean."""
        return len(self.scores)

    def count(self, outcome: str) -> int:
        return self.outcomes.count(outcome)

    @property
    def diverged(self) -> int:
        return self.count(DIVERGED)

    @property
    def ended(self) -> int:
        """Jobs whose outcome says something about the point: finished or diverged (a failed or
        incomplete job might have gone either way)."""
        return self.n + self.diverged

    @property
    def unfinished(self) -> int:
        return self.jobs - self.n

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None below two scores."""
        return statistics.stdev(self.scores) if self.n >= 2 else None

    def decimals(self) -> int:
        """Decimals of a percentage that the spread supports: one significant digit of the std."""
        return decimals_for(self.std)

    def count_text(self) -> str:
        """`3` when every job finished, else `2/3 finished, 1 diverged` (and failed, incomplete)."""
        if not self.unfinished:
            return str(self.n)
        parts = [f"{self.count(o)} {o}" for o in (DIVERGED, FAILED, INCOMPLETE) if self.count(o)]
        return f"{self.n}/{self.jobs} finished, " + ", ".join(parts)

    def text(self) -> str:
        """`88.9 ± 1.2 (3)` in percent, as many decimals as the spread supports; the other outcomes
        named."""
        if self.mean is None:
            return f"none finished ({self.count_text()})"
        d = self.decimals()
        spread = f" ± {100 * self.std:.{d}f}" if self.std is not None else ""
        return f"{100 * self.mean:.{d}f}{spread} ({self.count_text()})"


def decimals_for(std: float | None) -> int:
    """Decimals for a percentage with this spread (a fraction): 1 down to a std of 0.1 points, then
    one more per decade (0.03 -> 2, 0.004 -> 3, at most 4); 1 without a spread, 2 for none at all."""
    if std is None or std <= 0:
        return 1 if std is None else 2
    return min(4, max(1, -math.floor(math.log10(100 * std))))


def point_of(overrides: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A job's point: its overrides without the seed, as a sorted, hashable tuple."""
    return tuple(sorted((k, v) for k, v in overrides.items() if k != SEED_KEY))


def points(
    rows: list[dict[str, Any]],
    score: Callable[[dict[str, Any]], float | None],
    outcome: Callable[[dict], str],
    skipped: Callable[[dict], int] | None = None,
) -> list[SeedGroup]:
    """Every point of the sweep with its jobs' outcomes and its finished jobs' scores, ranked by
    the mean of its finished jobs (points without one last). `score(row)` is a job's fraction,
    `outcome(row)` one of OUTCOMES; a job that is not finished has no score, whatever its files hold.
    `skipped(row)`: a job's steps skipped as non-finite, kept for the finished jobs."""
    by_point: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    for row in rows:
        by_point.setdefault(point_of(row["overrides"]), []).append(row)
    groups = []
    for point, members in by_point.items():
        ends = tuple(outcome(r) for r in members)
        scores = tuple(
            s for r, o in zip(members, ends, strict=True) if o == FINISHED and (s := score(r)) is not None
        )
        skips = (
            ()
            if skipped is None
            else tuple(skipped(r) for r, o in zip(members, ends, strict=True) if o == FINISHED)
        )
        groups.append(SeedGroup(dict(point), scores, ends, skips))
    return sorted(groups, key=lambda g: (g.mean is None, -(g.mean or 0.0)))


def seed_groups(
    rows: list[dict[str, Any]],
    score: Callable[[dict[str, Any]], float | None],
    outcome: Callable[[dict], str],
) -> list[SeedGroup] | None:
    """`points`, or None unless trainer.seed varies and some point has more than one job."""
    if len({r["overrides"].get(SEED_KEY) for r in rows}) < 2:
        return None
    groups = points(rows, score, outcome)
    return groups if max(g.jobs for g in groups) >= 2 else None


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (family-wise error), None kept in place and not counted as a test."""
    tested = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))  # step-down: never below a smaller p's
        out[i] = running
    return out


def parse_value(text: str | None) -> float | str | None:
    """An override's value text as Python: "null" -> None, numbers -> float, anything else as text."""
    if text is None or text.strip().lower() in ("null", "none", "~", ""):
        return None
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # Hydra's quoted strings
        return text[1:-1]
    try:
        return float(text)
    except ValueError:
        return text


def is_off(text: str | None) -> bool:
    """Whether an override's value switches its knob off: null, 0, false or off (max_norm=null,
    warm-up 0 epochs, dropout 0, ...)."""
    value = parse_value(text)
    return value is None or value == 0.0 or (isinstance(value, str) and value.lower() in ("false", "off"))


def value_order(texts, *, off_last: bool = False) -> list[str]:
    """The distinct value texts in axis order: null first (off_last: every off value last, after
    the largest number, as "no clipping" is the end of the max-norm scale), then numbers
    ascending, then other text."""

    def key(text: str | None) -> tuple[int, float, str]:
        value = parse_value(text)
        if off_last and is_off(text):
            return (3, 0.0, text or "")  # None: a job whose point does not hold the axis
        if value is None:
            return (0, 0.0, text or "")
        if isinstance(value, float):
            return (1, value, "")
        return (2, 0.0, value)

    return sorted(set(texts), key=key)
