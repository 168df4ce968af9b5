"""What a sweep can say: planned contrasts against "off", which points could be the best, and how
often each setting diverged (docs/reports.md, "What the sweep answers").

The model: a job's top-1 (points) is its point's mean plus seed noise of one standard deviation
shared by every point. The noise is estimated from every finished job at once:

- "cell means" (the sweep has seeds): the pooled within-point variance, df = N - k (N finished
  jobs, k points with one). Nothing is assumed about how the axes combine.
- "additive" (one job per point, two or more axes): the residual of a model with the axes' main
  effects only, df = N - (number of coefficients); its interaction is counted as noise, which
  makes the intervals wider where the axes do interact.

A planned contrast is a level of an axis with an off value (max norm null, warm-up 0, ...) against
off: within each combination of the other axes (the difference of two point means), and pooled
(the average of those differences over the combinations where both points have finished jobs).
Each has a 95% t interval with the model's df, except where an axis's values differ in noise
(Bartlett's test on each value's variance pooled within its points, p < 0.05; the most unequal
such axis): every point's mean then carries the noise of its value of that axis, in every
contrast (Welch-Satterthwaite df), interval and comparison, since a noisier off arm under the
shared noise marks null contrasts far above 5% (16% at 4x the std, measured with
scripts/calibrate_sweeps.py --off-std), its own and those of another axis within it (16%), and
gives its points 70% intervals. The p-values of all the sweep's contrasts, within
and pooled, are adjusted together by Holm (family-wise error 5%), and a contrast is marked only
when its adjusted p < 0.05. The intervals are per contrast (94-96% coverage, measured in
tests/test_contrasts.py), not simultaneous.

Which point is best: a point could be the best unless some other point beats it by more than
Tukey-Kramer's simultaneous 95% allowance (the studentized range over all the points with
finished jobs; Games-Howell's, from each point's noise, where an axis's values differ in noise:
with the shared noise, 20% of null sweeps of 12 equal points with a 4x noisier off arm dropped one
of them), which holds whichever point was observed on top, so picking the winner from the same
seeds does not inflate it. The observed best's lead is still biased upward: confirm a winner
with fresh seeds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from resnet_repro.reporting.seeds import SeedGroup, holm, is_off, value_order

ALPHA = 0.05
ALL = "all"  # `within` of a pooled contrast
IDENTICAL_SEEDS = "identical seeds"  # Noise.model when every point's seeds scored exactly the same
EXACT_FIT = "exact fit"  # Noise.model when the additive model, without seeds, fits every point


@dataclass(frozen=True)
class Noise:
    """The seed noise of one job's top-1 (points) and the degrees of freedom behind it."""

    s: float | None
    df: int
    model: str  # "cell means", "additive" or "none" (no estimate: no replicate and one axis)

    def t(self) -> float | None:
        """The two-sided 95% quantile of Student's t with this df."""
        return _t_quantile(self.df) if self.s is not None else None


@functools.cache
def _t_quantile(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(1 - ALPHA / 2, df))


@functools.cache
def _range_quantile_whole(points: int, df: int) -> float:
    from scipy.stats import studentized_range

    return float(studentized_range.ppf(1 - ALPHA, points, df))


# the steps in 1/df between the dfs at which the studentized range is computed: finer below
# 1/df = 0.02 (df above 50), where q bends most for many points
RANGE_GRID, FINE_GRID, FINE_BELOW = 0.02, 0.002, 0.02


@functools.cache
def _log_range_quantile_at(points: int, x: float) -> float:
    """log of the studentized range's 95% quantile for `points` means at df = 1 / x (x = 0: df
    infinite, as 10^7); scipy takes ~0.1 s for each."""
    from scipy.stats import studentized_range

    return math.log(float(studentized_range.ppf(1 - ALPHA, points, 1 / x if x else 1e7)))


def _range_quantile(points: int, df: float) -> float:
    """The 95% quantile of the studentized range of `points` means at any df >= 1: scipy's at a
    whole df; at Welch-Satterthwaite's (no whole number) log q linear in 1/df between grid nodes
    (0.02 apart in 1/df, 0.002 above df 50), so that a report computes a few nodes once (within
    0.05% of scipy's: tests/test_contrasts.py)."""
    if float(df).is_integer():  # the shared noise's (Tukey-Kramer): scipy's own
        return _range_quantile_whole(points, int(df))
    x = 1 / max(df, 1.0)
    step = FINE_GRID if x < FINE_BELOW else RANGE_GRID
    low = math.floor(x / step)
    w = x / step - low
    lo, hi = round(low * step, 6), round((low + 1) * step, 6)  # the same nodes every time
    return math.exp((1 - w) * _log_range_quantile_at(points, lo) + w * _log_range_quantile_at(points, hi))


