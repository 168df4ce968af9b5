"""LR schedules stepped once per iteration, built from torch.optim.lr_scheduler.

Milestones are configured in epochs and converted to iterations with the steps per epoch.
Warm-up (LinearLR) is chained in front with SequentialLR; the main schedule's milestones are
shifted by the warm-up length because SequentialLR restarts the second scheduler's count.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LinearLR, LRScheduler, MultiStepLR, SequentialLR

from resnet_repro.config import ScheduleConfig, StabilizerConfig, UserError

SCHEDULE_NAMES = ("step",)


def build_scheduler(
    cfg: ScheduleConfig,
    warmup: StabilizerConfig,
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
) -> LRScheduler:
    if cfg.name not in SCHEDULE_NAMES:
        raise UserError(f"schedule.name={cfg.name!r} is unknown; choose one of {', '.join(SCHEDULE_NAMES)}")
    warmup_steps = round(warmup.warmup_epochs * steps_per_epoch)
    milestones = [m * steps_per_epoch - warmup_steps for m in cfg.milestones]
    if any(m <= 0 for m in milestones):
        raise UserError(
            f"stabilizer.warmup_epochs={warmup.warmup_epochs} reaches past the first LR milestone "
            f"(schedule.milestones={cfg.milestones})"
        )
    main = MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
    if warmup_steps == 0:
        return main
    ramp = LinearLR(
        optimizer, start_factor=warmup.warmup_start_factor, end_factor=1.0, total_iters=warmup_steps
    )
    return SequentialLR(optimizer, schedulers=[ramp, main], milestones=[warmup_steps])
