"""train(cfg): wires data, model, optimizer, schedule, checkpoints and logging; one worker per device."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP

from resnet_repro import __version__, checkpoint, distributed
from resnet_repro.config import DataConfig, RootConfig, UserError, to_dataclass, validate
from resnet_repro.data import dali, sharding
from resnet_repro.data.demo import build_demo_dataset
from resnet_repro.data.splits import FileList, list_split
from resnet_repro.distributed import DistEnv
from resnet_repro.evaluate import autocast, evaluate
from resnet_repro.metrics import MetricsLogger, NullLogger, make_logger
from resnet_repro.models import build_model
from resnet_repro.optim import build_optimizer, peak_lr
from resnet_repro.schedule import build_scheduler

log = logging.getLogger("resnet_repro")
REPO_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Derived:
    """Values computed once from the config and the job; printed and logged, never written back."""

    world_size: int
    global_batch: int
    peak_lr: float
    steps_per_epoch: int
    num_train: int
    num_eval: int
    num_classes: int
    device: str


# ---------------------------------------------------------------------------------------------- data
def load_file_lists(cfg: DataConfig) -> tuple[FileList, FileList]:
    """Training and evaluation lists; builds the demo dataset on first use."""
    if cfg.name == "demo":
        build_demo_dataset(cfg.root)
    train_list = list_split(cfg.root, cfg.train_split)
    eval_list = list_split(cfg.root, cfg.eval_split, classes=train_list.classes)
    return train_list, eval_list


def make_eval_loader(
    cfg: DataConfig, files: FileList, env: DistEnv, device: torch.device, batch_size: int
) -> dali.DaliLoader | None:
    idx = sharding.eval_indices(len(files), rank=env.rank, world_size=env.world_size)
    if len(idx) == 0:
        return None
    return dali.build_loader(
        cfg,
        [files.files[i] for i in idx],
        [files.labels[i] for i in idx],
        train=False,
        batch_size=batch_size,
        seed=0,
        device=device,
    )


def make_train_loader(
    cfg: RootConfig, files: FileList, env: DistEnv, device: torch.device, epoch: int, skip_steps: int = 0
) -> dali.DaliLoader:
    """This rank's images for `epoch`, after the first `skip_steps` batches (a mid-epoch resume)."""
    t = cfg.trainer
    idx = sharding.train_indices(
        len(files),
        epoch=epoch,
        seed=t.seed,
        batch_size=t.batch_size,
        rank=env.rank,
        world_size=env.world_size,
    )
    if t.max_steps_per_epoch is not None:
        idx = idx[: t.max_steps_per_epoch * t.batch_size]
    idx = idx[skip_steps * t.batch_size :]
    return dali.build_loader(
        cfg.data,
        [files.files[i] for i in idx],
        [files.labels[i] for i in idx],
        train=True,
        batch_size=t.batch_size,
        # augmentation randomness is a function of (seed, epoch, rank, skip): an epoch resumed from
        # its start repeats exactly; one resumed mid-epoch reads the same images, freshly augmented
        seed=(t.seed * 1_000_003 + epoch * 1009 + env.rank * 7919 + skip_steps * 31) % (2**31),
        device=device,
    )


