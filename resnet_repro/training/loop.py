"""The training loop: `train_step` (one optimizer step, written out) and `train_one_epoch`, which
runs it over one epoch's batches, keeps the data position and writes mid-epoch checkpoints."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from resnet_repro.cluster import distributed
from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.cluster.preemption import Interrupts
from resnet_repro.config import RootConfig
from resnet_repro.data.loaders import Loader
from resnet_repro.evaluation.evaluate import autocast
from resnet_repro.training.compiling import graphs_compiled
from resnet_repro.training.metrics import MetricsLogger, NullLogger, StepTimer, peak_memory_mb
from resnet_repro.training.optim import l1_penalty, l1_weights
from resnet_repro.training.run_state import RunState
from resnet_repro.training.stabilizers import (
    BufferSnapshot,
    NonFiniteError,
    NonFiniteGuard,
    grad_norm_summary,
)


@dataclass
class Parts:
    """What a training run touches. `state` is everything a checkpoint holds; the guard, logger
    and interrupts live as long as this process. `ckpt_dir`: where `save()` writes; None on ranks
    other than 0 and where nothing is saved (benchmarks, tests)."""

    state: RunState
    guard: NonFiniteGuard
    logger: MetricsLogger | NullLogger
    interrupts: Interrupts
    ckpt_dir: Path | None = None

    def save(self, name: str = "last.pt") -> None:
        if self.ckpt_dir is not None:
            self.logger.flush()  # tb/ holds every step the checkpoint holds
            self.state.save(self.ckpt_dir / name)


@dataclass(frozen=True)
class StepSettings:
    """What every step of an epoch reads, resolved once per epoch."""

    precision: str
    label_smoothing: float
    l1: float
    l1_params: list[nn.Parameter]
    clip_at: float  # math.inf: measure the gradient norm, clip nothing
    nonfinite: str
    max_skips: int
    # BatchNorm statistics before each step, put back if the step turns out non-finite
    buffers: BufferSnapshot | None

    @classmethod
    def of(cls, cfg: RootConfig, net: nn.Module) -> StepSettings:
        reg, st = cfg.regularization, cfg.stabilizer
        return cls(
            precision=cfg.trainer.precision,
            label_smoothing=reg.label_smoothing,
            l1=reg.l1,
            l1_params=l1_weights(net) if reg.l1 > 0 else [],
            clip_at=st.max_norm if st.max_norm else math.inf,
            nonfinite=st.nonfinite,
            max_skips=st.max_skips,
            buffers=BufferSnapshot(net) if st.nonfinite != "off" else None,
        )


@dataclass(frozen=True)
class StepResult:
    loss: torch.Tensor  # the data loss (without the L1 penalty), on the device
    logits: torch.Tensor
    grad_norm: torch.Tensor  # the total gradient norm before clipping, on the device
    lr: float  # the LR this step used
    applied: bool  # False: the step was non-finite and skipped (stabilizer.nonfinite=skip)


def train_step(
    parts: Parts, s: StepSettings, images: torch.Tensor, labels: torch.Tensor, env: DistEnv
) -> StepResult:
    """One optimizer step: forward under autocast, loss, backward, unscale, clip, non-finite
    check, optimizer step, LR schedule step. Raises NonFiniteError when a non-finite step stops
    the run (the update is not applied: the model is still the last good state).

    Host syncs: one per step for the non-finite verdict (none with stabilizer.nonfinite=off; with
    fp16 the gradient scaler makes one anyway)."""
    state, guard = parts.state, parts.guard
    lr = state.schedule.lr
    if s.buffers is not None:
        s.buffers.take()
    with autocast(images.device, s.precision):
        logits = state.model(images)
        data_loss = F.cross_entropy(logits, labels, label_smoothing=s.label_smoothing)
    # the L1 penalty is optimized but not reported: the train loss stays comparable with the
    # evaluation loss and the chance level
    loss = data_loss + l1_penalty(s.l1_params, s.l1) if s.l1 > 0 else data_loss

    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.unscale_(state.optimizer)  # clip and measure the true gradient, not the fp16-scaled one
    grad_norm = nn.utils.clip_grad_norm_(state.net.parameters(), s.clip_at)  # returns the pre-clip norm

    # fp16: an overflowing gradient is the scaler's business (it skips the step and lowers its
    # scale), so only the loss is checked there
    checked_norm = grad_norm if s.precision != "fp16" else torch.zeros_like(grad_norm)
    applied = guard.is_finite(loss, checked_norm, env)
    if applied:
        guard.ok()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if state.ema is not None:
            state.ema.update(state.net)
    else:
        # every rank (the verdict is shared): the forward's BatchNorm update is undone with the step
        s.buffers.restore()  # type: ignore[union-attr]  # not None: the guard is on
        stop = s.nonfinite == "stop" or guard.skipped_in_a_row >= s.max_skips
        if env.is_main:
            guard.report(state.net, loss, labels, epoch=state.epoch + 1, step=state.step, lr=lr, stopped=stop)
        if stop:
            raise NonFiniteError(
                f"non-finite loss or gradient at epoch {state.epoch + 1}, step {state.step} (LR {lr:.4g}); "
                f"report {guard.report_path}; the last good state is in checkpoints/last.pt"
            )
        guard.skip()
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.update()
    state.schedule.step()
    return StepResult(data_loss, logits, grad_norm, lr, applied)


class EpochTally:
    """Loss sum, correct@1 and images, summed on the device, and every step's pre-clip gradient
    norm: read once, at the end of the epoch (and at a mid-epoch checkpoint, which keeps them)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.norms: list[torch.Tensor] = []
        self.logged = 0  # norms already in TensorBoard
        self.earlier_s = 0.0  # training time of the epoch's steps in launches before this one

    def snapshot(self, env: DistEnv, elapsed_s: float) -> dict[str, Any]:
        """The epoch so far over every rank, for a mid-epoch checkpoint (RunState.epoch_tally): one
        all-reduce of a copy of the sums, which every rank calls at the same step."""
        sums = distributed.all_reduce_sum(env, self.sums.clone())
        norms = torch.stack(self.norms).float().cpu().tolist() if self.norms else []
        return {"sums": sums.tolist(), "norms": norms, "elapsed_s": self.earlier_s + elapsed_s}

    def restore(self, saved: dict[str, Any], env: DistEnv) -> None:
        """Continue the epoch `saved` (a snapshot) holds: rank 0 carries the earlier sums, which the
        epoch's all-reduce adds to every rank's own; the earlier norms are in TensorBoard already."""
        if env.is_main:
            self.sums += torch.tensor(saved["sums"], dtype=torch.float64, device=self.sums.device)
        norms = torch.tensor(saved["norms"], dtype=torch.float32, device=self.sums.device)
        self.norms = list(norms.unbind(0))  # one copy to the device, not one per step
        self.logged = len(self.norms)
        self.earlier_s = float(saved["elapsed_s"])

    def log_norms(self, logger: MetricsLogger | NullLogger, step: int) -> torch.Tensor:
        """Every norm of the epoch so far (one read from the device); those not yet logged go to
        TensorBoard as train/grad_norm at their steps (`step`: the last one's). At the epoch's end and
        before a checkpoint, so that a launch resumed from it finds each step's norm in tb/ once."""
        if not self.norms:
            return torch.zeros(0)
        values = torch.stack(self.norms).float().cpu()
        new = values[self.logged :].tolist()
        for i, value in enumerate(new):
            logger.scalar("train/grad_norm", value, step - len(new) + i + 1)
        self.logged = len(self.norms)
        return values

    def add(self, out: StepResult, labels: torch.Tensor) -> None:
        self.norms.append(out.grad_norm.detach())
        if not out.applied:  # a skipped step's non-finite loss stays out of the sums
            return
        # device-side accumulation; a Python number as the operand is a kernel argument, not a copy
        self.sums[0] += out.loss.detach().double() * labels.numel()
        self.sums[1] += (out.logits.detach().argmax(1) == labels).sum()
        self.sums[2] += labels.numel()