def _pts(group: SeedGroup) -> np.ndarray:
    return 100 * np.asarray(group.scores, dtype=float)


def noise(groups: list[SeedGroup], axes: list[str]) -> Noise:
    """The residual std of a finished job's top-1 in points: pooled within points when the sweep
    has at least 2 df of replicates, else the additive model's residual (two or more axes)."""
    finished = [g for g in groups if g.n]
    n_jobs = sum(g.n for g in finished)
    within_df = n_jobs - len(finished)
    if within_df >= 2 or (within_df >= 1 and len(axes) < 2):
        ss = _within_ss(finished)
        if ss == 0:  # no spread to scale an interval by: a zero-width one would claim certainty
            return Noise(None, within_df, IDENTICAL_SEEDS)
        return Noise(math.sqrt(ss / within_df), within_df, "cell means")
    if len(axes) >= 2 and finished:
        columns = [np.ones(n_jobs)]
        for axis in axes:
            values = [g.point.get(axis) for g in finished for _ in g.scores]
            for level in value_order({str(v) for v in values})[1:]:
                columns.append(np.array([float(str(v) == level) for v in values]))
        x = np.stack(columns, axis=1)
        y = np.concatenate([_pts(g) for g in finished])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        df = n_jobs - int(np.linalg.matrix_rank(x))
        if df >= 1:
            s = math.sqrt(float(((y - x @ coef) ** 2).sum()) / df)
            # main effects that fit every point (to float rounding) leave no noise to measure
            if s <= 1e-9 * max(1.0, float(np.abs(y).max())):
                return Noise(None, df, EXACT_FIT)
            return Noise(s, df, "additive")
    return Noise(None, 0, "none")


def _within_ss(groups: list[SeedGroup]) -> float:
    """The sum of squared deviations (points^2) of each group's scores from its own mean; exactly
    0.0 when every group's scores are equal (float rounding of a mean would leave ~1e-28)."""
    if all(len(set(g.scores)) <= 1 for g in groups):
        return 0.0
    return sum(float(((_pts(g) - _pts(g).mean()) ** 2).sum()) for g in groups)


def point_interval(group: SeedGroup, noise: Noise) -> tuple[float, float] | None:
    """The 95% interval of a point's mean (points), from the noise its mean carries (the shared
    noise, or its value's of the most unequal axis: `noise_of`)."""
    if group.mean is None or noise.s is None:
        return None
    half = noise.t() * noise.s / math.sqrt(group.n)
    return 100 * group.mean - half, 100 * group.mean + half


def could_be_best(
    groups: list[SeedGroup], model: Noise, noise: Callable[[SeedGroup], Noise] | None = None
) -> list[bool | None]:
    """Per point, whether no other point beats it beyond the simultaneous 95% allowance
    q / sqrt(2) * sqrt(s_i^2 / n_i + s_j^2 / n_j): Tukey-Kramer's with the shared noise, Games-Howell's
    (each point's noise, the studentized range at Welch-Satterthwaite's df) when `noise(point)`
    gives points noises of their own; None for a point without finished jobs, and for every point
    when the noise is unknown or fewer than two points finished."""
    finished = [g for g in groups if g.n]
    if model.s is None or len(finished) < 2:
        return [None] * len(groups)
    noise = noise or (lambda g: model)

    def allowance(g: SeedGroup, h: SeedGroup) -> float:
        a, b = noise(g), noise(h)
        va, vb = a.s**2 / g.n, b.s**2 / h.n
        df = a.df if a is b else (va + vb) ** 2 / (va**2 / a.df + vb**2 / b.df)
        return _range_quantile(len(finished), df) / math.sqrt(2) * math.sqrt(va + vb)

    def possible(g: SeedGroup) -> bool:
        return all(100 * (h.mean - g.mean) <= allowance(g, h) for h in finished if h is not g)

    return [possible(g) if g.n else None for g in groups]