# ------------------------------------------------------------------------------------------ run dir
def git_info() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def write_run_files(run_dir: Path, cfg: RootConfig, derived: Derived) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    info = {
        "version": __version__,
        "git": git_info(),
        "command": sys.argv,
        "derived": asdict(derived),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")


def summary(cfg: RootConfig, d: Derived) -> str:
    t, o, s, st = cfg.trainer, cfg.optim, cfg.schedule, cfg.stabilizer
    lines = [
        f"model {cfg.model.name} on {cfg.data.name} ({d.num_classes} classes, {d.num_train} train / "
        f"{d.num_eval} {cfg.data.eval_split} images at {cfg.data.image_size}px)",
        f"devices {d.world_size} x {d.device}; batch {t.batch_size}/device -> global batch {d.global_batch}",
        f"{o.name}: lr_per_256 {o.lr_per_256} -> peak LR {d.peak_lr:g}; momentum {o.momentum}; "
        f"weight decay {o.weight_decay}",
        f"schedule {s.name}: x{s.gamma} at epochs {s.milestones}; "
        f"{t.epochs} epochs of {d.steps_per_epoch} steps; warm-up {st.warmup_epochs} epochs; "
        f"max_norm {st.max_norm}",
        f"normalization mean {cfg.data.mean} std {cfg.data.std} (from the data config)",
        f"precision {t.precision}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- resume
def resume_path(cfg: RootConfig, run_dir: Path) -> Path | None:
    mode = cfg.trainer.resume
    if mode == "never":
        return None
    if mode == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    path = Path(mode).expanduser()
    if not path.is_file():
        raise UserError(f"trainer.resume={mode}: no such checkpoint file")
    return path


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


def training_state(
    model, optimizer, scheduler, scaler, cfg: RootConfig, epoch: int, step: int, epoch_step: int = 0
) -> dict[str, Any]:
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,  # completed epochs
        "step": step,  # completed optimizer steps
        "epoch_step": epoch_step,  # steps done in epoch `epoch` (0 at an epoch boundary)
        "rng": checkpoint.rng_state(),
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
        "version": __version__,
    }


# ------------------------------------------------------------------------------------------ training
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

    def stop_requested(self, step: int) -> bool:
        if step % self.check_steps != 0 and not (self.watch.received and not self.env.distributed):
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
    model: nn.Module,
    loader: dali.DaliLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    cfg: RootConfig,
    env: DistEnv,
    device: torch.device,
    logger: MetricsLogger | NullLogger,
    interrupts: Interrupts,
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
    model.train()
    max_norm = cfg.stabilizer.max_norm
    # loss sum, correct@1, images, clipped steps, steps: summed on the device, read once at the end
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    progress = _progress(loader, cfg, env, epoch)
    start = time.perf_counter()
    for images, labels in progress:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        lr = scheduler.get_last_lr()[0]

        with autocast(device, cfg.trainer.precision):
            logits = model(images)
            loss = F.cross_entropy(logits, labels)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip and measure the true gradient, not the fp16-scaled one
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm else math.inf)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        epoch_step += 1

        sums += torch.stack(
            [
                loss.detach().double() * labels.numel(),
                (logits.detach().argmax(1) == labels).sum().double(),
                torch.tensor(labels.numel(), dtype=torch.float64, device=device),
                (grad_norm > max_norm).double()
                if max_norm
                else torch.zeros((), dtype=torch.float64, device=device),
                torch.ones((), dtype=torch.float64, device=device),
            ]
        )
        if step % cfg.logging.log_every_steps == 0:
            loss_value = loss.item()
            logger.scalar("train/step_loss", loss_value, step)
            logger.scalar("train/step_lr", lr, step)
            logger.scalar("train/grad_norm", grad_norm.item(), step)
            if hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}")
        if interrupts.stop_requested(step):
            save(epoch_step, step)
            return None, step, epoch_step
        if interrupts.save_due():
            save(epoch_step, step)
    elapsed = time.perf_counter() - start
    distributed.all_reduce_sum(env, sums)
    loss_sum, correct, seen, clipped, steps = sums.tolist()
    if seen == 0:
        raise RuntimeError("the training epoch saw no images")
    return (
        {
            "loss": loss_sum / seen,
            "top1": correct / seen,
            "lr": scheduler.get_last_lr()[0],
            "img_per_s": seen / elapsed,
            "clipped_fraction": clipped / steps,
            "epoch_time_s": elapsed,
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


def _configure_console(env: DistEnv) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    log.setLevel(logging.INFO if env.is_main else logging.WARNING)


def train(cfg: RootConfig, run_dir: Path) -> dict[str, float]:
    """Train in this process: a single process, or one rank of a torchrun / srun / local launch."""
    env = distributed.detect()
    device = distributed.pick_device(cfg.trainer.device, env)
    _configure_console(env)
    distributed.init(env, device, cfg.trainer.dist_timeout_s)
    try:
        return _train(cfg, run_dir, env, device)
    finally:
        distributed.teardown()


def train_worker(cfg_yaml: str, run_dir: str) -> dict[str, float]:
    """Entry point of a locally launched worker process (picklable: plain strings in)."""
    cfg = to_dataclass(OmegaConf.create(cfg_yaml))
    return train(cfg, Path(run_dir))


def _train(cfg: RootConfig, run_dir: Path, env: DistEnv, device: torch.device) -> dict[str, float]:
    validate(cfg)
    t = cfg.trainer
    if env.is_main:
        train_list, eval_list = load_file_lists(cfg.data)  # rank 0 builds the demo data if needed
    distributed.barrier(env)
    if not env.is_main:
        train_list, eval_list = load_file_lists(cfg.data)

    global_batch = t.batch_size * env.world_size
    steps = sharding.steps_per_epoch(len(train_list), global_batch)
    if steps == 0:
        raise UserError(
            f"the training split has {len(train_list)} images, fewer than one global batch of {global_batch} "
            f"(trainer.batch_size={t.batch_size} x {env.world_size} processes)"
        )
    if t.max_steps_per_epoch is not None:
        steps = min(steps, t.max_steps_per_epoch)
    derived = Derived(
        world_size=env.world_size,
        global_batch=global_batch,
        peak_lr=peak_lr(cfg.optim, global_batch),
        steps_per_epoch=steps,
        num_train=len(train_list),
        num_eval=len(eval_list),
        num_classes=len(train_list.classes),
        device=str(device),
    )

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, derived.num_classes).to(device)
    optimizer = build_optimizer(cfg.optim, model, global_batch)
    scheduler = build_scheduler(cfg.schedule, cfg.stabilizer, optimizer, steps_per_epoch=steps)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")

    start_epoch, step, epoch_step, best_top1 = 0, 0, 0, -1.0
    resume_from = resume_path(cfg, run_dir)
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step, epoch_step = int(state["epoch"]), int(state["step"]), int(state["epoch_step"])
        best_top1 = float(state["best_top1"])
        checkpoint.set_rng_state(state["rng"])
        log.info(
            f"resumed from {resume_from}: epoch {start_epoch + 1}, step {step} ({epoch_step} into the epoch)"
        )
    else:
        torch.manual_seed(t.seed + env.rank)  # per-rank stream for dropout-like randomness

    if env.distributed:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    logger = make_logger(env.is_main, run_dir, cfg.logging)
    text = summary(cfg, derived)
    if env.is_main:
        write_run_files(run_dir, cfg, derived)
        logger.text("summary", "<pre>" + text + "</pre>")
        log.info(f"run directory {run_dir}\n{text}")

    ckpt_dir = run_dir / "checkpoints"

    def save(epoch: int, epoch_step: int, step: int, name: str = "last.pt") -> None:
        if env.is_main:
            state = training_state(model, optimizer, scheduler, scaler, cfg, epoch, step, epoch_step)
            state["best_top1"] = best_top1
            checkpoint.save_atomic(state, ckpt_dir / name)

    eval_loader = make_eval_loader(cfg.data, eval_list, env, device, t.batch_size)
    interrupts = Interrupts(cfg, env, device)
    final: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, t.epochs):
            loader = make_train_loader(cfg, train_list, env, device, epoch, skip_steps=epoch_step)
            train_metrics, step, epoch_step = train_one_epoch(
                model,
                loader,
                optimizer,
                scheduler,
                scaler,
                cfg,
                env,
                device,
                logger,
                interrupts,
                lambda es, st, e=epoch: save(e, es, st),
                epoch=epoch,
                step=step,
                epoch_step=epoch_step,
            )
            del loader
            if train_metrics is None:
                return _preempted(cfg, env, run_dir, interrupts.stopped_by, epoch, epoch_step)
            epoch_step = 0
            eval_metrics = evaluate(
                model, eval_loader, env, device, expected_total=len(eval_list), precision=t.precision
            )
            logger.record({"epoch": epoch + 1, "split": "train", "step": step, **train_metrics}, step)
            logger.record(
                {
                    "epoch": epoch + 1,
                    "split": cfg.data.eval_split,
                    "step": step,
                    "lr": train_metrics["lr"],
                    **eval_metrics,
                },
                step,
            )
            improved = eval_metrics["top1"] > best_top1
            best_top1 = max(best_top1, eval_metrics["top1"])
            save(epoch + 1, 0, step)
            if improved:
                save(epoch + 1, 0, step, name="best.pt")
            if t.keep_last_k > 0:
                save(epoch + 1, 0, step, name=f"epoch_{epoch + 1:04d}.pt")
                _prune_epoch_checkpoints(ckpt_dir, t.keep_last_k, env)
            log.info(
                f"epoch {epoch + 1}/{t.epochs}: train loss {train_metrics['loss']:.4f} "
                f"top-1 {train_metrics['top1']:.4f} | {cfg.data.eval_split} loss {eval_metrics['loss']:.4f} "
                f"top-1 {eval_metrics['top1']:.4f} top-5 {eval_metrics['top5']:.4f} | "
                f"{train_metrics['img_per_s']:.0f} img/s"
            )
            final = eval_metrics
        if not final:  # resumed a finished run: report its final numbers
            final = evaluate(
                model, eval_loader, env, device, expected_total=len(eval_list), precision=t.precision
            )
        final = {"epochs": t.epochs, **final, "best_top1": best_top1}
        if env.is_main:
            (run_dir / "final.json").write_text(json.dumps(final) + "\n")
        distributed.barrier(env)
    finally:
        interrupts.close()
        logger.close()
    return final