def train_one_epoch(
    parts: Parts, loader: Loader, cfg: RootConfig, env: DistEnv, device: torch.device
) -> dict[str, float] | None:
    """One pass over this rank's shard of epoch `parts.state.epoch`, from batch `epoch_step` on.

    Returns the epoch's train metrics, with the data position moved to the next epoch's start;
    or None when a preemption stopped it early (last.pt then holds the position reached)."""
    state, guard = parts.state, parts.guard
    state.net.train()
    settings = StepSettings.of(cfg, state.net)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    tally = EpochTally(device)
    kept = state.epoch_tally
    if state.epoch_step > 0 and kept is not None and len(kept["norms"]) == state.epoch_step:
        tally.restore(kept, env)  # a mid-epoch resume: the row covers the whole epoch
    epoch_steps = state.epoch_step + len(loader)
    if state.epoch_step == 0 or state.epoch_lr is None:  # None: a checkpoint from before it was kept
        state.epoch_lr = state.schedule.lr
    epoch_lr = state.epoch_lr  # the LR the epoch began with, over a mid-epoch resume too
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = StepTimer()
    start = time.perf_counter()
    for images, labels in timer.wrap(_progress(loader, cfg, env, state.epoch)):
        # a no-op for DALI batches, which already come in the model's memory format
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        try:
            out = train_step(parts, settings, images, labels, env)
        except NonFiniteError:  # on every rank alike (the guard's verdict is shared)
            _keep_tally(parts, tally, env, time.perf_counter() - start)
            parts.save()  # the update was not applied: this is the last good state
            raise
        state.step += 1
        state.epoch_step += 1

        tally.add(out, labels)
        state.epoch_skipped += not out.applied  # in the checkpoint: a mid-epoch resume keeps the count
        if state.step % cfg.logging.log_every_steps == 0:
            guard.remember(out.loss.item())
            parts.logger.scalar("train/step_loss", guard.history[-1], state.step)
            parts.logger.scalar("train/step_lr", out.lr, state.step)
        last = state.epoch_step == epoch_steps
        if parts.interrupts.stop_requested(state.step, force_check=last):
            if last:  # acted on before the epoch's evaluation, which the resumed run does
                elapsed = time.perf_counter() - start
                state.epoch_metrics = _epoch_metrics(parts, cfg, env, device, tally, epoch_lr, elapsed, timer)
                state.epoch_tally = None
            else:
                _keep_tally(parts, tally, env, time.perf_counter() - start)
            parts.save()
            return None
        if not last and parts.interrupts.save_due():
            _keep_tally(parts, tally, env, time.perf_counter() - start)
            parts.save()
    elapsed = time.perf_counter() - start

    metrics = _epoch_metrics(parts, cfg, env, device, tally, epoch_lr, elapsed, timer)
    state.epoch, state.epoch_step, state.epoch_skipped = state.epoch + 1, 0, 0
    state.epoch_tally = None
    return metrics


