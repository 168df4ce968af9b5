"""RunState: what a checkpoint holds, saved and restored in one place."""

from __future__ import annotations

import torch
import torch.nn as nn

from resnet_repro.config import RootConfig, ScheduleConfig, StabilizerConfig
from resnet_repro.data.selection import Normalization
from resnet_repro.training.run_state import TRAINING_KEYS, RunState
from resnet_repro.training.schedule import build_scheduler, resume_fields
from resnet_repro.training.stabilizers import EarlyStopper

# the checkpoint file format: `resnet-repro eval`, resume and older files rely on these keys
CHECKPOINT_KEYS = {
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "early_stop",
    "epoch",
    "step",
    "epoch_step",
    "epoch_skipped",
    "epoch_lr",
    "best_top1",
    "rng",
    "config",
    "version",
    "stopped",
    "job",
    "normalization",
}


def tiny_state(seed: int) -> RunState:
    torch.manual_seed(seed)
    net = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    cfg = RootConfig()
    return RunState(
        net=net,
        model=net,
        optimizer=optimizer,
        schedule=build_scheduler(
            ScheduleConfig(name="cosine"), StabilizerConfig(), optimizer, steps_per_epoch=4, epochs=3
        ),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        early_stop=EarlyStopper(cfg.stabilizer.early_stop),
        config=cfg,
        job={"world_size": 1, "global_batch": 8, "steps_per_epoch": 4},
        normalization=Normalization((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), "computed", "test"),
    )


def test_state_dict_holds_exactly_the_checkpoint_keys():
    state = tiny_state(0).state_dict()
    assert set(state) == CHECKPOINT_KEYS
    assert set(TRAINING_KEYS) <= CHECKPOINT_KEYS
    assert state["normalization"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}


def test_load_state_dict_restores_weights_optimizer_schedule_position_and_rng():
    trained = tiny_state(0)
    for _ in range(5):  # momentum buffers and a moved schedule
        trained.optimizer.zero_grad()
        trained.net(torch.randn(2, 4)).sum().backward()
        trained.optimizer.step()
        trained.schedule.step()
    trained.epoch, trained.step, trained.epoch_step, trained.epoch_skipped = 1, 5, 1, 1
    trained.best_top1, trained.stopped, trained.epoch_lr = 0.25, "early stop", 0.0375
    saved = trained.state_dict()
    expected_draw = torch.rand(3)  # what the generator gives after the save

    fresh = tiny_state(1)
    fresh.load_state_dict(saved)
    torch.testing.assert_close(fresh.net.state_dict(), trained.net.state_dict(), rtol=0, atol=0)
    assert fresh.schedule.lr == trained.schedule.lr and fresh.schedule.iterations == 5
    momentum = [fresh.optimizer.state[p]["momentum_buffer"] for p in fresh.net.parameters()]
    torch.testing.assert_close(
        momentum, [trained.optimizer.state[p]["momentum_buffer"] for p in trained.net.parameters()]
    )
    assert (fresh.epoch, fresh.step, fresh.epoch_step, fresh.epoch_skipped) == (1, 5, 1, 1)
    assert (fresh.best_top1, fresh.stopped, fresh.epoch_lr) == (0.25, "early stop", 0.0375)
    torch.testing.assert_close(torch.rand(3), expected_draw, rtol=0, atol=0)


def test_resume_fields_are_the_chosen_schedules_and_its_length_only_where_its_state_holds_it():
    assert "trainer.epochs" in resume_fields("cosine") and "trainer.epochs" in resume_fields("linear_ramp")
    assert "trainer.epochs" not in resume_fields("step")
    assert {"schedule.milestones", "schedule.gamma"} <= set(resume_fields("step"))
    assert "schedule.patience" not in resume_fields("step")  # inert under the step schedule
    assert "schedule.patience" in resume_fields("plateau")
    assert "stabilizer.warmup_epochs" in resume_fields("constant")


def test_a_rehearsal_jump_clears_the_epochs_skipped_steps_only_when_the_position_moves():
    from resnet_repro.training.train import _jump

    state = tiny_state(0)
    state.step, state.epoch, state.epoch_step, state.epoch_skipped = 7, 1, 3, 2
    _jump(state, 5, steps_per_epoch=4)  # a window that starts behind the resumed position
    assert (state.step, state.epoch_skipped) == (7, 2)
    _jump(state, 9, steps_per_epoch=4)
    assert (state.step, state.epoch, state.epoch_step, state.epoch_skipped) == (9, 2, 1, 0)