def _prune_epoch_checkpoints(ckpt_dir: Path, keep: int, env: DistEnv) -> None:
    if env.is_main:
        for old in sorted(ckpt_dir.glob("epoch_*.pt"))[:-keep]:
            old.unlink()


def _preempted(
    cfg: RootConfig, env: DistEnv, run_dir: Path, signal_name: str | None, epoch: int, epoch_step: int
) -> dict[str, Any]:
    """After the checkpoint of a preempted run: requeue the SLURM job once (rank 0), report."""
    job = os.environ.get("SLURM_JOB_ID")
    requeued = False
    if env.is_main:
        if job and cfg.trainer.requeue:
            requeued = checkpoint.requeue_slurm_job(job)
        log.warning(
            f"stopped by {signal_name} at epoch {epoch + 1}, step {epoch_step} of the epoch; "
            f"checkpoint {run_dir / 'checkpoints' / 'last.pt'}; "
            + (f"SLURM job {job} requeued" if requeued else "run the same command again to resume")
        )
        (run_dir / "preempted.json").write_text(
            json.dumps(
                {"signal": signal_name, "epoch": epoch, "epoch_step": epoch_step, "requeued": requeued}
            )
            + "\n"
        )
    distributed.barrier(env)
    return {"preempted": True, "requeued": requeued}


