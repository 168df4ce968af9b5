"""Data-wait accounting: the share of step time spent blocked on the input pipeline.

The timer reads `time.perf_counter`; the tests replace it with a clock that advances only when the
source or the step "works", so the numbers are exact on any machine however loaded (sleep-based
versions of these tests depended on the scheduler).
"""

from __future__ import annotations

import pytest

from resnet_repro.training import metrics
from resnet_repro.training.metrics import StepTimer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(metrics.time, "perf_counter", fake)
    return fake


def slow_source(clock: FakeClock, n: int, delay_s: float):
    for i in range(n):
        clock.advance(delay_s)
        yield i


@pytest.mark.parametrize(
    ("wait_s", "work_s", "expected"), [(0.04, 0.0, 1.0), (0.0, 0.04, 0.0), (0.03, 0.01, 0.75)]
)
def test_data_wait_fraction_is_the_share_of_step_time_blocked_on_the_next_batch(
    clock, wait_s, work_s, expected
):
    timer = StepTimer()
    for _ in timer.wrap(slow_source(clock, 8, wait_s)):
        clock.advance(work_s)
    summary = timer.summary()
    assert summary["data_wait_fraction"] == pytest.approx(expected)
    assert summary["step_time_p50_s"] == pytest.approx(wait_s + work_s)
    assert len(timer.steps) == 7 and len(timer.waits) == 8  # the first batch's start-up is not a step


def test_an_empty_epoch_reports_nothing():
    timer = StepTimer()
    assert list(timer.wrap([])) == [] and timer.summary() == {}
