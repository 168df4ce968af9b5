"""Calibrate `resnet-repro report`'s answer on simulated sweeps of known truth.

Each simulated sweep is the seed's question at its real size: weight decay (3 values) x max norm
(off, 1, 2, 5) x 3 seeds, top-1 = 76% + a weight-decay effect + a cost of `--cost` points at max
norm 1 and 2 (0 at 5) + seed noise of `--std` points. The report's own code (report.sweep_answer_of)
reads each sweep, and the script counts how often its pooled contrasts are marked when nothing
differs (false positives), how often a 95% interval holds the true difference (coverage), how
often the pooled "2 vs off" interval lies below 0 and is marked when clipping costs `--cost`
points (power), and how often the "could be best" set holds every truly best point.

    .venv/bin/python scripts/calibrate_sweeps.py                 # 2,000 sweeps of each kind
    .venv/bin/python scripts/calibrate_sweeps.py --on-disk 400   # also through job folders and collect()

`--on-disk N` writes N sweeps in the report's input layout (.hydra/overrides.yaml, config.yaml,
metrics.jsonl, final.json per job) and reads them back with report.collect(), and checks that
each gives the same contrasts as the rows built in memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from resnet_repro.reporting import report
from resnet_repro.reporting.contrasts import ALL

WD_KEY, MN_KEY = "optim.weight_decay", "stabilizer.max_norm"
WDS = {"5e-05": -0.1, "0.0001": 0.2, "0.0002": 0.0}  # weight decay -> its effect, points
# --weight-decay-off: an off value on the weight-decay axis too, and no weight-decay effect, so
# that its contrasts (within each max norm, off's included) are null
WDS_WITH_OFF = {"0": 0.0, "0.0001": 0.0, "0.0002": 0.0}
MAX_NORMS = ("null", "1", "2", "5")
COSTLY = ("1", "2")  # the max norms that cost `cost` points
BASE = 76.0


def truth(wd: str, max_norm: str, cost: float, wds: dict[str, float] = WDS) -> float:
    """The true mean top-1 (points) of a point."""
    return BASE + wds[wd] - (cost if max_norm in COSTLY else 0.0)


def simulate(
    rng: np.random.Generator,
    *,
    cost: float,
    std: float,
    seeds: int = 3,
    off_std: float | None = None,
    wds: dict[str, float] = WDS,
) -> list[dict]:
    """One sweep's rows, as report.collect() returns them for finished jobs; `off_std`: the seed
    noise of the max-norm-off points when it differs from the others' `std`."""
    rows = []
    for wd in wds:
        for mn in MAX_NORMS:
            sd = off_std if (off_std is not None and mn == "null") else std
            for seed in range(seeds):
                top1 = (truth(wd, mn, cost, wds) + rng.normal(0.0, sd)) / 100
                overrides = {WD_KEY: wd, MN_KEY: mn, "trainer.seed": str(seed), "trainer.epochs": "16"}
                rows.append(
                    {
                        "job": f"{WD_KEY}={wd},{MN_KEY}={mn},trainer.seed={seed}",
                        "path": None,
                        "overrides": overrides,
                        "status": report.DONE,
                        "outcome": "finished",
                        "best_top1": top1,
                        "final_top1": top1,
                        "score_split": "holdout",
                    }
                )
    return rows