def clopper_pearson(k: int, n: int) -> tuple[float, float] | None:
    """The exact 95% interval of a rate seen k times in n (a fraction); None for n = 0."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=1 - ALPHA, method="exact")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Contrast:
    factor: str  # the axis, e.g. stabilizer.max_norm
    level: str  # its value, e.g. "2"
    baseline: str  # its off value, e.g. "null"
    within: str  # "optim.weight_decay=1e-4" (one combination of the other axes) or "all" (pooled)
    estimate: float | None  # level minus baseline, top-1 points
    se: float | None
    df: float  # the shared noise's, or Welch-Satterthwaite's when its points carry noises of their own
    ci_low: float | None
    ci_high: float | None
    p: float | None
    p_adjusted: float | None  # Holm over every contrast of the sweep
    n_level: int  # finished jobs behind the level's means
    n_baseline: int
    diverged_level: int  # jobs of the level that diverged, of those that finished or diverged
    ended_level: int
    diverged_baseline: int
    ended_baseline: int

    @property
    def marked(self) -> bool:
        return self.p_adjusted is not None and self.p_adjusted < ALPHA

    @property
    def name(self) -> str:
        """`max norm 2 vs off`."""
        return f"{axis_name(self.factor)} {self.level} vs off"

    def words(self) -> str:
        """`max norm 2 vs off: -0.30 points [-0.44, -0.16] (9 vs 9 runs)`."""
        runs = f"({self.n_level} vs {self.n_baseline} runs)"
        if self.estimate is None:
            return f"{self.name}: no estimate {runs}"
        if self.ci_low is None:
            return f"{self.name}: {self.estimate:+.2f} points, no interval without a noise estimate {runs}"
        return f"{self.name}: {self.estimate:+.2f} points [{self.ci_low:+.2f}, {self.ci_high:+.2f}] {runs}"


def axis_name(key: str) -> str:
    """`stabilizer.max_norm` -> `max norm`."""
    return key.rsplit(".", 1)[-1].replace("_", " ")


def off_value(groups: list[SeedGroup], axis: str) -> str | None:
    """The axis's off value among the sweep's points (the first in axis order), or None."""
    offs = [v for v in value_order({g.point.get(axis, "") for g in groups}) if is_off(v) and v != ""]
    return offs[0] if offs else None


def contrasts(
    groups: list[SeedGroup], axes: list[str], model: Noise, unequal: list[UnequalNoise] | None = None
) -> list[Contrast]:
    """Every level of every axis with an off value against off: within each combination of the
    other axes (when there is more than one) and pooled over them (`within` = "all"), Holm over all.
    `unequal`: the axes whose values differ in noise (`unequal_noise`; computed when not given)."""
    if unequal is None:
        unequal = unequal_noise(groups, axes, model)
    noise = noise_of(model, unequal)
    rows: list[dict] = []
    for factor in axes:
        baseline = off_value(groups, factor)
        if baseline is None:
            continue
        others = [a for a in axes if a != factor]
        cell = {(g.point.get(factor), tuple(g.point.get(o) for o in others)): g for g in groups}
        combos = _ordered_combos(groups, others)
        levels = [v for v in value_order({g.point.get(factor) for g in groups}) if not is_off(v)]
        for level in levels:
            pairs = [(cell.get((level, c)), cell.get((baseline, c)), c) for c in combos]
            pairs = [(a, b, c) for a, b, c in pairs if a is not None and b is not None]
            if len(pairs) > 1:
                for a, b, c in pairs:
                    within = ", ".join(f"{o}={v}" for o, v in zip(others, c, strict=True))
                    rows.append(_contrast(factor, level, baseline, within, [(a, b)], model, noise))
            rows.append(_contrast(factor, level, baseline, ALL, [(a, b) for a, b, _ in pairs], model, noise))
    adjusted = holm([r["p"] for r in rows])
    return [Contrast(**r, p_adjusted=p) for r, p in zip(rows, adjusted, strict=True)]


def _ordered_combos(groups: list[SeedGroup], others: list[str]) -> list[tuple]:
    """The combinations of the other axes' values, each axis in its axis order."""
    orders = {o: value_order({str(g.point.get(o)) for g in groups}) for o in others}
    combos = {tuple(g.point.get(o) for o in others) for g in groups}
    return sorted(combos, key=lambda c: [orders[o].index(str(v)) for o, v in zip(others, c, strict=True)])


