"""Cross-field validation a schema cannot express: `validate`, one validator per section, and the
allowed values of the settings that name a choice."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from resnet_repro.config.derived import eval_protocols, per_device_batch
from resnet_repro.config.errors import UserError
from resnet_repro.config.references import REFERENCES
from resnet_repro.config.schemas import (
    AugmentConfig,
    BenchConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    PlanConfig,
    RegularizationConfig,
    RootConfig,
    ScheduleConfig,
    StabilizerConfig,
    TrainerConfig,
)

# The allowed values of the settings that name a choice
PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("dali", "torchvision", "synthetic")
NORMALIZATIONS = ("computed", "published", "none", "pixel_mean")
EVAL_PROTOCOLS = ("center", "ten_crop", "multiscale")
STEMS = ("imagenet", "cifar")


def validate(cfg: RootConfig) -> None:
    """Cross-field checks a schema cannot express, one section at a time. Raises UserError naming
    the value."""
    _refuse_non_finite(cfg, "")
    _validate_trainer(cfg.trainer)
    _validate_optim(cfg.optim)
    _validate_data(cfg.data)
    _validate_model_selection(cfg)
    if cfg.reference not in REFERENCES:
        raise UserError(f"reference={cfg.reference!r} is not one of {', '.join(REFERENCES)}")
    _validate_regularization(cfg.regularization)
    _validate_schedule(cfg.schedule)
    _validate_stabilizer(cfg.stabilizer, cfg.trainer.epochs)
    _validate_model(cfg.model)
    _validate_bench(cfg.bench)
    _validate_plan(cfg.plan)
    if cfg.logging.log_every_steps <= 0:
        raise UserError(
            f"logging.log_every_steps={cfg.logging.log_every_steps} must be a positive number of steps"
        )
    _validate_eval(cfg.eval)


def _validate_model(m: ModelConfig) -> None:
    if m.stem not in STEMS:
        raise UserError(
            f"model.stem={m.stem!r} is not one of {', '.join(STEMS)} (cifar: 3x3 stride-1 first conv, "
            "no max pool, for 32 px images)"
        )
    if m.gn_groups < 1 or 64 % m.gn_groups != 0:
        raise UserError(
            f"model.gn_groups={m.gn_groups} must divide 64 (every ResNet width is a multiple of 64): "
            "1, 2, 4, 8, 16, 32 or 64"
        )
    # torch's BatchNorm takes any momentum: above 1 the running statistics diverge (NaN at the first
    # evaluation); 0 never updates them
    if not 0 < m.bn_momentum <= 1:
        raise UserError(f"model.bn_momentum={m.bn_momentum} must be in (0, 1]")
    if m.bn_eps <= 0:
        raise UserError(f"model.bn_eps={m.bn_eps} must be positive")


def _validate_bench(b: BenchConfig) -> None:
    if b.trials < 1 or b.steps < 1:
        raise UserError(f"bench.trials={b.trials} and bench.steps={b.steps} must be >= 1")
    if b.min_images < 1:
        raise UserError(f"bench.min_images={b.min_images} must be >= 1")
    if b.warmup < 0:
        raise UserError(f"bench.warmup={b.warmup} must be >= 0")
    if b.num_classes < 1:
        raise UserError(f"bench.num_classes={b.num_classes} must be >= 1")


def _refuse_non_finite(node: Any, key: str) -> None:
    """nan and inf in any numeric setting (a list's items included): no setting means either, and
    one read as a number trains on until a non-finite loss names some other value."""
    if dataclasses.is_dataclass(node):
        for field in dataclasses.fields(node):
            _refuse_non_finite(getattr(node, field.name), f"{key}.{field.name}" if key else field.name)
    elif isinstance(node, (list, tuple)):
        for item in node:
            if isinstance(item, float) and not math.isfinite(item):
                raise UserError(f"{key}={list(node)} must hold finite numbers")
    elif isinstance(node, float) and not math.isfinite(node):
        raise UserError(f"{key}={node} must be a finite number")


def _validate_trainer(t: TrainerConfig) -> None:
    if t.seed < 0:
        raise UserError(f"trainer.seed={t.seed} must be >= 0")
    if t.batch_size is not None and t.batch_size <= 0:
        raise UserError(f"trainer.batch_size={t.batch_size} must be a positive number of images per device")
    if t.batch_size is None and t.global_batch is None:
        raise UserError("trainer.batch_size and trainer.global_batch are both null: set one of them")
    if t.ema.decay is not None and not 0 < t.ema.decay < 1:
        raise UserError(f"trainer.ema.decay={t.ema.decay} must be in (0, 1), or null for no weight average")
    if t.global_batch is not None and t.global_batch <= 0:
        raise UserError(f"trainer.global_batch={t.global_batch} must be a positive number of images, or null")
    if t.epochs <= 0:
        raise UserError(f"trainer.epochs={t.epochs} must be positive")
    if t.nproc <= 0:
        raise UserError(f"trainer.nproc={t.nproc} must be a positive number of processes")
    if t.precision not in PRECISIONS:
        raise UserError(f"trainer.precision={t.precision!r} is not one of {', '.join(PRECISIONS)}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"trainer.device={t.device!r} is not one of auto, cpu, cuda")
    if t.checkpoint_every_minutes is not None and t.checkpoint_every_minutes <= 0:
        raise UserError(
            f"trainer.checkpoint_every_minutes={t.checkpoint_every_minutes} must be positive or null"
        )
    if t.keep_last_k < 0:
        raise UserError(f"trainer.keep_last_k={t.keep_last_k} must be >= 0")
    if t.max_steps_per_epoch is not None and t.max_steps_per_epoch <= 0:
        raise UserError(
            f"trainer.max_steps_per_epoch={t.max_steps_per_epoch} must be a positive number of steps, "
            "or null for whole epochs"
        )
    if t.preempt_check_steps <= 0:
        raise UserError(f"trainer.preempt_check_steps={t.preempt_check_steps} must be positive")
    import signal

    for name in t.preempt_signals:
        if not isinstance(getattr(signal, name, None), signal.Signals):
            raise UserError(f"trainer.preempt_signals: {name!r} is not a signal name like SIGUSR1 or SIGTERM")
        if name in ("SIGKILL", "SIGSTOP"):
            raise UserError(
                f"trainer.preempt_signals: {name} cannot be caught; name the signal SLURM sends before "
                "it ends the job (SIGUSR1, SIGUSR2, SIGTERM)"
            )
    if t.dist_timeout_s <= 0:
        raise UserError(f"trainer.dist_timeout_s={t.dist_timeout_s} must be a positive number of seconds")
    if t.resume not in ("auto", "never") and not t.resume.endswith(".pt"):
        raise UserError(f"trainer.resume={t.resume!r} must be auto, never, or a path to a .pt checkpoint")


def _validate_optim(o: OptimConfig) -> None:
    if o.lr_per_256 <= 0:
        raise UserError(f"optim.lr_per_256={o.lr_per_256} must be a positive learning rate")
    if o.weight_decay < 0:
        raise UserError(f"optim.weight_decay={o.weight_decay} must be >= 0")
    if not 0 <= o.momentum < 1:
        raise UserError(
            f"optim.momentum={o.momentum} must be in [0, 1) (SGD's step is amplified by 1 / (1 - momentum))"
        )
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise UserError(f"optim.betas={o.betas} must be two values in [0, 1)")
    if o.eps < 0:
        raise UserError(f"optim.eps={o.eps} must be >= 0")


def _validate_data(d: DataConfig) -> None:
    if d.normalization not in NORMALIZATIONS:
        raise UserError(f"data.normalization={d.normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
    _validate_progressive(d)
    _validate_eval_cap(d)
    if d.subset.per_class is not None and d.subset.per_class < 1:
        raise UserError(f"data.subset.per_class={d.subset.per_class} must be >= 1 image per class, or null")
    if d.subset.classes is not None and (isinstance(d.subset.classes, bool) or d.subset.classes == ""):
        raise UserError(
            f"data.subset.classes={d.subset.classes!r} must be a class count or a file of class names"
        )
    _validate_holdout_and_stats(d)
    if d.backend not in BACKENDS:
        raise UserError(f"data.backend={d.backend!r} is not one of {', '.join(BACKENDS)}")
    if d.decoder not in ("pil", "decode_jpeg"):
        raise UserError(f"data.decoder={d.decoder!r} is not one of pil, decode_jpeg")
    if d.image_size <= 0:
        raise UserError(f"data.image_size={d.image_size} must be a positive number of pixels")
    least = 0 if d.backend == "torchvision" else 1  # a DataLoader of 0 workers loads in the main process
    if d.num_threads < least:
        raise UserError(
            f"data.num_threads={d.num_threads} must be >= {least} (data.backend={d.backend}: "
            + ("DataLoader workers per process)" if least == 0 else "decoding threads per process)")
        )
    if d.prefetch < 1:
        raise UserError(f"data.prefetch={d.prefetch} must be >= 1 (batches queued ahead per process)")
    if not 0 < d.crop_ratio <= 1:
        raise UserError(f"data.crop_ratio={d.crop_ratio} must be in (0, 1]")
    if len(d.mean) != 3 or len(d.std) != 3:
        raise UserError(f"data.mean={d.mean} and data.std={d.std} must have 3 values each (R, G, B)")
    if any(s <= 0 for s in d.std):
        raise UserError(f"data.std={d.std} must be positive")
    # the images are scaled to [0, 1] before normalizing: statistics on the 0-255 scale (as other
    # code bases write them) would divide every pixel by about 58
    if not all(0 <= v <= 1 for v in d.mean):
        raise UserError(f"data.mean={d.mean} must be in [0, 1] (pixels scaled to [0, 1]; 0-255 values / 255)")
    if not all(0 < v <= 1 for v in d.std):
        raise UserError(f"data.std={d.std} must be in (0, 1] (pixels scaled to [0, 1]; 0-255 values / 255)")
    _validate_augment(d.augment, d.image_size)


def check_job(cfg: RootConfig, world_size: int) -> int:
    """A training job's checks before anything starts, alike for `train` (a run, every point of a
    sweep before its first job) and `rehearse`: the values, the training split named as the test
    split, and the batch split over `world_size` processes; returns the per-process batch."""
    validate(cfg)
    refuse_training_split_as_test(cfg.data)
    return per_device_batch(cfg.trainer, world_size)


def refuse_training_split_as_test(d: DataConfig) -> None:
    """For the commands that measure top-1 on data.eval_split (train, rehearse, eval); `bench` and
    `stats` read the training split only and may name it twice (a folder with no val)."""
    if os.path.normpath(d.eval_split) == os.path.normpath(d.train_split):
        raise UserError(
            f"data.eval_split={d.eval_split!r} is the training split: top-1 would be measured on the "
            "images the model trains on; name another split (val)"
        )


def _validate_eval_cap(d: DataConfig) -> None:
    if d.max_eval_images is not None and d.max_eval_images < 1:
        raise UserError(f"data.max_eval_images={d.max_eval_images} must be >= 1 image, or null for all")


def _validate_progressive(d: DataConfig) -> None:
    pr = d.progressive
    if pr.start_size is None:
        return
    if pr.end_size is None or pr.start_size <= 0 or pr.end_size <= 0 or pr.step <= 0:
        raise UserError(
            f"data.progressive.start_size={pr.start_size} needs a positive end_size (it is "
            f"{pr.end_size}) and step (it is {pr.step}), in pixels"
        )
    if pr.step > min(pr.start_size, pr.end_size):
        raise UserError(  # every size is rounded to a multiple of step, at least one step
            f"data.progressive.step={pr.step} must be at most the smaller of start_size={pr.start_size} "
            f"and end_size={pr.end_size}: each size is rounded to a multiple of it"
        )
    if pr.start_epoch < 0:
        raise UserError(f"data.progressive.start_epoch={pr.start_epoch} must be >= 0")
    if pr.end_epoch is not None and not 0 <= pr.start_epoch <= pr.end_epoch:
        raise UserError(
            f"data.progressive.start_epoch={pr.start_epoch} must be >= 0 and <= end_epoch={pr.end_epoch}"
        )
    if d.normalization == "pixel_mean":
        raise UserError(
            "data.progressive and data.normalization=pixel_mean do not combine: the mean image has "
            "one size (data.image_size); use normalization=computed"
        )


def _validate_holdout_and_stats(d: DataConfig) -> None:
    if d.holdout.stats_from not in ("train", "train_minus_holdout"):
        raise UserError(
            f"data.holdout.stats_from={d.holdout.stats_from!r} is not one of train, train_minus_holdout"
        )
    if d.holdout.stats_from == "train_minus_holdout" and d.holdout.size is None:
        raise UserError("data.holdout.stats_from=train_minus_holdout needs a holdout: set data.holdout.size")
    if d.stats.max_images is not None and d.stats.max_images <= 0:
        raise UserError(f"data.stats.max_images={d.stats.max_images} must be positive or null")
    for key, seed in (
        ("data.holdout.seed", d.holdout.seed),
        ("data.stats.seed", d.stats.seed),
        ("data.subset.seed", d.subset.seed),
    ):
        if seed is not None and seed < 0:
            raise UserError(f"{key}={seed} must be a non-negative integer")
    if d.stats.resize is not None and d.stats.resize < 1:
        raise UserError(f"data.stats.resize={d.stats.resize} must be a positive size in pixels or null")
    if d.stats.batch_size < 1:
        raise UserError(f"data.stats.batch_size={d.stats.batch_size} must be a positive number of images")


def _validate_augment(a: AugmentConfig, image_size: int) -> None:
    if len(a.scale) != 2 or not 0 < a.scale[0] <= a.scale[1] <= 1:
        raise UserError(f"data.augment.scale={a.scale} must be [low, high] with 0 < low <= high <= 1")
    if len(a.ratio) != 2 or not 0 < a.ratio[0] <= a.ratio[1]:
        raise UserError(f"data.augment.ratio={a.ratio} must be [low, high] with 0 < low <= high")
    if not 0 <= a.pad_crop:
        raise UserError(f"data.augment.pad_crop={a.pad_crop} must be >= 0 pixels")
    if a.scale_short_side is not None:
        lo_hi = list(a.scale_short_side)
        if len(lo_hi) != 2 or not image_size <= lo_hi[0] <= lo_hi[1]:
            raise UserError(
                f"data.augment.scale_short_side={lo_hi} must be [low, high] pixels with "
                f"data.image_size={image_size} <= low <= high"
            )
        if a.random_resized_crop or a.pad_crop > 0:
            raise UserError(
                f"data.augment.scale_short_side={lo_hi} is a training crop of its own: set "
                "data.augment.random_resized_crop=false and data.augment.pad_crop=0 with it"
            )
    if a.pca_lighting < 0:
        raise UserError(f"data.augment.pca_lighting={a.pca_lighting} must be >= 0 (0 = off)")


def _validate_model_selection(cfg: RootConfig) -> None:
    patience = cfg.stabilizer.early_stop.patience
    if patience is not None and patience < 1:
        raise UserError(f"stabilizer.early_stop.patience={patience} must be at least 1 evaluation, or null")
    no_selection = cfg.data.holdout.size is None and not cfg.trainer.select_on_test
    if no_selection and (cfg.schedule.name == "plateau" or patience is not None):
        raise UserError(
            "schedule.name=plateau and stabilizer.early_stop need a model-selection split: set "
            "data.holdout.size (recommended) or trainer.select_on_test=true"
        )


def _validate_regularization(r: RegularizationConfig) -> None:
    for key in ("dropout", "spatial_dropout", "dropblock", "stochastic_depth", "label_smoothing"):
        if not 0 <= getattr(r, key) < 1:
            raise UserError(f"regularization.{key}={getattr(r, key)} must be in [0, 1)")
    if r.l1 < 0:
        raise UserError(f"regularization.l1={r.l1} must be >= 0")
    if r.dropblock > 0 and r.dropblock_size < 1:
        raise UserError(f"regularization.dropblock_size={r.dropblock_size} must be a positive block size")
    if r.dropblock_ramp_epochs < 0:
        raise UserError(
            f"regularization.dropblock_ramp_epochs={r.dropblock_ramp_epochs} must be >= 0 (0: no ramp)"
        )


def _validate_schedule(s: ScheduleConfig) -> None:
    if s.metric not in ("top1", "loss"):
        raise UserError(f"schedule.metric={s.metric!r} is not one of top1, loss")
    if s.patience < 1:
        raise UserError(f"schedule.patience={s.patience} must be at least 1 evaluation")
    if not 0 < s.factor < 1:
        raise UserError(f"schedule.factor={s.factor} must be in (0, 1)")
    if s.min_delta < 0:
        raise UserError(f"schedule.min_delta={s.min_delta} must be >= 0")
    if not 0 < s.gamma <= 1:
        raise UserError(f"schedule.gamma={s.gamma} must be in (0, 1]: the factor the LR is multiplied by")
    # torch's MultiStepLR multiplies by gamma once per copy of a repeated milestone
    increasing = all(a < b for a, b in zip(s.milestones, s.milestones[1:], strict=False))
    if not increasing or any(m <= 0 for m in s.milestones):
        raise UserError(f"schedule.milestones={s.milestones} must be increasing positive epochs")
    for key in ("final_lr_factor", "end_factor"):
        if not 0 <= getattr(s, key) <= 1:
            raise UserError(
                f"schedule.{key}={getattr(s, key)} must be in [0, 1]: the final LR as a fraction of the peak"
            )


def _validate_stabilizer(st: StabilizerConfig, epochs: int) -> None:
    if st.warmup_epochs < 0:
        raise UserError(f"stabilizer.warmup_epochs={st.warmup_epochs} must be >= 0")
    if st.warmup_epochs > 0 and st.warmup_epochs >= epochs:
        raise UserError(
            f"stabilizer.warmup_epochs={st.warmup_epochs} must be shorter than trainer.epochs={epochs}"
        )
    if not 0 < st.warmup_start_factor <= 1:
        raise UserError(f"stabilizer.warmup_start_factor={st.warmup_start_factor} must be in (0, 1]")
    if st.nonfinite not in ("stop", "skip", "off"):
        raise UserError(f"stabilizer.nonfinite={st.nonfinite!r} is not one of stop, skip, off")
    if st.early_stop.metric not in ("top1", "loss"):
        raise UserError(f"stabilizer.early_stop.metric={st.early_stop.metric!r} is not one of top1, loss")
    if st.early_stop.min_delta < 0:
        raise UserError(f"stabilizer.early_stop.min_delta={st.early_stop.min_delta} must be >= 0")
    if st.max_norm is not None and st.max_norm <= 0:
        raise UserError(f"stabilizer.max_norm={st.max_norm} must be positive, or null to turn clipping off")
    if st.max_skips <= 0:
        raise UserError(f"stabilizer.max_skips={st.max_skips} must be a positive number of steps")
    if st.loss_warn_after_epochs is not None and st.loss_warn_after_epochs < 1:
        raise UserError(  # the warning would never come
            f"stabilizer.loss_warn_after_epochs={st.loss_warn_after_epochs} must be at least 1 (an epoch "
            "number), or null for no check"
        )
    if st.loss_warn_threshold is not None and st.loss_warn_threshold <= 0:
        raise UserError(  # every loss is above it: the warning would always come
            f"stabilizer.loss_warn_threshold={st.loss_warn_threshold} must be positive, or null for "
            "chance level"
        )


def _validate_plan(pl: PlanConfig) -> None:
    for key, value in (
        ("train_images", pl.train_images),
        ("img_per_s_per_gpu", pl.img_per_s_per_gpu),
        ("img_per_s_size", pl.img_per_s_size),
        ("eval_img_per_s_per_gpu", pl.eval_img_per_s_per_gpu),
        ("world_size", pl.world_size),
    ):
        if value is not None and value <= 0:
            raise UserError(f"plan.{key}={value} must be positive, or null")
    if not 0 < pl.scaling_efficiency <= 1:
        raise UserError(
            f"plan.scaling_efficiency={pl.scaling_efficiency} must be in (0, 1]: a fraction of linear"
        )
    if pl.measure_steps < 1:
        raise UserError(f"plan.measure_steps={pl.measure_steps} must be >= 1")


def _validate_eval(ev: EvalConfig) -> None:
    names = eval_protocols(ev)
    bad = [p for p in names if p not in EVAL_PROTOCOLS]
    if not names or bad or len(set(names)) != len(names):
        raise UserError(
            f"eval.protocol={ev.protocol!r} is not one of {', '.join(EVAL_PROTOCOLS)}, nor a list of "
            "different ones (e.g. [ten_crop,multiscale])"
        )
    if not ev.scales or any(x <= 0 for x in ev.scales):
        raise UserError(f"eval.scales={ev.scales} must be a non-empty list of shorter sides in pixels (> 0)")
