"""LR schedules stepped once per iteration, built from torch.optim.lr_scheduler.

Milestones are configured in epochs and converted to iterations with the steps per epoch. An
optional linear warm-up (LinearLR) is chained in front with SequentialLR; the main schedule's
milestones are shifted by the warm-up length because SequentialLR restarts the second
scheduler's count. `plateau` reacts to the model-selection split once per epoch, after the
warm-up (see `Plateau`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

from resnet_repro.config import ScheduleConfig, StabilizerConfig, UserError
from resnet_repro.training.stabilizers import NoImprovement

SCHEDULE_NAMES = ("step", "cosine", "plateau", "constant", "linear_ramp")
# the schedule.* fields each schedule reads (a plateau patience under the step schedule is inert)
FIELDS = {
    "step": ("milestones", "gamma"),
    "cosine": ("final_lr_factor",),
    "linear_ramp": ("peak_epoch", "end_factor"),
    "plateau": ("patience", "factor", "metric", "min_delta"),
}
# schedules whose state holds the run's length: trainer.epochs is part of them
LENGTH_DEPENDENT = ("cosine", "linear_ramp")


def resume_fields(name: str) -> list[str]:
    """The config keys whose values the schedule `name` has baked into its state: a resume takes
    the state from the checkpoint, so a changed value would be silently ignored."""
    keys = ["schedule.name", *(f"schedule.{k}" for k in FIELDS.get(name, ()))]
    keys += ["stabilizer.warmup_epochs", "stabilizer.warmup_start_factor"]  # the warm-up is chained in
    if name in LENGTH_DEPENDENT:
        keys.append("trainer.epochs")
    return keys


class Plateau:
    """LR x `factor` once `patience` evaluations in a row have not improved; the count restarts
    after each cut.

    Not torch's ReduceLROnPlateau: that cuts after patience + 1 bad epochs and measures
    improvement its own way; this uses `NoImprovement`, the rule early stopping uses, so equal
    settings mean the same thing in both."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.rule = NoImprovement(cfg.metric, cfg.min_delta)
        self.patience, self.factor = cfg.patience, cfg.factor

    def update(self, optimizer: torch.optim.Optimizer, metrics: dict[str, float]) -> None:
        if self.rule.update(metrics[self.rule.metric]) or self.rule.bad_evals < self.patience:
            return
        # the per-iteration schedulers that follow (ConstantLR) read the group's LR and keep it
        for group in optimizer.param_groups:
            group["lr"] *= self.factor
        self.rule.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "num_bad_epochs" in state:  # a checkpoint from when this was torch's ReduceLROnPlateau
            best = state["best"]
            state = {"best": best if math.isfinite(best) else None, "bad_evals": state["num_bad_epochs"]}
        self.rule.load_state_dict(state)