@dataclass(frozen=True)
class UnequalNoise:
    """An axis whose values differ in seed noise (Bartlett p < ALPHA): each value's own noise,
    pooled within its points."""

    factor: str
    log_p: float  # of Bartlett's p
    by_value: dict[str, Noise]

    @property
    def p(self) -> float:
        return math.exp(self.log_p)

    def p_text(self) -> str:
        return "< 0.001" if self.p < 0.001 else f"{self.p:.3f}"


def bartlett_by_value(
    groups: list[SeedGroup], factor: str, model: Noise
) -> tuple[dict[str, Noise | None], float]:
    """Each value of `factor`'s own noise (None without replicates) and Bartlett's p for their
    being equal; p is 1.0 where the test cannot run (no replicates, the additive model, fewer than
    two values with some, a value whose seeds all agree)."""
    own, log_p = _own_noises_and_log_p(groups, factor, model)
    return own, math.exp(log_p)


def _own_noises_and_log_p(
    groups: list[SeedGroup], factor: str, model: Noise
) -> tuple[dict[str, Noise | None], float]:
    values = value_order({g.point.get(factor) for g in groups})
    own = {v: _own_noise(groups, factor, v) for v in values}
    noises = [n for n in own.values() if n is not None]
    return own, _bartlett_log_p(noises) if model.model == "cell means" else 0.0


def unequal_noise(groups: list[SeedGroup], axes: list[str], model: Noise) -> list[UnequalNoise]:
    """The axes whose values differ in noise (Bartlett p < ALPHA, every value with replicates),
    the most unequal (smallest p) first; [] when one shared noise fits. Only the first is used:
    a second axis's values pool the first's noisy points unevenly and often look unequal through
    them alone."""
    found = []
    for factor in axes:
        own, log_p = _own_noises_and_log_p(groups, factor, model)
        if log_p < math.log(ALPHA) and all(n is not None for n in own.values()):
            found.append(UnequalNoise(factor, log_p, {v: n for v, n in own.items() if n is not None}))
    return sorted(found, key=lambda u: u.log_p)


def noise_of(model: Noise, unequal: list[UnequalNoise]) -> Callable[[SeedGroup], Noise]:
    """The noise a point's mean carries, in every contrast, interval and comparison: its value's
    of the most unequal axis; the shared `model` when no axis's values differ."""
    if not unequal:
        return lambda g: model
    first = unequal[0]
    return lambda g: first.by_value[g.point.get(first.factor)]


def off_words(value: str) -> str:
    """How a value reads in the answer: `off` for null, 0, false."""
    return "off" if is_off(value) else value


def unequal_noise_words(unequal: list[UnequalNoise]) -> list[str]:
    """`seed noise differs between the values of max norm (Bartlett p < 0.001; std off 0.41, 1
    0.10 ... points): ...` for the axis whose values' noises the numbers use, then a line for each
    other axis that also looked unequal."""
    lines = []
    for u in unequal:
        sds = ", ".join(f"{off_words(v)} {n.s:.2f}" for v, n in u.by_value.items())
        differs = (
            f"seed noise differs between the values of {axis_name(u.factor)} "
            f"(Bartlett p {u.p_text()}; std {sds} points)"
        )
        if u is unequal[0]:
            uses = (
                f"each point's mean carries the noise of its {axis_name(u.factor)} value, in every contrast "
                "(Welch-Satterthwaite df), the points' intervals and 'could be best' (Games-Howell)"
            )
        else:
            first = axis_name(unequal[0].factor)
            uses = f"not used: each point carries its {first} value's noise, which differs more"
        lines.append(f"{differs}: {uses}")
    return lines


def _own_noise(groups: list[SeedGroup], factor: str, value: str) -> Noise | None:
    """The noise pooled within the points at `value` of `factor`; None without replicates."""
    members = [g for g in groups if g.point.get(factor) == value and g.n]
    df = sum(g.n - 1 for g in members)
    if df < 1:
        return None
    return Noise(math.sqrt(_within_ss(members) / df), df, "cell means")


def _bartlett_p(noises: list[Noise]) -> float:
    """Bartlett's test of equal variances from each group's variance and df (the statistic of
    scipy.stats.bartlett, which takes raw samples, not variances pooled over several points)."""
    return math.exp(_bartlett_log_p(noises))


