"""The answer a sweep gives, as report.md's first sections, contrasts.csv and report_seeds.csv:
each level against off with its interval, how often it diverged, and which points could be the
best (the statistics are resnet_repro.reporting.contrasts; the job outcomes resnet_repro.reporting.seeds)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_repro.reporting import contrasts as stats
from resnet_repro.reporting.contrasts import ALL, Contrast, Noise, UnequalNoise
from resnet_repro.reporting.seeds import SEED_KEY, SeedGroup, points, value_order

Row = dict[str, Any]


@dataclass(frozen=True)
class Answer:
    axes: list[str]  # the sweep's varying keys, seed left out
    groups: list[SeedGroup]  # every point, best mean first
    noise: Noise
    unequal: list[UnequalNoise]  # the axes whose values differ in noise, most unequal first
    contrasts: list[Contrast]
    best: list[bool | None]  # per group: could it be the best (Tukey-Kramer / Games-Howell)

    @property
    def seeded(self) -> bool:
        return any(g.jobs > 1 for g in self.groups)

    def interval(self, group: SeedGroup) -> tuple[float, float] | None:
        """The 95% interval of a point's mean (points), from the noise its mean carries."""
        return stats.point_interval(group, stats.noise_of(self.noise, self.unequal)(group))


def answer(rows: list[Row], axes: list[str], score, outcome) -> Answer:
    """The sweep's points, noise, contrasts and best set; `score(row)` a finished job's fraction,
    `outcome(row)` one of seeds.OUTCOMES."""
    axes = [a for a in axes if a != SEED_KEY]
    groups = points(rows, score, outcome, skipped=lambda r: int(r.get("skipped_steps") or 0))
    noise = stats.noise(groups, axes)
    unequal = stats.unequal_noise(groups, axes, noise)
    found = stats.contrasts(groups, axes, noise, unequal)
    best = stats.could_be_best(groups, noise, stats.noise_of(noise, unequal))
    return Answer(axes, groups, noise, unequal, found, best)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], lines: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def _p_text(p: float | None) -> str:
    return "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _rate(k: int, n: int) -> str:
    ci = stats.clopper_pearson(k, n)
    return "-" if ci is None else f"{k}/{n} ({100 * ci[0]:.0f}-{100 * ci[1]:.0f}%)"


def contrast_section(a: Answer) -> list[str]:
    """report.md's first section: the pooled contrasts in words, then every contrast as a table,
    then how often each level diverged; [] when no axis has an off value."""
    if not a.contrasts:
        return []
    pooled = [c for c in a.contrasts if c.within == ALL]
    parts = ["## The answer: each setting against off", ""]
    for c in pooled:
        mark = " **(marked: Holm p " + _p_text(c.p_adjusted) + ")**" if c.marked else ""
        parts.append(f"- {c.words()}{mark}")
    factors = list(dict.fromkeys(c.factor for c in pooled))
    parts += [f"- {words}" for words in stats.unequal_noise_words(a.unequal)]
    for factor in factors:
        for level in value_order({g.point.get(factor) for g in a.groups}, off_last=True):
            words = stats.divergence_words(a.groups, factor, level)
            if words is not None and any(g.diverged for g in a.groups):
                parts.append(f"- {words}")
            skipped = stats.skip_words(a.groups, factor, level)
            if skipped is not None and any(k > 0 for g in a.groups for k in g.skips):  # only then
                parts.append(f"- {skipped}")
    header = [
        "contrast",
        "within",
        "estimate (points)",
        "95% CI",
        "Holm p",
        "runs",
        "diverged level",
        "diverged off",
    ]
    diverged = any(g.diverged for g in a.groups)  # the divergence columns only where some run did
    if not diverged:
        header = header[:-2]
    lines = [
        [
            c.name,
            c.within,
            "-" if c.estimate is None else f"{c.estimate:+.2f}",
            "-" if c.ci_low is None else f"[{c.ci_low:+.2f}, {c.ci_high:+.2f}]",
            _p_text(c.p_adjusted) + (" *" if c.marked else ""),
            f"{c.n_level} vs {c.n_baseline}",
            *(
                [_rate(c.diverged_level, c.ended_level), _rate(c.diverged_baseline, c.ended_baseline)]
                if diverged
                else []
            ),
        ]
        for c in a.contrasts
    ]
    if a.unequal:  # every contrast: each side's value's noise, Welch-Satterthwaite df
        noise = _unequal_text(a.unequal[0]).replace("each with its value's df", "Welch-Satterthwaite df")
        intervals = f"95% intervals are Student's t with the {noise}"
    elif a.noise.s is None:
        intervals = f"No intervals ({_noise_text(a.noise)})"
    else:
        intervals = f"95% intervals are Student's t with the {_noise_text(a.noise)}"
    parts += ["", _table(header, lines), "", CONTRAST_NOTE.format(intervals=intervals), ""]
    return parts


def _unequal_text(u: UnequalNoise) -> str:
    """The noise the numbers use when an axis's values differ in it."""
    sds = ", ".join(f"{stats.off_words(v)} {n.s:.2f}" for v, n in u.by_value.items())
    return (
        f"seed noise of each point's {stats.axis_name(u.factor)} value ({sds} points, each with its "
        f"value's df; they differ: Bartlett p {u.p_text()})"
    )