class LRSchedule:
    """`step()` after every optimizer step; `epoch_end(metrics)` after every model-selection
    evaluation."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        per_iteration: LRScheduler,
        plateau: Plateau | None,
        warmup_steps: int,
    ) -> None:
        self.optimizer = optimizer
        self.per_iteration = per_iteration
        self.plateau = plateau
        self.warmup_steps = warmup_steps
        self.iterations = 0

    def step(self) -> None:
        self.per_iteration.step()
        self.iterations += 1

    @property
    def warmed_up(self) -> bool:
        """Whether the LR warm-up is over (always, without one)."""
        return self.iterations >= self.warmup_steps

    def epoch_end(self, metrics: dict[str, float]) -> None:
        """The model-selection split's evaluation (top1, loss); ignored inside the warm-up."""
        if self.plateau is not None and self.warmed_up:
            self.plateau.update(self.optimizer, metrics)

    @property
    def lr(self) -> float:
        """The LR the next step uses (of the first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "per_iteration": self.per_iteration.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "iterations": self.iterations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.per_iteration.load_state_dict(state["per_iteration"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        self.iterations = state["iterations"]


def late_milestones(cfg: ScheduleConfig, epochs: int) -> str | None:
    """A warning where step milestones sit at or after the last epoch (they never fire: a preset's
    [30, 60] in a shortened run, or a typo), else None. Not an error: smoke runs shorten presets."""
    late = [m for m in cfg.milestones if m >= epochs] if cfg.name == "step" else []
    if not late:
        return None
    return (
        f"schedule.milestones {late} are at or after the last epoch ({epochs}): the LR is never "
        f"multiplied by {cfg.gamma:g} there"
    )


def build_scheduler(
    cfg: ScheduleConfig,
    warmup: StabilizerConfig,
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: int,
) -> LRSchedule:
    if cfg.name not in SCHEDULE_NAMES:
        raise UserError(f"schedule.name={cfg.name!r} is unknown; choose one of {', '.join(SCHEDULE_NAMES)}")
    warmup_steps = round(warmup.warmup_epochs * steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    if warmup_steps >= total_steps and warmup_steps > 0:
        raise UserError(
            f"stabilizer.warmup_epochs={warmup.warmup_epochs} is not shorter than trainer.epochs={epochs}"
        )
    plateau = None
    if cfg.name == "linear_ramp":
        return LRSchedule(optimizer, linear_ramp(cfg, warmup, optimizer, steps_per_epoch, epochs), None, 0)
    if cfg.name == "step":
        milestones = [m * steps_per_epoch - warmup_steps for m in cfg.milestones]
        if any(m <= 0 for m in milestones):
            raise UserError(
                f"stabilizer.warmup_epochs={warmup.warmup_epochs} reaches past the first LR milestone "
                f"(schedule.milestones={cfg.milestones})"
            )
        main: LRScheduler = MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
    elif cfg.name == "cosine":
        peak = optimizer.param_groups[0]["lr"]
        main = CosineAnnealingLR(
            optimizer, T_max=total_steps - warmup_steps, eta_min=peak * cfg.final_lr_factor
        )
    else:  # constant, and plateau (whose changes Plateau makes once per epoch)
        main = ConstantLR(optimizer, factor=1.0, total_iters=0)
        if cfg.name == "plateau":
            plateau = Plateau(cfg)
    if warmup_steps == 0:
        return LRSchedule(optimizer, main, plateau, 0)
    ramp = LinearLR(
        optimizer, start_factor=warmup.warmup_start_factor, end_factor=1.0, total_iters=warmup_steps
    )
    sequence = SequentialLR(optimizer, schedulers=[ramp, main], milestones=[warmup_steps])
    return LRSchedule(optimizer, sequence, plateau, warmup_steps)


def linear_ramp(
    cfg: ScheduleConfig,
    warmup: StabilizerConfig,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    epochs: int,
) -> LRScheduler:
    """Per iteration, the peak LR times the piecewise-linear interpolation of (0, 0),
    (peak_epoch, 1), (epochs, end_factor) in epochs (FFCV's ResNet-50 schedule)."""
    if warmup.warmup_epochs > 0:
        raise UserError(
            f"schedule=linear_ramp ramps up to its peak by itself (schedule.peak_epoch={cfg.peak_epoch}); "
            f"set stabilizer.warmup_epochs=0 (it is {warmup.warmup_epochs})"
        )
    if not 0 < cfg.peak_epoch < epochs:
        raise UserError(f"schedule.peak_epoch={cfg.peak_epoch} must be inside the run (0, {epochs}) epochs")
    if not 0 <= cfg.end_factor <= 1:
        raise UserError(f"schedule.end_factor={cfg.end_factor} must be in [0, 1] (a fraction of the peak)")
    peak, total = cfg.peak_epoch * steps_per_epoch, epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step <= peak:
            return step / peak
        return 1.0 + (cfg.end_factor - 1.0) * min(1.0, (step - peak) / (total - peak))

    return LambdaLR(optimizer, factor)