def _bartlett_log_p(noises: list[Noise]) -> float:
    """log of Bartlett's p (which underflows to 0.0 where two axes must still be told apart)."""
    if len(noises) < 2 or any(not n.s for n in noises):
        return 0.0
    from scipy.stats import chi2

    df = np.array([n.df for n in noises], dtype=float)
    var = np.array([n.s**2 for n in noises])
    total = df.sum()
    stat = total * math.log(float((df * var).sum() / total)) - float((df * np.log(var)).sum())
    stat /= 1 + (float((1 / df).sum()) - 1 / total) / (3 * (len(noises) - 1))
    return float(chi2.logsf(stat, len(noises) - 1))


def _contrast(
    factor: str,
    level: str,
    baseline: str,
    within: str,
    pairs: list[tuple[SeedGroup, SeedGroup]],
    model: Noise,
    noise: Callable[[SeedGroup], Noise],
) -> dict:
    """The average over `pairs` of (level mean - baseline mean), in points, with its interval and p;
    `noise(point)`: the noise that point's mean carries."""
    usable = [(a, b) for a, b in pairs if a.n and b.n]
    out = {
        "factor": factor,
        "level": level,
        "baseline": baseline,
        "within": within,
        "estimate": None,
        "se": None,
        "df": model.df,
        "ci_low": None,
        "ci_high": None,
        "p": None,
        "n_level": sum(a.n for a, _ in usable),
        "n_baseline": sum(b.n for _, b in usable),
        "diverged_level": sum(a.diverged for a, _ in pairs),
        "ended_level": sum(a.ended for a, _ in pairs),
        "diverged_baseline": sum(b.diverged for _, b in pairs),
        "ended_baseline": sum(b.ended for _, b in pairs),
    }
    if not usable:
        return out
    m = len(usable)
    out["estimate"] = 100 * sum(a.mean - b.mean for a, b in usable) / m
    if model.s is None:
        return out
    from scipy.stats import t

    # the average difference's variance, summed per noise estimate behind it (one: the shared
    # noise, or one value's; several: Welch-Satterthwaite's df over them)
    parts: dict[int, list] = {}
    for g in (g for pair in usable for g in pair):
        n = noise(g)
        parts.setdefault(id(n), [n, 0.0])[1] += n.s**2 / g.n / m**2
    variance = sum(v for _, v in parts.values())
    se = math.sqrt(variance)
    if len(parts) == 1:
        df = float(next(iter(parts.values()))[0].df)
    else:
        df = variance**2 / sum(v**2 / n.df for n, v in parts.values())
    half = _t_quantile(df) * se
    out.update(se=se, df=df, ci_low=out["estimate"] - half, ci_high=out["estimate"] + half)
    out["p"] = float(2 * t.sf(abs(out["estimate"]) / se, df)) if se > 0 else None
    return out


def skip_words(groups: list[SeedGroup], factor: str, level: str) -> str | None:
    """`max norm off: 3 of 9 finished runs skipped non-finite steps (41 steps)`, over every point at
    that level (None when none of its runs finished): under stabilizer.nonfinite=skip a run that
    met NaN finishes, and only this shows it."""
    skips = [k for g in groups if g.point.get(factor) == level for k in g.skips]
    if not skips:
        return None
    label = off_words(level)
    hit = sum(1 for k in skips if k > 0)
    total = f" ({sum(skips)} steps)" if hit else ""
    return f"{axis_name(factor)} {label}: {hit} of {len(skips)} finished runs skipped non-finite steps{total}"


def divergence_words(groups: list[SeedGroup], factor: str, level: str) -> str | None:
    """`max norm off: 2 of 9 runs diverged (95% CI 3-60%)`, over every point at that level; None
    when no job of the level diverged or ended."""
    members = [g for g in groups if g.point.get(factor) == level]
    diverged, ended = sum(g.diverged for g in members), sum(g.ended for g in members)
    ci = clopper_pearson(diverged, ended)
    if ci is None:
        return None
    label = off_words(level)
    return (
        f"{axis_name(factor)} {label}: {diverged} of {ended} runs diverged "
        f"(95% CI {100 * ci[0]:.0f}-{100 * ci[1]:.0f}%)"
    )
