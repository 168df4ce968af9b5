"""Everything a checkpoint holds, in one object: `RunState.state_dict()` is what last.pt, best.pt
and epoch_*.pt contain, and `load_state_dict()` is how a resume restores it.

Checkpoint keys (the file format; `resnet-repro eval` and older files rely on them):
    model, optimizer, scheduler, scaler, early_stop   the stateful objects' own state dicts
    epoch, step, epoch_step                           the data position (see RunState)
    best_top1                                         the model-selection score so far
    rng                                               Python, numpy and torch generator states
    config, version                                   the run's resolved config and the tool version
    stopped                                           why training stopped early, or None
    job                                               world size, global batch, steps per epoch
    normalization                                     mean, std (and mean_image) the model was fed
    classes                                           the class names, in the order of the model's outputs
    ema                                               the weight average (only with trainer.ema.decay)
    epoch_metrics                                     train metrics of a trained, unevaluated epoch
    epoch_lr                                          the LR epoch `epoch` began with (its rows' `lr`)
    epoch_tally                                       the train sums of a part-done epoch, over all ranks
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from resnet_repro import __version__, checkpoint
from resnet_repro.config import RootConfig
from resnet_repro.data.selection import Normalization
from resnet_repro.training.ema import WeightEMA
from resnet_repro.training.schedule import LRSchedule
from resnet_repro.training.stabilizers import EarlyStopper
from resnet_repro.training.summary import Derived

# the keys without which a file is not a training checkpoint of this tool (resume refuses it)
TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "epoch_step", "rng")


def job_shape(derived: Derived) -> dict[str, int]:
    """What a checkpoint's data position and LR schedule are counted in: a resume needs the same."""
    return {
        "world_size": derived.world_size,
        "global_batch": derived.global_batch,
        "steps_per_epoch": derived.steps_per_epoch,
    }


@dataclass
class RunState:
    """The run's stateful parts. `net` is the bare model (its state dict is saved); `model` is what
    runs the forward pass (DDP-wrapped and/or compiled; not saved itself).

    The data position: `epoch` epochs are complete, and `epoch_step` steps of the next one are
    done (0 at an epoch boundary); `step` counts optimizer steps over the whole run. `job`,
    `normalization` and `classes` are recorded for the resume check and for `resnet-repro eval`; a resume
    compares them (resume.check_resumable) instead of loading them."""

    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    early_stop: EarlyStopper
    config: RootConfig
    job: dict[str, int] | None = None
    normalization: Normalization | None = None
    classes: tuple[str, ...] | None = None  # output i is classes[i] (the training split's folders)
    best_top1: float = -1.0
    epoch: int = 0
    step: int = 0
    epoch_step: int = 0
    epoch_skipped: int = 0  # steps of epoch `epoch` skipped as non-finite so far (nonfinite=skip)
    stopped: str | None = None  # the reason training stopped early (early stopping), or None
    ema: WeightEMA | None = None  # trainer.ema.decay: the weight average, updated after each step
    # the train metrics of epoch `epoch` when all its steps are done but its evaluation is not (a
    # stop on its last step is acted on before the evaluation); None otherwise
    epoch_metrics: dict[str, float] | None = None
    # the LR epoch `epoch` began with, which its metrics rows report; None until an epoch begins
    epoch_lr: float | None = None
    # epoch `epoch`'s train sums so far, over all ranks (loop.EpochTally.snapshot), while it is part
    # done: a launch resuming it mid-way reports the whole epoch; None at an epoch boundary
    epoch_tally: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "early_stop": self.early_stop.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "epoch_step": self.epoch_step,
            "epoch_skipped": self.epoch_skipped,
            "best_top1": self.best_top1,
            "rng": checkpoint.rng_state(),
            "config": dataclasses.asdict(self.config),
            "version": __version__,
            "stopped": self.stopped,
            "job": self.job,
            "epoch_lr": self.epoch_lr,
        }
        if self.classes is not None:  # `eval` and a resume refuse data of other classes
            state["classes"] = list(self.classes)
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.epoch_metrics is not None:
            state["epoch_metrics"] = dict(self.epoch_metrics)
        if self.epoch_tally is not None and self.epoch_step > 0:
            state["epoch_tally"] = self.epoch_tally
        if self.normalization is not None:
            norm = self.normalization
            state["normalization"] = {"mean": list(norm.mean), "std": list(norm.std)}
            if norm.mean_image is not None:  # so `resnet-repro eval` subtracts exactly this image
                state["normalization"]["mean_image"] = torch.from_numpy(norm.mean_image)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (checked by resume.check_resumable first). The model, optimizer,
        schedule and scaler raise RuntimeError / ValueError / KeyError when the file does not fit."""
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.early_stop.load_state_dict(state["early_stop"])
        self.best_top1 = float(state["best_top1"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.epoch_step = int(state["epoch_step"])
        self.epoch_skipped = int(state.get("epoch_skipped", 0))  # absent in older checkpoints
        self.stopped = state.get("stopped")
        self.epoch_metrics = state.get("epoch_metrics")
        self.epoch_lr = state.get("epoch_lr")  # absent in older checkpoints: the resumed LR stands in
        self.epoch_tally = state.get("epoch_tally")  # absent: the resumed steps' metrics stand in
        if self.ema is not None and "ema" in state:  # a run that had none starts its average here
            self.ema.load_state_dict(state["ema"])
        checkpoint.set_rng_state(state["rng"])

    def save(self, path) -> None:
        """Write state_dict() atomically (callers: rank 0 only)."""
        checkpoint.save_atomic(self.state_dict(), path)