def write_sweep(rows: list[dict], folder: Path) -> Path:
    """The rows as job folders: what Hydra and `train` leave (.hydra/overrides.yaml, config.yaml,
    metrics.jsonl, final.json)."""
    for row in rows:
        job = folder / row["job"]
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"{k}={v}" for k, v in row["overrides"].items()])
        )
        (job / "config.yaml").write_text("trainer: {epochs: 16}\n")
        metrics = [
            {"epoch": 16, "split": "train", "loss": 1.0, "epoch_time_s": 1.0},
            {"epoch": 16, "split": "holdout", "loss": 1.0, "top1": row["best_top1"]},
        ]
        (job / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
        final = {"epochs": 16, "epochs_run": 16, "top1": row["final_top1"], "selection": "holdout"}
        (job / "final.json").write_text(json.dumps(final))
    return folder


def judge(rows: list[dict], cost: float, wds: dict[str, float] = WDS) -> dict[str, float]:
    """What the report says of one sweep, against the truth."""
    answer = report.sweep_answer_of(rows)
    mn = [c for c in answer.contrasts if c.factor == MN_KEY]
    pooled = [c for c in mn if c.within == ALL]
    within = [c for c in mn if c.within != ALL]
    wd = [c for c in answer.contrasts if c.factor == WD_KEY]  # null: only with WDS_WITH_OFF

    def true_difference(c) -> float:
        return -cost if c.level in COSTLY else 0.0

    def covered(cs) -> list[bool]:
        return [c.ci_low <= true_difference(c) <= c.ci_high for c in cs]

    def point_covered(off: bool) -> list[bool]:
        return [
            low <= truth(g.point[WD_KEY], g.point[MN_KEY], cost, wds) <= high
            for g in answer.groups
            if (g.point[MN_KEY] == "null") == off
            for low, high in [answer.interval(g)]
        ]

    two = next(c for c in pooled if c.level == "2")
    best_mean = max(truth(w, m, cost, wds) for w in wds for m in MAX_NORMS)
    truly_best = [
        ok
        for g, ok in zip(answer.groups, answer.best, strict=True)
        if truth(g.point[WD_KEY], g.point[MN_KEY], cost, wds) == best_mean
    ]
    return {
        "any_pooled_marked": float(any(c.marked for c in pooled)),
        "any_contrast_marked": float(any(c.marked for c in mn if true_difference(c) == 0)),
        "weight_decay_marked": float(any(c.marked for c in wd)),
        "pooled_covered": float(np.mean(covered(pooled))),
        "within_covered": float(np.mean(covered(within))),
        "off_points_covered": float(np.mean(point_covered(True))),
        "points_covered": float(np.mean(point_covered(False))),
        "two_below_zero": float(two.ci_high < 0),
        "two_marked": float(two.marked and two.estimate < 0),
        "best_kept": float(all(truly_best)),
    }


def measure(
    sweeps: int,
    *,
    cost: float,
    std: float,
    seed: int,
    off_std: float | None = None,
    wds: dict[str, float] = WDS,
) -> dict[str, float]:
    """The mean of `judge` over `sweeps` simulated sweeps."""
    rng = np.random.default_rng(seed)
    results = [
        judge(simulate(rng, cost=cost, std=std, off_std=off_std, wds=wds), cost, wds) for _ in range(sweeps)
    ]
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


def _same(x, y) -> bool:
    """Two contrasts with the same name, estimate, interval and adjusted p."""
    numbers = ("estimate", "ci_low", "ci_high", "p_adjusted")
    return (x.name, x.within) == (y.name, y.within) and all(
        np.isclose(getattr(x, k), getattr(y, k)) for k in numbers
    )


def same_through_files(sweeps: int, *, cost: float, std: float, seed: int) -> int:
    """Write `sweeps` sweeps as job folders, read them with report.collect(), and count those
    whose contrasts equal the in-memory rows' (all of them, or the report reads wrong)."""
    rng = np.random.default_rng(seed)
    same = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(sweeps):
            rows = simulate(rng, cost=cost, std=std)
            read = report.collect(write_sweep(rows, Path(tmp) / f"sweep{i}"))
            a, b = report.sweep_answer_of(rows).contrasts, report.sweep_answer_of(read).contrasts
            same += len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=False))
    return same


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweeps", type=int, default=2000, help="simulated sweeps of each kind (null, cost)")
    p.add_argument("--cost", type=float, default=0.3, help="the true cost of max norm 1 and 2, points")
    p.add_argument("--std", type=float, default=0.15, help="seed standard deviation, points")
    p.add_argument(
        "--off-std", type=float, default=None, help="the max-norm-off points' seed std, if it differs"
    )
    p.add_argument(
        "--weight-decay-off",
        action="store_true",
        help="weight decays 0, 1e-4, 2e-4 of equal truth: their contrasts against 0 are null too",
    )
    p.add_argument(
        "--on-disk", type=int, default=0, metavar="N", help="also read N sweeps through job folders"
    )
    p.add_argument("--seed", type=int, default=2026)
    ns = p.parse_args(argv)
    start = time.perf_counter()
    wds = WDS_WITH_OFF if ns.weight_decay_off else WDS
    null = measure(ns.sweeps, cost=0.0, std=ns.std, seed=ns.seed, off_std=ns.off_std, wds=wds)
    effect = measure(ns.sweeps, cost=ns.cost, std=ns.std, seed=ns.seed + 1, off_std=ns.off_std, wds=wds)
    pct = {
        k: {name: f"{100 * v:.1f}%" for name, v in r.items()} for k, r in (("null", null), ("cost", effect))
    }
    lines = [
        f"{ns.sweeps} sweeps each: {len(wds)} weight decays ({', '.join(wds)}) x max norm off/1/2/5 x 3 "
        f"seeds, seed std {ns.std} points"
        + ("" if ns.off_std is None else f" ({ns.off_std} at max norm off)"),
        "null (nothing differs):",
        f"  a pooled max-norm contrast marked (Holm p < 0.05): {pct['null']['any_pooled_marked']}",
        f"  any max-norm contrast marked, within ones included: {pct['null']['any_contrast_marked']}",
        *(
            [
                f"  any weight-decay contrast marked (vs 0, within each max norm and pooled): "
                f"{pct['null']['weight_decay_marked']}"
            ]
            if ns.weight_decay_off
            else []
        ),
        f"  95% intervals holding the truth: pooled {pct['null']['pooled_covered']}, "
        f"within {pct['null']['within_covered']}",
        f"  points' 95% intervals holding their truth: max norm off {pct['null']['off_points_covered']}, "
        f"the others {pct['null']['points_covered']}",
        f"  'could be best' holds every point: {pct['null']['best_kept']}",
        f"max norm 1 and 2 cost {ns.cost} points:",
        f"  pooled '2 vs off' interval below 0: {pct['cost']['two_below_zero']}; "
        f"marked: {pct['cost']['two_marked']}",
        f"  95% intervals holding the truth: pooled {pct['cost']['pooled_covered']}, "
        f"within {pct['cost']['within_covered']}",
        f"  'could be best' holds every truly best point: {pct['cost']['best_kept']}",
        f"Monte Carlo standard error of a 5% rate over {ns.sweeps} sweeps: "
        f"{100 * np.sqrt(0.05 * 0.95 / ns.sweeps):.1f} points",
    ]
    print("\n".join(lines))
    if ns.on_disk:
        same = same_through_files(ns.on_disk, cost=ns.cost, std=ns.std, seed=ns.seed + 2)
        print(f"through job folders and report.collect(): {same} of {ns.on_disk} sweeps, the same contrasts")
        if same != ns.on_disk:
            sys.exit(1)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
