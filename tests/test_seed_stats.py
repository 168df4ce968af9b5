"""Seed statistics of a sweep (resnet_repro.seeds) on synthetic sweeps of known truth: the null
case (every point identical) keeps Holm's family-wise false-positive rate near 5%, a real
difference is found, and the spread sets the precision."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_repro import seeds

POINTS, SEEDS = 12, 3


def groups_of(top1: np.ndarray) -> list[seeds.SeedGroup]:
    """top1[point, seed] (fractions) as a sweep's seed groups."""
    rows = [
        {
            "overrides": {"optim.weight_decay": str(point), "trainer.seed": str(seed)},
            "top1": float(top1[point, seed]),
        }
        for point in range(top1.shape[0])
        for seed in range(top1.shape[1])
    ]
    groups = seeds.seed_groups(rows, lambda r: r["top1"])
    assert groups is not None
    return groups


@pytest.mark.slow  # 3-7 s: 200 simulated sweeps
def test_null_sweeps_of_identical_points_mark_a_point_in_about_5_percent_of_sweeps():
    # 12 identical points x 3 seeds (mean 75%, seed std 0.3 points): any point marked is a false
    # positive. Without the correction 45% of such sweeps mark one; Holm keeps the rate near 5%.
    rng = np.random.default_rng(20260)
    sweeps = 200
    marked, marked_raw = [], []
    for _ in range(sweeps):
        comparisons = seeds.against_best(groups_of(rng.normal(0.75, 0.003, size=(POINTS, SEEDS))))
        marked.append(any(c.beyond_spread for c in comparisons))
        marked_raw.append(any(c.p is not None and c.p < seeds.ALPHA for c in comparisons))
    rate, raw_rate = np.mean(marked), np.mean(marked_raw)
    print(
        f"family-wise false-positive rate over {sweeps} null sweeps: "
        f"Holm {rate:.3f}, uncorrected {raw_rate:.3f}"
    )
    assert sum(marked[:20]) <= 2  # the first 20 sweeps: at most 2 mark any point
    assert rate <= 0.08  # 5% nominal; 0.08 is 2 standard errors above it at 200 sweeps
    assert raw_rate >= 0.3  # the uncorrected test of the same sweeps fires far more often


def test_a_point_three_points_below_the_rest_is_marked_and_the_others_are_not():
    rng = np.random.default_rng(7)
    top1 = rng.normal(0.75, 0.003, size=(POINTS, SEEDS))
    top1[4] -= 0.03  # a real 3-point loss, ten times the seed spread
    comparisons = seeds.against_best(groups_of(top1))
    marked = [c.group.point["optim.weight_decay"] for c in comparisons if c.beyond_spread]
    assert marked == ["4"]
    (worse,) = [c for c in comparisons if c.beyond_spread]
    assert worse.p_adjusted >= worse.p and worse.p_adjusted < seeds.ALPHA


def test_holm_adjusts_step_down_and_keeps_untested_comparisons_empty():
    # sorted 0.01, 0.02, 0.04 of 3 tests: 3 x 0.01, 2 x 0.02 = 0.04, then max(0.04, 1 x 0.04)
    assert seeds.holm([0.04, None, 0.01, 0.02]) == [
        pytest.approx(0.04),
        None,
        pytest.approx(0.03),
        pytest.approx(0.04),
    ]
    assert seeds.holm([0.5, 0.6]) == [pytest.approx(1.0), pytest.approx(1.0)]


def test_welch_p_is_none_when_neither_group_varies():
    # scipy's ttest_ind returns p = 0.0 here: "certain" from two constant sets of seeds
    assert seeds.welch_p((0.7, 0.7, 0.7), (0.8, 0.8, 0.8)) is None
    assert seeds.welch_p((0.7, 0.7), (0.8,)) is None
    assert seeds.welch_p((0.7, 0.71, 0.72), (0.8, 0.8, 0.8)) == pytest.approx(0.0036, abs=1e-3)


def test_the_printed_precision_follows_the_seed_spread():
    tight = seeds.SeedGroup({}, (0.7500, 0.7503, 0.7506), 3)  # std 0.03 points
    loose = seeds.SeedGroup({}, (0.70, 0.72, 0.74), 3)  # std 2 points
    assert tight.text() == "75.03 ± 0.03 (3)"
    assert loose.text() == "72.0 ± 2.0 (3)"
    assert seeds.SeedGroup({}, (0.75, 0.75), 3, nan=1).text() == "75.00 ± 0.00 (2/3 finished, 1 NaN)"