def _noise_text(noise: Noise) -> str:
    if noise.model == stats.IDENTICAL_SEEDS:
        return (
            "no estimate of the seed noise: every point's seeds scored exactly the same (does "
            "trainer.seed reach the runs?)"
        )
    if noise.model == stats.EXACT_FIT:
        return (
            "no estimate of the seed noise: the axes' main effects fit every point exactly, leaving "
            "no interaction to measure it by; run seeds (`make sweep SEEDS=3`)"
        )
    if noise.s is None:
        return (
            "no estimate of the seed noise (one job per point and one axis): run seeds (`make sweep SEEDS=3`)"
        )
    return f"seed noise {noise.s:.2f} points ({noise.model} model, {noise.df} df)"


CONTRAST_NOTE = (
    "Estimates are differences of mean top-1 (points) over finished runs only: within one "
    "combination of the other axes, or the average of those differences (`within` = all). "
    "{intervals}; Holm p adjusts every "
    "contrast of this table together and `*` marks Holm p < 0.05. Diverged: runs stopped by a "
    "non-finite loss of those that finished or diverged, with the exact (Clopper-Pearson) 95% "
    "interval. docs/reports.md says how the method was calibrated on sweeps of known truth."
)


def points_section(a: Answer) -> list[str]:
    """Every point: mean with its 95% interval, counts, and whether it could be the best."""
    keys = [k for k in a.axes if len({g.point.get(k) for g in a.groups}) > 1]
    header = [*keys, "top-1 % mean [95% CI]", "std", "finished/jobs", "diverged", "other", "could be best"]
    lines = []
    for g, best in zip(a.groups, a.best, strict=True):
        interval = a.interval(g)
        d = g.decimals()
        mean = "-" if g.mean is None else f"{100 * g.mean:.{d}f}"
        if interval is not None:
            mean += f" [{interval[0]:.{d}f}, {interval[1]:.{d}f}]"
        other = ", ".join(f"{g.count(o)} {o}" for o in ("failed", "incomplete") if g.count(o))
        lines.append(
            [
                *(g.point.get(k, "") for k in keys),
                mean,
                "-" if g.std is None else f"{100 * g.std:.{d}f}",
                f"{g.n}/{g.jobs}",
                g.diverged,
                other or "-",
                {True: "yes", False: "no", None: "-"}[best],
            ]
        )
    intervals, method = f"Intervals from the {_noise_text(a.noise)}", "Tukey-Kramer's"
    if a.unequal:  # the points' intervals and `could be best` take each point's value's noise
        intervals = f"Intervals from the {_unequal_text(a.unequal[0])}"
        method = "Games-Howell's (each point's noise)"
    elif a.noise.s is None:
        intervals = f"No intervals ({_noise_text(a.noise)})"
    note = POINTS_NOTE.format(intervals=intervals, method=method, best=sum(1 for b in a.best if b))
    return ["## Points: which could be the best", "", _table(header, lines), "", note, ""]


POINTS_NOTE = (
    "Ranked by the mean of finished runs; a diverged, failed or incomplete run is counted beside "
    "it, not averaged in. {intervals}. `could be best`: no other point beats it by "
    "more than {method} simultaneous 95% allowance, which holds whichever point came out on "
    "top ({best} point(s) here). The top point's lead over the rest is biased upward (it was "
    "picked because its seeds came out high): confirm a winner with fresh seeds "
    "(`trainer.seed=3,4,5`) before quoting its number."
)


CONTRAST_COLUMNS = (
    "factor",
    "level",
    "baseline",
    "within",
    "estimate",
    "se",
    "df",
    "ci_low",
    "ci_high",
    "p",
    "p_adjusted",
    "marked",
    "n_level",
    "n_baseline",
    "diverged_level",
    "ended_level",
    "diverged_baseline",
    "ended_baseline",
)


def write_contrasts_csv(a: Answer, path: Path) -> Path:
    """contrasts.csv: one row per contrast, estimates and intervals in top-1 points."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CONTRAST_COLUMNS)
        for c in a.contrasts:
            values = [getattr(c, k) for k in CONTRAST_COLUMNS]
            writer.writerow(["" if v is None else v for v in values])
    return path


SEED_CSV_COLUMNS = (
    "n",
    "jobs",
    "diverged",
    "failed",
    "incomplete",
    "mean_top1",
    "std_top1",
    "ci_low_top1",
    "ci_high_top1",
    "could_be_best",
)


def write_points_csv(a: Answer, path: Path) -> Path:
    """report_seeds.csv: one row per point, ranked by mean; `n` counts finished jobs only,
    fractions as in metrics.jsonl."""
    keys = list(dict.fromkeys(k for g in a.groups for k in g.point))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, *SEED_CSV_COLUMNS])
        for g, best in zip(a.groups, a.best, strict=True):
            interval = a.interval(g)
            low, high = (None, None) if interval is None else (interval[0] / 100, interval[1] / 100)
            values = [g.n, g.jobs, g.diverged, g.count("failed"), g.count("incomplete")]
            values += [g.mean, g.std, low, high, best]
            writer.writerow([*(g.point.get(k, "") for k in keys), *("" if v is None else v for v in values)])
    return path


def pooled(a: Answer, factor: str) -> dict[str, Contrast]:
    """The pooled contrast of each level of `factor`: {level: contrast}."""
    return {c.level: c for c in a.contrasts if c.factor == factor and c.within == ALL}
