"""A rehearsal's step plan: which training steps of a run to actually train, and which to jump over.

`resnet-repro rehearse` trains the run's own config, on a sample of its data, but only a few steps
at each point of the schedule where behaviour changes: the first step, the end of the LR warm-up,
each LR milestone, the peak of a linear ramp, the first epoch of each progressive-resizing size and
of the full DropBlock rate, and the last epoch. Between them the trainer jumps: the step count, the
data position and the LR schedule move on as if the skipped steps had been trained.

The plan is run control handed to `train.train`, never part of the config (a run directory's
config.yaml is the real run's)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from resnet_repro.config import RootConfig
from resnet_repro.data import progressive
from resnet_repro.data.loaders import Loader


@dataclass(frozen=True)
class Window:
    """Global steps [start, end) of one epoch to train; `why` names the schedule points in it."""

    start: int
    end: int
    why: str


PHASES = ("first", "second", "both")


@dataclass(frozen=True)
class StepPlan:
    """`steps_per_point` steps from each schedule point; `phase`: "first" trains every window but
    the last and stops with last.pt written (the process then exits); "second", a new launch,
    resumes from that checkpoint, trains the last window and finishes (final evaluation,
    final.json); "both": one after the other in the same processes (torchrun / srun ranks, which
    cannot be launched twice from here). `images_per_step`: each trained step sees only the first
    that many images of each process's batch (None: all of them); the loader still reads and
    decodes the configured batch."""

    steps_per_point: int
    phase: str = "first"
    images_per_step: int | None = None

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase={self.phase!r}: expected one of {', '.join(PHASES)}")

    def windows(self, cfg: RootConfig, steps_per_epoch: int) -> list[Window]:
        every = windows(cfg, steps_per_epoch, self.steps_per_point)
        if len(every) == 1:  # one point: the first phase trains it, the second resumes a finished run
            return every if self.phase == "first" else []
        return every[:-1] if self.phase == "first" else every[-1:]


def change_points(cfg: RootConfig, steps_per_epoch: int) -> list[tuple[int, str]]:
    """(global step, what changes there), sorted, for a run of cfg.trainer.epochs epochs of
    `steps_per_epoch` steps. A plateau schedule's cuts depend on the evaluations and have no fixed
    step: its first post-warm-up epoch end is where it starts judging."""
    spe, epochs = steps_per_epoch, cfg.trainer.epochs
    total = epochs * spe
    points = [(0, "first step")]
    warmup = round(cfg.stabilizer.warmup_epochs * spe)
    if 0 < warmup < total:
        points.append((warmup - 1, "end of warm-up"))
    s = cfg.schedule
    if s.name == "step":
        points += [(m * spe, f"LR milestone (epoch {m})") for m in s.milestones if m < epochs]
    elif s.name == "linear_ramp":
        peak = round(s.peak_epoch * spe)
        points.append((min(peak, total - 1), f"LR ramp peak (epoch {s.peak_epoch:g})"))
    if progressive.is_active(cfg.data.progressive):
        size = None
        for epoch in range(epochs):
            now = progressive.size_at(cfg.data.progressive, epoch, epochs)
            if now != size:
                points.append((epoch * spe, f"training crop {now} px"))
                size = now
    ramp = cfg.regularization.dropblock_ramp_epochs
    if cfg.regularization.dropblock > 0 and 0 < ramp < epochs:
        points.append((ramp * spe, "full DropBlock rate"))
    points.append(((epochs - 1) * spe, "last epoch"))
    return sorted(set(points))


def windows(cfg: RootConfig, steps_per_epoch: int, steps_per_point: int) -> list[Window]:
    """`steps_per_point` steps from each change point, clipped to the point's epoch (a window ends
    the epoch: evaluation and checkpoint follow it); overlapping windows are merged."""
    spe = steps_per_epoch
    merged: list[Window] = []
    for step, why in change_points(cfg, spe):
        epoch_end = (step // spe + 1) * spe
        start, end = step, min(step + steps_per_point, epoch_end)
        if merged and start < merged[-1].end or merged and merged[-1].end == start and start % spe:
            last = merged.pop()
            start, end, why = last.start, max(last.end, end), f"{last.why}, {why}"
        merged.append(Window(start, end, why))
    return merged


class FirstImages:
    """A loader whose batches are the first `count` images of another loader's batches (a
    rehearsal's step on a machine too small for the configured batch: the loader's work is the
    real run's, the model's step is on a part of it)."""

    def __init__(self, loader: Loader, count: int) -> None:
        self.loader, self.count = loader, count

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield images[: self.count], labels[: self.count]
