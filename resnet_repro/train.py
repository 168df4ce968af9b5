"""train(cfg): wires data, model, optimizer, schedule, checkpoints and logging; one worker per device."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from resnet_repro import __version__, checkpoint, distributed
from resnet_repro.config import (
    DataConfig,
    RootConfig,
    UserError,
    per_device_batch,
    to_dataclass,
    validate,
)
from resnet_repro.data import progressive, sharding, subset
from resnet_repro.data.demo import build_demo_dataset
from resnet_repro.data.holdout import carve_holdout
from resnet_repro.data.loaders import Loader, build_loader
from resnet_repro.data.normalization import Normalization, Splits
from resnet_repro.data.normalization import resolve as resolve_normalization
from resnet_repro.data.splits import FileList, list_split, read_exclude_list, without
from resnet_repro.distributed import DistEnv
from resnet_repro.evaluate import autocast, evaluate
from resnet_repro.metrics import (
    MetricsLogger,
    NullLogger,
    StepTimer,
    make_logger,
    peak_memory_mb,
    write_run_files,
)
from resnet_repro.models import build_model
from resnet_repro.optim import build_optimizer, l1_penalty, l1_weights, peak_lr, summarize_groups
from resnet_repro.protocols import LOADER_MODE, Scorer, views_own_mean_image
from resnet_repro.protocols import describe as describe_protocol
from resnet_repro.resume import check_resumable, resume_path
from resnet_repro.schedule import LRSchedule, build_scheduler
from resnet_repro.stabilizers import (
    BufferSnapshot,
    EarlyStopper,
    NonFiniteError,
    NonFiniteGuard,
    chance_loss,
    grad_norm_summary,
)
from resnet_repro.summary import Derived, render

log = logging.getLogger("resnet_repro")


# ---------------------------------------------------------------------------------------------- data
def load_file_lists(cfg: DataConfig) -> Splits:
    """Training, holdout and test (data.eval_split) lists; builds the demo dataset on first use."""
    if cfg.name == "demo":
        build_demo_dataset(cfg.root)
    train_full = list_split(cfg.root, cfg.train_split)
    test = list_split(cfg.root, cfg.eval_split, classes=train_full.classes)
    if cfg.exclude_files:
        excluded = read_exclude_list(cfg.exclude_files, cfg.root)
        train_full, dropped_train = without(train_full, excluded, cfg.root)
        test, dropped_test = without(test, excluded, cfg.root)
        unmatched = excluded - dropped_train - dropped_test
        if unmatched:
            log.warning(
                f"data.exclude_files={cfg.exclude_files}: {len(unmatched)} of {len(excluded)} listed files "
                f"are in neither {cfg.train_split} nor {cfg.eval_split} under {cfg.root} "
                f"(e.g. {sorted(unmatched)[0]}); they exclude nothing"
            )
    if subset.is_active(cfg.subset):
        kept = subset.select_classes(train_full.classes, cfg.subset)
        train_full, test = (
            subset.restrict(train_full, kept, cfg.subset),
            subset.restrict(test, kept, cfg.subset),
        )
    train, holdout = train_full, None
    if cfg.holdout.size is not None:
        train, holdout = carve_holdout(train_full, cfg.holdout.size, cfg.holdout.seed)
    return Splits(train_full=train_full, train=train, holdout=holdout, test=test)


def _norm_args(norm: Normalization | None) -> dict[str, Any]:
    if norm is None:
        return {}
    return {"mean": norm.mean, "std": norm.std, "mean_image": norm.mean_image}


def make_eval_loader(
    cfg: DataConfig,
    files: FileList,
    env: DistEnv,
    device: torch.device,
    batch_size: int,
    norm: Normalization | None = None,
    channels_last: bool = False,
    protocol: str = "center",
) -> Loader | None:
    """This rank's contiguous chunk of `files` (None when empty), prepared for the test protocol:
    ten_crop and multiscale images differ in size, so their loaders deliver one image per batch.
    `channels_last`: the model's memory format (centre-crop batches then come as channels_last
    views, no copy)."""
    idx = sharding.eval_indices(len(files), rank=env.rank, world_size=env.world_size)
    if len(idx) == 0:
        return None
    return build_loader(
        cfg,
        [files.files[i] for i in idx],
        [files.labels[i] for i in idx],
        train=False,
        batch_size=batch_size if protocol == "center" else 1,
        seed=0,
        device=device,
        channels_last=channels_last and protocol == "center",
        eval_mode=LOADER_MODE[protocol],
        **_norm_args(norm),
    )


def evaluate_protocol(
    cfg: RootConfig,
    model: nn.Module,
    files: FileList,
    env: DistEnv,
    device: torch.device,
    batch_size: int,
    norm: Normalization | None = None,
) -> dict[str, Any]:
    """`files` evaluated once under cfg.eval's test protocol; the metrics name the protocol."""
    protocol, mean_image = cfg.eval.protocol, None
    if norm is not None and norm.mean_image is not None and views_own_mean_image(cfg.eval):
        # the mean image fits image_size crops: the protocol's views subtract it (protocols.Scorer)
        std = torch.tensor(norm.std, dtype=torch.float64).view(3, 1, 1)
        mean_image = (torch.as_tensor(norm.mean_image) / std).float().to(device)
        norm = dataclasses.replace(norm, mean=(0.0, 0.0, 0.0), mean_image=None)
    loader = make_eval_loader(
        cfg.data, files, env, device, batch_size, norm, cfg.model.channels_last, protocol
    )
    metrics = evaluate(
        model,
        loader,
        env,
        device,
        expected_total=len(files),
        precision=cfg.trainer.precision,
        scorer=Scorer(cfg.eval, cfg.data.image_size, mean_image),
    )
    return {
        **metrics,
        "protocol": cfg.eval.protocol,
        "protocol_detail": describe_protocol(cfg.eval, cfg.data.image_size, cfg.data.crop_ratio),
    }


