"""Seed groups of a sweep: jobs that differ only in trainer.seed are one point, summarized as mean,
standard deviation and count of their scores, so a report can tell a difference from seed noise
(`make sweep SEEDS=3`).

Each point is compared with the best point by Welch's t-test (unequal variances;
scipy.stats.ttest_ind_from_stats), and the p-values of these k - 1 comparisons are adjusted together by Holm's
step-down method (scipy.stats.false_discovery_control has no family-wise version; Holm is the
few lines below). A point's difference "exceeds the spread" only when its adjusted p < 0.05. The
best point is chosen from the same seeds it is compared with, which makes every raw p too small;
Holm's correction for the k - 1 comparisons more than pays for that at the sweep sizes this tool
runs (the null test in tests/test_seed_stats.py measures the family-wise rate on 12 identical points x 3
seeds). With 3 seeds per point only large differences pass: that is the honest answer such a sweep
can give.

A point whose seeds did not all finish (a NaN, a crash) is ranked below every point whose seeds
all did, whatever its mean: in a max-norm sweep the divergence is the result, and a mean over the
surviving seeds would hide it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

SEED_KEY = "trainer.seed"
ALPHA = 0.05


@dataclass(frozen=True)
class SeedGroup:
    point: dict[str, str]  # the overrides shared by the group, trainer.seed left out
    scores: tuple[float, ...]  # fractions, one per finished job
    jobs: int  # jobs in the group, failed ones included
    nan: int = 0  # jobs that stopped on a non-finite loss or gradient (diverged)

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def failed(self) -> int:
        """Jobs without a score: diverged, crashed or unfinished."""
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
        """`3` when every seed finished, else `2/3 finished, 1 NaN` (or `1 failed`)."""
        if not self.failed:
            return str(self.n)
        other = self.failed - self.nan
        parts = [f"{self.nan} NaN"] * (self.nan > 0) + [f"{other} failed"] * (other > 0)
        return f"{self.n}/{self.jobs} finished, " + ", ".join(parts)

    def text(self) -> str:
        """`88.9 ± 1.2 (3)` in percent, as many decimals as the spread supports; failed seeds named."""
        if self.mean is None:
            return f"failed ({self.count_text()})"
        d = self.decimals()
        spread = f" ± {100 * self.std:.{d}f}" if self.std is not None else ""
        return f"{100 * self.mean:.{d}f}{spread} ({self.count_text()})"


def decimals_for(std: float | None) -> int:
    """Decimals for a percentage with this spread (a fraction): 1 down to a std of 0.1 points, then
    one more per decade (0.03 -> 2, 0.004 -> 3, at most 4); 1 without a spread, 2 for none at all."""
    if std is None or std <= 0:
        return 1 if std is None else 2
    return min(4, max(1, -math.floor(math.log10(100 * std))))


def seed_groups(rows: list[dict[str, Any]], score, diverged=lambda row: False) -> list[SeedGroup] | None:
    """The sweep's points with their seeds, best first; None unless trainer.seed varies and some
    point has more than one seed. `score(row)` is a job's fraction, or None (failed);
    `diverged(row)` tells a NaN among the failed. Points with failed seeds rank after every point
    whose seeds all finished."""
    if len({r["overrides"].get(SEED_KEY) for r in rows}) < 2:
        return None
    by_point: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    for row in rows:
        point = tuple(sorted((k, v) for k, v in row["overrides"].items() if k != SEED_KEY))
        by_point.setdefault(point, []).append(row)
    if max(len(v) for v in by_point.values()) < 2:
        return None
    groups = []
    for point, members in by_point.items():
        scores = [score(r) for r in members]
        groups.append(
            SeedGroup(
                dict(point),
                tuple(s for s in scores if s is not None),
                len(members),
                sum(1 for r, s in zip(members, scores, strict=True) if s is None and diverged(r)),
            )
        )
    return sorted(groups, key=lambda g: (g.mean is None, g.failed > 0, -(g.mean or 0.0)))


def welch_p(a: tuple[float, ...], b: tuple[float, ...]) -> float | None:
    """Two-sided p of Welch's t-test; None where it is undefined (fewer than 2 each, or neither
    varies: scipy then returns 0.0 for any difference, which no seed noise supports)."""
    return welch_ps([a], b)[0]


def welch_ps(samples: list[tuple[float, ...]], best: tuple[float, ...]) -> list[float | None]:
    """welch_p of each sample against `best`, in one vectorized scipy call (ttest_ind_from_stats:
    the samples may differ in size)."""
    from scipy.stats import ttest_ind_from_stats

    def stats(x: tuple[float, ...]) -> tuple[float, float, int]:
        return (statistics.fmean(x), statistics.stdev(x), len(x)) if len(x) >= 2 else (0.0, 0.0, len(x))

    b_mean, b_std, b_n = stats(best)
    a = np.array([stats(x) for x in samples], dtype=float).reshape(-1, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = ttest_ind_from_stats(a[:, 0], a[:, 1], a[:, 2], b_mean, b_std, b_n, equal_var=False).pvalue
    defined = (a[:, 2] >= 2) & (b_n >= 2) & ((a[:, 1] > 0) | (b_std > 0)) & np.isfinite(p)
    return [float(v) if ok else None for v, ok in zip(np.atleast_1d(p), defined, strict=True)]


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (family-wise error), None kept in place and not counted as a test."""
    tested = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))  # step-down: never below a smaller p's
        out[i] = running
    return out


@dataclass(frozen=True)
class Comparison:
    group: SeedGroup
    delta: float | None  # its mean minus the best mean (a fraction)
    p: float | None  # Welch's p against the best point
    p_adjusted: float | None  # Holm over all the comparisons against the best

    @property
    def beyond_spread(self) -> bool:
        return self.p_adjusted is not None and self.p_adjusted < ALPHA


def against_best(groups: list[SeedGroup]) -> list[Comparison]:
    """Every group compared with the first (the best complete point): difference, Welch p, Holm p."""
    best = groups[0]
    deltas = [g.mean - best.mean if g.mean is not None and best.mean is not None else None for g in groups]
    ps = welch_ps([g.scores for g in groups], best.scores)
    ps[0] = None  # the best itself
    return [Comparison(*c) for c in zip(groups, deltas, ps, holm(ps), strict=True)]