def load_model_for_eval(cfg: RootConfig, path: str, num_classes: int, device: torch.device) -> nn.Module:
    """A training checkpoint of this tool (its own model config is used) or a plain state dict."""
    state = checkpoint.load(path)
    if "model" in state and "config" in state:
        model_cfg = to_dataclass(OmegaConf.create({"model": state["config"]["model"]})).model
        weights = state["model"]
    else:
        model_cfg, weights = cfg.model, state
    model = build_model(model_cfg, num_classes)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(
            f"checkpoint {path} does not fit model {model_cfg.name} with {num_classes} classes: "
            f"{str(e).splitlines()[0]}"
        ) from e
    return model.to(device)


def evaluate_checkpoint(cfg: RootConfig, path: str) -> dict[str, float]:
    """`resnet-repro eval`: top-1 / top-5 / loss of a checkpoint on the configured eval split."""
    env = distributed.detect()
    device = distributed.pick_device(cfg.trainer.device, env)
    distributed.init(env, device, cfg.trainer.dist_timeout_s)
    try:
        _, eval_list = load_file_lists(cfg.data)
        model = load_model_for_eval(cfg, path, len(eval_list.classes), device)
        loader = make_eval_loader(cfg.data, eval_list, env, device, cfg.trainer.batch_size)
        return evaluate(
            model, loader, env, device, expected_total=len(eval_list), precision=cfg.trainer.precision
        )
    finally:
        distributed.teardown()