def make_train_loader(
    cfg: RootConfig,
    files: FileList,
    env: DistEnv,
    device: torch.device,
    epoch: int,
    skip_steps: int = 0,
    norm: Normalization | None = None,
) -> Loader:
    """This rank's images for `epoch`, after the first `skip_steps` batches (a mid-epoch resume)."""
    t = cfg.trainer
    batch = per_device_batch(t, env.world_size)
    idx = sharding.train_indices(
        len(files),
        epoch=epoch,
        seed=t.seed,
        batch_size=batch,
        rank=env.rank,
        world_size=env.world_size,
    )
    if t.max_steps_per_epoch is not None:
        idx = idx[: t.max_steps_per_epoch * batch]
    idx = idx[skip_steps * batch :]
    return build_loader(
        progressive.train_data_config(cfg.data, epoch, t.epochs),
        [files.files[i] for i in idx],
        [files.labels[i] for i in idx],
        train=True,
        batch_size=batch,
        # augmentation randomness is a function of (seed, epoch, rank, skip): an epoch resumed from
        # its start repeats exactly; one resumed mid-epoch reads the same images, freshly augmented
        seed=(t.seed * 1_000_003 + epoch * 1009 + env.rank * 7919 + skip_steps * 31) % (2**31),
        device=device,
        channels_last=cfg.model.channels_last,
        **_norm_args(norm),
    )


# ------------------------------------------------------------------------------------------- resume
def training_state(parts: Parts, cfg: RootConfig, epoch: int, step: int, epoch_step: int) -> dict[str, Any]:
    return {
        "model": parts.net.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.schedule.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "early_stop": parts.early_stop.state_dict(),
        "epoch": epoch,  # completed epochs
        "step": step,  # completed optimizer steps
        "epoch_step": epoch_step,  # steps done in epoch `epoch` (0 at an epoch boundary)
        "best_top1": parts.best_top1,
        "rng": checkpoint.rng_state(),
        "config": dataclasses.asdict(cfg),
        "version": __version__,
    }


# ------------------------------------------------------------------------------------------ training
@dataclass
class Parts:
    """The objects a training step touches. `net` is the bare model (state dicts); `model` is what
    runs the forward pass (DDP-wrapped and/or compiled)."""

    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    guard: NonFiniteGuard
    early_stop: EarlyStopper
    logger: MetricsLogger | NullLogger
    interrupts: Interrupts
    best_top1: float = -1.0


