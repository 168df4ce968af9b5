"""A run's data: its file lists, the normalization it feeds the model, the job's shape (global
batch, steps per epoch) and the loaders of each epoch and evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from resnet_repro.cluster import distributed
from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import (
    DataConfig,
    RootConfig,
    UserError,
    per_device_batch,
    refuse_training_split_as_test,
)
from resnet_repro.data import progressive, sharding, subset
from resnet_repro.data.demo import ensure_demo_dataset
from resnet_repro.data.holdout import carve_holdout
from resnet_repro.data.loaders import Loader, build_loader
from resnet_repro.data.normalization import resolve as resolve_normalization
from resnet_repro.data.selection import Normalization, Splits
from resnet_repro.data.splits import FileList, list_split, read_exclude_list, without
from resnet_repro.evaluation.protocols import LOADER_MODE
from resnet_repro.training.optim import peak_lr
from resnet_repro.training.summary import Derived

log = logging.getLogger("resnet_repro")


@dataclass(frozen=True)
class RunData:
    """What `prepare_data` settles before anything is built. `batch`: images per process."""

    splits: Splits
    norm: Normalization
    norm_warnings: list[str]
    derived: Derived
    batch: int


def prepare_data(cfg: RootConfig, env: DistEnv, device: torch.device) -> RunData:
    """File lists (rank 0 first: it builds the demo data if needed; an error on any rank stops all
    of them at once), normalization statistics, and the derived numbers of the job."""
    refuse_training_split_as_test(cfg.data)
    first = distributed.all_or_none(env, lambda: load_file_lists(cfg.data) if env.is_main else None)
    splits = distributed.all_or_none(env, lambda: first if env.is_main else load_file_lists(cfg.data))
    norm, norm_warnings = resolve_normalization(cfg.data, splits, env, device)
    t = cfg.trainer
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
    return RunData(splits, norm, norm_warnings, derived, batch)


def load_file_lists(cfg: DataConfig) -> Splits:
    """Training, holdout and test (data.eval_split) lists; builds the demo dataset on first use."""
    if cfg.name == "demo":
        ensure_demo_dataset(cfg.root)
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
    if cfg.max_eval_images is not None:
        test = capped(test, cfg.max_eval_images)
        holdout = capped(holdout, cfg.max_eval_images) if holdout is not None else None
    return Splits(train_full=train_full, train=train, holdout=holdout, test=test)


def capped(files: FileList, limit: int) -> FileList:
    """At most `limit` of `files`, evenly spaced over the list (which is sorted by class, so every
    class keeps some): data.max_eval_images."""
    if len(files) <= limit:
        return files
    idx = sorted({round(i * (len(files) - 1) / max(limit - 1, 1)) for i in range(limit)})
    return FileList(
        split=files.split,
        files=tuple(files.files[i] for i in idx),
        labels=tuple(files.labels[i] for i in idx),
        classes=files.classes,
    )


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


def make_train_loader(
    cfg: RootConfig,
    files: FileList,
    env: DistEnv,
    device: torch.device,
    epoch: int,
    skip_steps: int = 0,
    norm: Normalization | None = None,
    steps: int | None = None,
) -> Loader:
    """This rank's images for `epoch`, after the first `skip_steps` batches (a mid-epoch resume);
    `steps`: only that many batches (a rehearsal's window)."""
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
    if steps is not None:
        idx = idx[: steps * batch]
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
