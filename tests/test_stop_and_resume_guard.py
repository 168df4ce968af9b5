"""A stop acted on before the epoch's evaluation, the resume guard's keys and job shape, the run
directory lock, and a refused directory fsync: in-process, on the demo data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose

from resnet_repro.config import to_dataclass
from resnet_repro.preemption import Interrupts


def demo_cfg(demo_root: Path, *overrides: str):
    return to_dataclass(
        compose(
            [
                "experiment=demo",
                f"data.root={demo_root}",
                "trainer.epochs=2",
                "trainer.batch_size=16",
                "trainer.max_steps_per_epoch=2",
                "data.max_eval_images=32",
                "logging.progress=false",
                "logging.tensorboard=false",
                "stabilizer.warmup_epochs=0",
                "trainer.preempt_check_steps=1",
                *overrides,
            ]
        )
    )


def rows(run_dir: Path) -> list[tuple[int, str]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["epoch"], r["split"]) for r in map(json.loads, lines)]


@pytest.mark.slow
def test_a_stop_on_the_epochs_last_step_comes_before_its_evaluation_which_the_resume_runs(
    demo_root: Path, tmp_path: Path, monkeypatch
):
    from resnet_repro.train import train

    cfg = demo_cfg(demo_root)
    forced: list[int] = []

    def stop_on_first_forced_check(self, step: int, force_check: bool = False) -> bool:
        if force_check:
            forced.append(step)
            self.stopped_by = "SIGTERM"
        return force_check and len(forced) == 1

    with monkeypatch.context() as m:
        m.setattr(Interrupts, "stop_requested", stop_on_first_forced_check)
        stopped = train(cfg, tmp_path)
    assert stopped["preempted"] and stopped["requeued"] is False
    assert forced == [2]  # the epoch's last step, before any evaluation
    assert rows(tmp_path) == []  # the evaluation of epoch 1 was not run before stopping
    resumed = train(cfg, tmp_path)
    assert resumed["epochs_run"] == 2
    assert rows(tmp_path) == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