class Interrupts:
    """Preemption and periodic checkpoints, polled between steps.

    Ranks agree on a pending signal every `check_steps` steps with one small all-reduce, so all
    of them stop after the same step.
    """

    def __init__(self, cfg: RootConfig, env: DistEnv, device: torch.device) -> None:
        self.env, self.device = env, device
        self.check_steps = cfg.trainer.preempt_check_steps
        minutes = cfg.trainer.checkpoint_every_minutes
        self.save_interval_s = minutes * 60 if minutes else None
        self.last_save = time.monotonic()
        self.watch = checkpoint.PreemptionWatch(cfg.trainer.preempt_signals)
        self.stopped_by: str | None = None

    def stop_requested(self, step: int, force_check: bool = False) -> bool:
        """Whether any rank got a preemption signal; all ranks must call this at the same steps."""
        due = force_check or step % self.check_steps == 0
        if not due and not (self.watch.received and not self.env.distributed):
            return False
        flag = torch.tensor([1.0 if self.watch.received else 0.0], device=self.device)
        if distributed.all_reduce_sum(self.env, flag).item() > 0:
            self.stopped_by = self.watch.received or "a signal on another rank"
            return True
        return False

    def save_due(self) -> bool:
        if self.save_interval_s is None or time.monotonic() - self.last_save < self.save_interval_s:
            return False
        self.last_save = time.monotonic()
        return True

    def close(self) -> None:
        self.watch.restore()


