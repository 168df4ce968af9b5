"""Seed groups of a sweep: jobs that differ only in trainer.seed are one point, summarized as mean,
standard deviation and count of their scores, so a report can tell a difference from seed noise
(`make sweep SEEDS=3`).

A point's difference from the best point "exceeds the spread" when Welch's t-test (unequal
variances; scipy.stats.ttest_ind) gives p < 0.05 for the two sets of seeds. With 3 seeds per point
only large differences pass: that is the honest answer such a sweep can give.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

SEED_KEY = "trainer.seed"
ALPHA = 0.05


@dataclass(frozen=True)
class SeedGroup:
    point: dict[str, str]  # the overrides shared by the group, trainer.seed left out
    scores: tuple[float, ...]  # fractions, one per finished job
    jobs: int  # jobs in the group, failed ones included

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None below two scores."""
        return statistics.stdev(self.scores) if self.n >= 2 else None

    def text(self) -> str:
        """`88.9 ± 1.2 (3)` in percent; the count is of finished jobs."""
        if self.mean is None:
            return f"failed ({self.jobs})"
        spread = f" ± {100 * self.std:.1f}" if self.std is not None else ""
        return f"{100 * self.mean:.1f}{spread} ({self.n})"


def seed_groups(rows: list[dict[str, Any]], score) -> list[SeedGroup] | None:
    """The sweep's points with their seeds, best mean first; None unless trainer.seed varies and
    some point has more than one seed. `score(row)` is a job's fraction, or None (failed)."""
    if len({r["overrides"].get(SEED_KEY) for r in rows}) < 2:
        return None
    by_point: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    for row in rows:
        point = tuple(sorted((k, v) for k, v in row["overrides"].items() if k != SEED_KEY))
        by_point.setdefault(point, []).append(row)
    if max(len(v) for v in by_point.values()) < 2:
        return None
    groups = [
        SeedGroup(dict(point), tuple(s for s in (score(r) for r in members) if s is not None), len(members))
        for point, members in by_point.items()
    ]
    return sorted(groups, key=lambda g: (g.mean is None, -(g.mean or 0.0)))


def welch_p(a: tuple[float, ...], b: tuple[float, ...]) -> float | None:
    """Two-sided p of Welch's t-test; None where it is undefined (fewer than 2 each, no variance)."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return None
    p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def against_best(groups: list[SeedGroup]) -> list[tuple[SeedGroup, float | None, float | None]]:
    """(group, its mean minus the best mean, Welch p against the best group) for every group."""
    best = groups[0]
    out = []
    for g in groups:
        delta = g.mean - best.mean if g.mean is not None and best.mean is not None else None
        out.append((g, delta, None if g is best else welch_p(g.scores, best.scores)))
    return out
