"""Data-wait accounting: the share of step time spent blocked on the input pipeline."""

from __future__ import annotations

import time

import pytest

from resnet_repro.metrics import StepTimer


def slow_source(n: int, delay_s: float):
    for i in range(n):
        time.sleep(delay_s)
        yield i


@pytest.mark.parametrize(
    ("wait_s", "work_s", "expected"), [(0.04, 0.0, 1.0), (0.0, 0.04, 0.0), (0.03, 0.03, 0.5)]
)
def test_data_wait_fraction_is_the_share_of_step_time_blocked_on_the_next_batch(wait_s, work_s, expected):
    timer = StepTimer()
    for _ in timer.wrap(slow_source(8, wait_s)):
        time.sleep(work_s)
    summary = timer.summary()
    assert summary["data_wait_fraction"] == pytest.approx(expected, abs=0.2)
    assert summary["step_time_p50_s"] == pytest.approx(wait_s + work_s, abs=0.03)
    assert len(timer.steps) == 7 and len(timer.waits) == 8  # the first batch's start-up is not a step


def test_an_empty_epoch_reports_nothing():
    timer = StepTimer()
    assert list(timer.wrap([])) == [] and timer.summary() == {}