def train_one_epoch(
    parts: Parts,
    loader: Loader,
    cfg: RootConfig,
    env: DistEnv,
    device: torch.device,
    save: Callable[[int, int], None],
    *,
    epoch: int,
    step: int,
    epoch_step: int,
) -> tuple[dict[str, float] | None, int, int]:
    """One pass over this rank's shard, from batch `epoch_step` on.

    Returns (the epoch's train metrics, or None when a preemption stopped it early; the global
    step; the steps done in this epoch). `save(epoch_step, step)` writes last.pt mid-epoch.
    """
    model, optimizer, schedule, scaler, guard = (
        parts.model,
        parts.optimizer,
        parts.schedule,
        parts.scaler,
        parts.guard,
    )
    parts.net.train()
    reg, st = cfg.regularization, cfg.stabilizer
    l1_params = l1_weights(parts.net) if reg.l1 > 0 else []
    clip_at = st.max_norm if st.max_norm else math.inf
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    # BatchNorm statistics before each step, put back if the step turns out non-finite
    buffers = BufferSnapshot(parts.net) if st.nonfinite != "off" else None
    # loss sum, correct@1, images: summed on the device, read once at the end of the epoch
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    norms: list[torch.Tensor] = []  # pre-clip total gradient norm of every step
    epoch_steps = epoch_step + len(loader)
    epoch_lr = schedule.lr
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = StepTimer()
    start = time.perf_counter()
    for images, labels in timer.wrap(_progress(loader, cfg, env, epoch)):
        # a no-op for DALI batches, which already come in the model's memory format
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        lr = schedule.lr

        if buffers is not None:
            buffers.take()
        with autocast(device, cfg.trainer.precision):
            logits = model(images)
            data_loss = F.cross_entropy(logits, labels, label_smoothing=reg.label_smoothing)
        # the L1 penalty is optimized but not reported: the train loss stays comparable with the
        # evaluation loss and the chance level
        loss = data_loss + l1_penalty(l1_params, reg.l1) if reg.l1 > 0 else data_loss

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip and measure the true gradient, not the fp16-scaled one
        grad_norm = nn.utils.clip_grad_norm_(parts.net.parameters(), clip_at)  # returns the pre-clip norm

        # fp16: an overflowing gradient is the scaler's business (it skips the step and lowers its
        # scale), so only the loss is checked there
        checked_norm = grad_norm if cfg.trainer.precision != "fp16" else torch.zeros_like(grad_norm)
        if not guard.is_finite(loss, checked_norm, env):
            # every rank (the verdict is shared): the forward's BatchNorm update is undone with the step
            buffers.restore()  # type: ignore[union-attr]  # not None: the guard is on
            if env.is_main:
                guard.report(parts.net, loss, labels, epoch=epoch, step=step, lr=lr)
            if st.nonfinite == "stop" or guard.skipped_in_a_row >= st.max_skips:
                save(epoch_step, step)  # the update was not applied: this is the last good state
                raise NonFiniteError(
                    f"non-finite loss or gradient at epoch {epoch + 1}, step {step} (LR {lr:.4g}); report "
                    f"{guard.report_path}; the last good state is in checkpoints/last.pt"
                )
            guard.skip()
            optimizer.zero_grad(set_to_none=True)
            scaler.update()
        else:
            guard.ok()
            scaler.step(optimizer)
            scaler.update()
        schedule.step()
        step += 1
        epoch_step += 1

        norms.append(grad_norm.detach())
        if guard.skipped_in_a_row == 0:  # a skipped step's non-finite loss stays out of the sums
            # device-side accumulation; a Python number as the operand is a kernel argument, not a copy
            sums[0] += data_loss.detach().double() * labels.numel()
            sums[1] += (logits.detach().argmax(1) == labels).sum()
            sums[2] += labels.numel()
        if step % cfg.logging.log_every_steps == 0:
            guard.remember(data_loss.item())
            parts.logger.scalar("train/step_loss", guard.history[-1], step)
            parts.logger.scalar("train/step_lr", lr, step)
        # never on the epoch's last batch: the epoch then ends normally (with its evaluation and
        # checkpoint) and the epoch-boundary check in the caller stops the run
        if epoch_step < epoch_steps and parts.interrupts.stop_requested(step):
            save(epoch_step, step)
            return None, step, epoch_step
        if epoch_step < epoch_steps and parts.interrupts.save_due():
            save(epoch_step, step)
    elapsed = time.perf_counter() - start

    distributed.all_reduce_sum(env, sums)
    loss_sum, correct, seen = sums.tolist()
    if seen == 0:
        raise NonFiniteError(
            f"every step of epoch {epoch + 1} was skipped as non-finite (stabilizer.nonfinite=skip); "
            f"see {guard.report_path}"
        )
    norm_values = torch.stack(norms).float().cpu()
    for i, value in enumerate(norm_values.tolist()):  # per-step gradient norm, written once per epoch
        parts.logger.scalar("train/grad_norm", value, step - len(norms) + i + 1)
    return (
        {
            "loss": loss_sum / seen,
            "top1": correct / seen,
            "lr": epoch_lr,  # the LR this epoch started with (a milestone's change shows next epoch)
            "lr_end": schedule.lr,
            "img_per_s": seen / elapsed,
            "epoch_time_s": elapsed,
            "skipped_steps": guard.skipped_total,
            "peak_memory_mb": peak_memory_mb(device.type),
            **timer.summary(),
            **grad_norm_summary(norm_values, st.max_norm),
        },
        step,
        epoch_step,
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


def _configure_console(env: DistEnv, run_dir: Path) -> None:
    """Console output (Hydra's in the launching process; a plain one in spawned workers), plus
    <run_dir>/train.log written by rank 0 whichever process that is."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    log.setLevel(logging.INFO if env.is_main else logging.WARNING)
    for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:  # an earlier job's
        log.removeHandler(old)
        old.close()
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s"))
        log.addHandler(handler)


def train(cfg: RootConfig, run_dir: Path) -> dict[str, Any]:
    """Train in this process: a single process, or one rank of a torchrun / srun / local launch."""
    env = distributed.detect()
    device = distributed.pick_device(cfg.trainer.device, env)
    _configure_console(env, run_dir)
    distributed.init(env, device, cfg.trainer.dist_timeout_s)
    try:
        # every rank uses rank 0's run directory (under torchrun each process composed its own, and
        # a start-time name can differ by a second): it decides where to resume from
        run_dir = Path(distributed.broadcast_object(env, str(run_dir)))
        return _train(cfg, run_dir, env, device)
    finally:
        distributed.teardown()


def train_worker(cfg_yaml: str, run_dir: str) -> dict[str, Any]:
    """Entry point of a locally launched worker process (picklable: plain strings in)."""
    from omegaconf import OmegaConf

    cfg = to_dataclass(OmegaConf.create(cfg_yaml))
    try:
        return train(cfg, Path(run_dir))
    except UserError as e:  # one line from the failing rank, not a traceback per rank
        print(f"resnet-repro: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _build_model(
    cfg: RootConfig, num_classes: int, env: DistEnv, device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """(bare model, the module that runs: DDP-wrapped and/or compiled)."""
    if cfg.model.sync_bn and device.type != "cuda":
        raise UserError("model.sync_bn=true needs CUDA devices (SyncBatchNorm has no CPU implementation)")
    torch.manual_seed(cfg.trainer.seed)  # identical initial weights on every rank
    net = build_model(cfg.model, num_classes, cfg.regularization).to(device)
    model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if env.distributed else net
    if cfg.trainer.compile:
        model = torch.compile(model)
    return net, model


def build_parts(
    cfg: RootConfig, derived: Derived, env: DistEnv, device: torch.device, run_dir: Path
) -> Parts:
    """Model, optimizer, schedule, scaler and guards for a fresh run (training or a benchmark)."""
    t = cfg.trainer
    net, model = _build_model(cfg, derived.num_classes, env, device)
    optimizer = build_optimizer(cfg.optim, net, derived.global_batch)
    return Parts(
        net=net,
        model=model,
        optimizer=optimizer,
        schedule=build_scheduler(
            cfg.schedule, cfg.stabilizer, optimizer, steps_per_epoch=derived.steps_per_epoch, epochs=t.epochs
        ),
        scaler=torch.amp.GradScaler(device.type, enabled=t.precision == "fp16"),
        guard=NonFiniteGuard(
            cfg.stabilizer.nonfinite, cfg.stabilizer.max_skips, run_dir / "nonfinite_report.json"
        ),
        early_stop=EarlyStopper(cfg.stabilizer.early_stop),
        logger=make_logger(env.is_main, run_dir, cfg.logging),
        interrupts=Interrupts(cfg, env, device),
    )


def _train(cfg: RootConfig, run_dir: Path, env: DistEnv, device: torch.device) -> dict[str, Any]:
    validate(cfg)
    t = cfg.trainer
    # rank 0 first (it builds the demo data if needed), then the others; an error on any rank
    # stops all of them at once
    first = distributed.all_or_none(env, lambda: load_file_lists(cfg.data) if env.is_main else None)
    splits = distributed.all_or_none(env, lambda: first if env.is_main else load_file_lists(cfg.data))
    norm, norm_warnings = resolve_normalization(cfg.data, splits, env, device)

    batch = per_device_batch(t, env.world_size)
    global_batch = batch * env.world_size
    steps = sharding.steps_per_epoch(len(splits.train), global_batch)
    if steps == 0:
        raise UserError(
            f"the training split has {len(splits.train)} images, "
            f"fewer than one global batch of {global_batch} "
            f"({batch} per process x {env.world_size} processes)"
        )
    if t.max_steps_per_epoch is not None:
        steps = min(steps, t.max_steps_per_epoch)
    derived = Derived(
        world_size=env.world_size,
        global_batch=global_batch,
        peak_lr=peak_lr(cfg.optim, global_batch),
        steps_per_epoch=steps,
        num_train=len(splits.train),
        num_eval=len(splits.test),
        num_classes=len(splits.train.classes),
        device=str(device),
    )

    parts = build_parts(cfg, derived, env, device, run_dir)
    net, optimizer = parts.net, parts.optimizer

    start_epoch, step, epoch_step, stop_reason = 0, 0, 0, None
    # rank 0 decides (a node-local or stale view of the file system must not split the ranks)
    decided = distributed.all_or_none(env, lambda: resume_path(cfg, run_dir) if env.is_main else None)
    resume_from = distributed.broadcast_object(env, decided)
    if resume_from is not None:

        def load_resumable() -> tuple[dict[str, Any], list[str]]:
            state = checkpoint.load(resume_from)
            return state, check_resumable(state, resume_from, derived, cfg, (norm.mean, norm.std))

        state, accepted_changes = distributed.all_or_none(env, load_resumable)
        if accepted_changes:
            log.warning(
                f"resuming {resume_from} despite changed settings (trainer.resume_with_changes=true): "
                + "; ".join(accepted_changes)
            )
        try:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            parts.schedule.load_state_dict(state["scheduler"])
            parts.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"checkpoint {resume_from} does not fit this run's model or optimizer: {first}"
            ) from e
        parts.early_stop.load_state_dict(state["early_stop"])
        parts.best_top1 = float(state["best_top1"])
        start_epoch, step, epoch_step = int(state["epoch"]), int(state["step"]), int(state["epoch_step"])
        stop_reason = state.get("stopped")
        checkpoint.set_rng_state(state["rng"])
        log.info(
            f"resumed from {resume_from}: epoch {start_epoch + 1}, step {step} ({epoch_step} into the epoch)"
        )
    else:
        torch.manual_seed(t.seed + env.rank)  # per-rank stream for dropout-like randomness

    # model selection (best.pt, early stopping, plateau): the holdout; the test split only on request
    test_name = cfg.data.eval_split
    selection = "holdout" if splits.holdout is not None else (test_name if t.select_on_test else None)
    text = render(cfg, derived, summarize_groups(optimizer), norm.describe())
    text += f"\n  model selection  {selection or 'none (no holdout): no best.pt'}"
    if progressive.is_active(cfg.data.progressive):
        text += "\n* progressive      " + progressive.describe(cfg.data, t.epochs)
    if subset.is_active(cfg.data.subset):
        cap = cfg.data.subset.per_class
        text += f"\n* subset           {derived.num_classes} classes (classes.txt)" + (
            f", at most {cap} images per class" if cap is not None else ""
        )

    text += (
        f"\n  final test eval  {cfg.eval.protocol}: "
        f"{describe_protocol(cfg.eval, cfg.data.image_size, cfg.data.crop_ratio)}"
    )
    if env.is_main:
        write_run_files(
            run_dir,
            cfg,
            derived,
            {
                "normalization": {
                    "mean": norm.mean,
                    "std": norm.std,
                    "source": norm.source,
                    "detail": norm.detail,
                }
            },
            notes=[
                f"normalization used: {norm.describe()}",
                f"global batch {global_batch}, peak LR {derived.peak_lr:g}",
            ],
        )
        if splits.holdout is not None:
            (run_dir / "holdout_files.txt").write_text("\n".join(splits.holdout.files) + "\n")
        if subset.is_active(cfg.data.subset):  # the kept classes, in label order
            (run_dir / "classes.txt").write_text("\n".join(splits.train.classes) + "\n")
        parts.logger.text("summary", "<pre>" + text + "</pre>")
        log.info(f"run directory {run_dir}\n{text}")
        for warning in norm_warnings:
            log.warning(warning)
        if selection == test_name:
            log.warning(
                f"model selection uses the test split ({test_name}): its numbers are no longer an unbiased "
                "estimate; carve a holdout with data.holdout.size instead"
            )

    ckpt_dir = run_dir / "checkpoints"

    def save(epoch: int, epoch_step: int, step: int, name: str = "last.pt") -> None:
        if env.is_main:
            state = training_state(parts, cfg, epoch, step, epoch_step)
            state["stopped"] = stop_reason
            state["job"] = {
                "world_size": env.world_size,
                "global_batch": global_batch,
                "steps_per_epoch": steps,
            }
            state["normalization"] = {"mean": list(norm.mean), "std": list(norm.std)}
            if norm.mean_image is not None:  # so `resnet-repro eval` subtracts exactly this image
                state["normalization"]["mean_image"] = torch.from_numpy(norm.mean_image)
            checkpoint.save_atomic(state, ckpt_dir / name)

    eval_sets = {test_name: splits.test}
    if splits.holdout is not None:
        eval_sets["holdout"] = splits.holdout
    eval_loaders = {
        name: make_eval_loader(cfg.data, files, env, device, batch, norm, cfg.model.channels_last)
        for name, files in eval_sets.items()
    }

    def run_eval() -> dict[str, dict[str, Any]]:
        # the bare module: DDP may broadcast buffers in forward, and ranks hold uneven eval shards
        return {
            name: evaluate(
                parts.net, eval_loaders[name], env, device, expected_total=len(files), precision=t.precision
            )
            for name, files in eval_sets.items()
        }

    final: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, t.epochs if stop_reason is None else start_epoch):
            # per-rank dropout-family randomness as a function of (seed, epoch, rank): a run resumed
            # at an epoch boundary draws what the uninterrupted one would have, on every rank; one
            # resumed mid-epoch draws fresh numbers from its resume point (not a replay of the
            # epoch's first steps)
            mid = epoch_step if epoch == start_epoch else 0
            torch.manual_seed((t.seed * 1_000_003 + epoch * 1009 + env.rank * 7919 + mid * 104_729) % 2**63)
            if net.dropblock_rate is not None:
                net.dropblock_rate.set_epoch(epoch)
            loader = make_train_loader(
                cfg, splits.train, env, device, epoch, skip_steps=epoch_step, norm=norm
            )
            train_metrics, step, epoch_step = train_one_epoch(
                parts,
                loader,
                cfg,
                env,
                device,
                lambda es, st, e=epoch: save(e, es, st),
                epoch=epoch,
                step=step,
                epoch_step=epoch_step,
            )
            del loader
            if train_metrics is None:
                return _preempted(cfg, env, run_dir, parts.interrupts, epoch, epoch_step)
            epoch_step = 0
            distributed.broadcast_buffers(env, net)  # rank 0's BatchNorm statistics everywhere
            evals = run_eval()
            train_size = progressive.train_data_config(cfg.data, epoch, t.epochs).image_size
            row = {"epoch": epoch + 1, "split": "train", "step": step, "image_size": train_size}
            parts.logger.record({**row, **train_metrics}, step)
            for name, metrics in evals.items():
                row = {"epoch": epoch + 1, "split": name, "step": step, "lr": train_metrics["lr"], **metrics}
                parts.logger.record(row, step)
            improved = False
            if selection is not None:
                chosen = evals[selection]
                improved = chosen["top1"] > parts.best_top1
                parts.best_top1 = max(parts.best_top1, chosen["top1"])
                stop_reason = feed_model_selection(parts.schedule, parts.early_stop, chosen)
            save(epoch + 1, 0, step)
            if improved:
                save(epoch + 1, 0, step, name="best.pt")
            if t.keep_last_k > 0:
                save(epoch + 1, 0, step, name=f"epoch_{epoch + 1:04d}.pt")
                _prune_epoch_checkpoints(ckpt_dir, t.keep_last_k, env)
            _log_epoch(cfg, epoch, train_metrics, evals)
            _warn_if_not_learning(cfg, epoch, train_metrics["loss"], derived.num_classes)
            final = {"epochs_run": epoch + 1, **evals[test_name]}
            if "holdout" in evals:
                final["holdout"] = evals["holdout"]
            if stop_reason:
                log.warning(stop_reason)
                break
            if epoch + 1 < t.epochs and parts.interrupts.stop_requested(step, force_check=True):
                return _preempted(cfg, env, run_dir, parts.interrupts, epoch + 1, 0)
        if not final:  # resumed a finished run: report its final numbers
            evals = run_eval()
            final = {"epochs_run": start_epoch, **evals[test_name]}
            if "holdout" in evals:
                final["holdout"] = evals["holdout"]
        final = final_test_eval(cfg, final, parts, splits.test, env, device, batch, norm, step)
        best = parts.best_top1 if selection is not None else None
        final = {
            "epochs": t.epochs,
            **final,
            "best_top1": best,
            "selection": selection,
            "stopped": stop_reason,
        }
        if env.is_main:
            checkpoint.write_text_atomic(run_dir / "final.json", json.dumps(final) + "\n")
        distributed.barrier(env)
    except NonFiniteError as e:
        raise UserError(str(e)) from e
    finally:
        parts.interrupts.close()
        parts.logger.close()
    return final


def feed_model_selection(
    schedule: LRSchedule, early_stop: EarlyStopper, metrics: dict[str, float]
) -> str | None:
    """The model-selection split's evaluation to the plateau schedule and early stopping; the
    reason to stop, or None. Both skip evaluations before the LR warm-up ends (a metric measured
    while the LR still rises says nothing about a plateau) and judge improvement by the same rule
    (stabilizers.NoImprovement)."""
    if not schedule.warmed_up:
        return None
    schedule.epoch_end(metrics)
    return early_stop.update(metrics)


def final_test_eval(
    cfg: RootConfig,
    final: dict[str, Any],
    parts: Parts,
    test: FileList,
    env: DistEnv,
    device: torch.device,
    batch_size: int,
    norm: Normalization,
    step: int,
) -> dict[str, Any]:
    """`final` (the last epoch's centre-crop evaluation of the test split) under eval.protocol.

    Per-epoch evaluations and model selection stay centre crop (ten_crop costs 10 forward passes
    per image, multiscale five scales up to 640 px); the test split is measured once more under
    the configured protocol at the end, whose numbers replace the centre ones (kept under
    "center"). metrics.jsonl gets that evaluation as split "<eval_split>-<protocol>"."""
    if cfg.eval.protocol == "center":
        detail = describe_protocol(cfg.eval, cfg.data.image_size, cfg.data.crop_ratio)
        return {**final, "protocol": "center", "protocol_detail": detail}
    centre = {key: final[key] for key in ("top1", "top5", "loss")}
    log.info(f"final evaluation of {cfg.data.eval_split} under eval.protocol={cfg.eval.protocol}")
    measured = evaluate_protocol(cfg, parts.net, test, env, device, batch_size, norm)
    split = f"{cfg.data.eval_split}-{cfg.eval.protocol}"
    parts.logger.record({"epoch": final["epochs_run"], "split": split, "step": step, **measured}, step)
    log.info(
        f"{split}: loss {measured['loss']:.4f} top-1 {measured['top1']:.4f} top-5 {measured['top5']:.4f} "
        f"({measured['protocol_detail']}); centre crop top-1 {centre['top1']:.4f}"
    )
    return {**final, **measured, "center": centre}


def _log_epoch(cfg: RootConfig, epoch: int, train: dict[str, Any], evals: dict[str, dict[str, Any]]) -> None:
    evaluated = " | ".join(
        f"{name} loss {m['loss']:.4f} top-1 {m['top1']:.4f} top-5 {m['top5']:.4f}"
        for name, m in evals.items()
    )
    log.info(
        f"epoch {epoch + 1}/{cfg.trainer.epochs}: train loss {train['loss']:.4f} top-1 {train['top1']:.4f} | "
        f"{evaluated} | {train['img_per_s']:.0f} img/s | grad norm p50 "
        f"{train.get('grad_norm_p50', float('nan')):.3g}, "
        f"clipped {100 * train.get('clipped_fraction', 0.0):.0f}%"
    )


def _warn_if_not_learning(cfg: RootConfig, epoch: int, train_loss: float, num_classes: int) -> None:
    st = cfg.stabilizer
    if st.loss_warn_after_epochs is None or epoch + 1 != st.loss_warn_after_epochs:
        return
    threshold = st.loss_warn_threshold if st.loss_warn_threshold is not None else chance_loss(num_classes)
    if train_loss > threshold:
        log.warning(
            f"train loss {train_loss:.3f} is still above {threshold:.3f} after {epoch + 1} epochs: check the "
            "labels, the normalization statistics and the LR (try stabilizer.warmup_epochs or max_norm)"
        )


def _prune_epoch_checkpoints(ckpt_dir: Path, keep: int, env: DistEnv) -> None:
    if env.is_main:
        for old in sorted(ckpt_dir.glob("epoch_*.pt"))[:-keep]:
            old.unlink()


def _preempted(
    cfg: RootConfig,
    env: DistEnv,
    run_dir: Path,
    interrupts: Interrupts,
    epoch: int,
    epoch_step: int,
) -> dict[str, Any]:
    """After the checkpoint of a preempted run: requeue the SLURM job (rank 0), report.

    A time-limit warning (USR1 from the sbatch scripts' --signal), a preemption or a signal sent
    with `scancel --signal=...` requeues the job; a plain `scancel <job>` (SIGTERM while the job is
    being cancelled) does not: a cancel cancels, and last.pt stays for a deliberate resume. Where a
    launcher has its own requeueing handler for the signal (submitit's USR2 at the time limit), the
    checkpoint is written first and then that handler runs: it requeues the job its own way."""
    signal_name = interrupts.stopped_by
    job = checkpoint.slurm_job_ref()
    watch = interrupts.watch
    by_launcher = watch.launcher_requeues()
    requeued: bool | str = "by the launcher" if by_launcher else False
    cancelled = False
    if env.is_main:
        if job and not by_launcher:
            fate = checkpoint.slurm_job_fate(job, int(os.environ.get("SLURM_RESTART_COUNT", "0")))
            cancelled = fate == "cancelled"
            if fate == "requeued":
                requeued = "by SLURM"
            elif cfg.trainer.requeue and not cancelled:
                requeued = checkpoint.requeue_slurm_job(job)
        last = run_dir / "checkpoints" / "last.pt"
        if cancelled:
            then = f"SLURM job {job} was cancelled, not requeued; to continue: hydra.run.dir={run_dir}"
        else:
            then = {
                "by the launcher": "its launcher requeues the job",
                "by SLURM": f"SLURM requeued job {job} itself",
                True: f"SLURM job {job} requeued (SLURM holds a requeued job about 2 minutes)",
                False: "run the same command again to resume",
            }[requeued]
        where = f"epoch {epoch + 1}, step {epoch_step} of the epoch"
        log.warning(f"stopped by {signal_name} at {where}; checkpoint {last}; {then}")
        checkpoint.write_text_atomic(
            run_dir / "preempted.json",
            json.dumps(
                {
                    "signal": signal_name,
                    "epoch": epoch,
                    "epoch_step": epoch_step,
                    "requeued": requeued,
                    "cancelled": cancelled,
                    "slurm_job": job,
                }
            )
            + "\n",
        )
    distributed.barrier(env)
    if by_launcher:
        watch.hand_over()  # submitit: rank 0 requeues and exits here
    elif requeued is True and watch.launcher_handler() is not None and env.is_main:
        # requeued by us under a launcher whose handler only logged the signal (submitit's SIGTERM):
        # end the process without a result, as submitit's own requeue does, so that the sweep waits
        # for the requeued job instead of collecting this unfinished one
        raise SystemExit(-1)
    return {"preempted": True, "requeued": requeued, "cancelled": cancelled}