def _keep_tally(parts: Parts, tally: EpochTally, env: DistEnv, elapsed_s: float) -> None:
    """Before a mid-epoch checkpoint (every rank, at the same step): the norms so far into
    TensorBoard, the epoch's sums so far into the state, for a launch that resumes from it."""
    tally.log_norms(parts.logger, parts.state.step)
    parts.state.epoch_tally = tally.snapshot(env, elapsed_s)


def _epoch_metrics(
    parts: Parts,
    cfg: RootConfig,
    env: DistEnv,
    device: torch.device,
    tally: EpochTally,
    epoch_lr: float,
    elapsed: float,
    timer: StepTimer,
) -> dict[str, float]:
    """The epoch's sums over all ranks (one all-reduce, one read), and the per-step gradient norms
    written once per epoch."""
    distributed.all_reduce_sum(env, tally.sums)
    loss_sum, correct, seen = tally.sums.tolist()
    norms = tally.norms
    elapsed += tally.earlier_s  # the epoch's time in earlier launches, on a mid-epoch resume
    if seen == 0:
        if env.is_main:
            parts.guard.mark_stopped()
        raise NonFiniteError(_all_skipped_words(parts, len(norms)))
    norm_values = tally.log_norms(parts.logger, parts.state.step)
    return {
        "loss": loss_sum / seen,
        "top1": correct / seen,
        "lr": epoch_lr,  # the LR this epoch started with (a milestone's change shows next epoch)
        "lr_end": parts.state.schedule.lr,
        "img_per_s": seen / elapsed,
        "epoch_time_s": elapsed,
        "steps": len(norms),  # optimizer steps this epoch (or rehearsal window) ran
        "steps_skipped": parts.state.epoch_skipped,  # this epoch's, over a mid-epoch resume too
        "peak_memory_mb": peak_memory_mb(device.type),
        **({"compiled_graphs": graphs_compiled()} if cfg.trainer.compile else {}),
        **timer.summary(),
        **grad_norm_summary(norm_values, cfg.stabilizer.max_norm),
    }


def _all_skipped_words(parts: Parts, launch_steps: int) -> str:
    """Why the run stops when none of the epoch's tallied steps was applied. `launch_steps`: the
    steps the tally holds: the whole epoch's where a mid-epoch checkpoint kept the earlier launch's
    sums (then only an epoch none of whose steps applied stops here), else this launch's, and a
    launch that resumed the epoch mid-way says how many of the earlier launch's steps were applied."""
    state, epoch = parts.state, parts.state.epoch + 1
    resumed_at = state.epoch_step - launch_steps  # batches of this epoch run by earlier launches
    applied_before = resumed_at - (state.epoch_skipped - launch_steps)
    where = f"see {parts.guard.report_path}"
    if applied_before == 0:
        return f"every step of epoch {epoch} was skipped as non-finite (stabilizer.nonfinite=skip); {where}"
    return (
        f"every step since this launch resumed epoch {epoch} at its step {resumed_at + 1} was skipped as "
        f"non-finite ({launch_steps} steps; the {applied_before} steps before it were applied) "
        f"(stabilizer.nonfinite=skip); {where}"
    )


def _progress(loader, cfg: RootConfig, env: DistEnv, epoch: int):
    if not (cfg.logging.progress and env.is_main):
        return loader
    from tqdm import tqdm

    return tqdm(
        loader,
        total=len(loader),
        desc=f"epoch {epoch + 1}/{cfg.trainer.epochs}",
        unit="batch",
        mininterval=1.0,
        dynamic_ncols=True,
        leave=False,
        file=sys.stderr,
    )
