"""Which mean / std a run normalizes with, and where they come from.

computed: the stats file of the current training selection (the whole training split, or train
  minus holdout), checked against leakage; computed first when missing, each rank reading its own
  shard and the exact integer sums all-reduced, so no rank waits idle through a long pass.
published: data.mean / data.std as configured (ImageNet's published values by default).
none: pixels scaled to [0, 1] only.
pixel_mean: a per-pixel mean image from the same selection, with the same guards
  (resnet_repro.data.pixel_mean).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from resnet_repro.cluster import distributed
from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import DataConfig, UserError
from resnet_repro.data import channel_sums, pixel_mean, stats, stats_process
from resnet_repro.data.selection import (
    Normalization,
    Splits,
    available_stats_decoder,
    check_leakage_and_staleness,
    expected_settings,
    sample_and_decoder_suffix,
    stats_images,
    stats_selection,
)


def stats_path(cfg: DataConfig, fingerprint: str) -> Path:
    """Explicit data.stats.path, else beside the data, one file per selection and stats setting:
    <fingerprint>[-r<resize>][-n<max_images>-s<seed>][-<decoder>].json (the defaults, every pixel
    at full size decoded by DALI, add nothing)."""
    if cfg.stats.path:
        return Path(cfg.stats.path).expanduser()
    path = stats.default_stats_path(cfg.root, fingerprint)
    resize = f"-r{cfg.stats.resize}" if cfg.stats.resize is not None else ""
    return path.with_name(path.stem + resize + sample_and_decoder_suffix(cfg) + path.suffix)


def compute_record(
    cfg: DataConfig, splits: Splits, env: DistEnv, device: torch.device, fingerprint: str | None = None
) -> stats.StatsRecord:
    """One pass over the selection (or its stratified sample), split across ranks, sums merged.
    `fingerprint`: the selection's, when the caller has computed it (else computed here)."""
    decoder = available_stats_decoder(cfg)
    selection, images, split = stats_images(cfg, splits)
    start = time.perf_counter()
    # an undecodable image in one rank's shard stops every rank (not a hang in the all-reduce)
    sums = distributed.all_or_none(
        env,
        lambda: stats_process.compute_stats(
            list(images.files),
            resize_shorter=cfg.stats.resize,
            num_threads=max(1, cfg.num_threads),  # torchvision's 0 workers: the pass still needs a thread
            batch_size=cfg.stats.batch_size,
            device=device,
            shard_id=env.rank,
            num_shards=env.world_size,
            decoder=decoder,
        ),
    )
    if env.distributed:
        ints, floats = sums.to_arrays()
        ints_t = distributed.all_reduce_sum(env, torch.from_numpy(ints).to(device))
        floats_t = distributed.all_reduce_sum(env, torch.from_numpy(floats).to(device))
        sums = channel_sums.PartialSums.from_arrays(ints_t.cpu().numpy(), floats_t.cpu().numpy())
    holdout = {"size": cfg.holdout.size, "seed": cfg.holdout.seed} if splits.holdout is not None else None
    return stats.build_record(
        sums,
        selection=selection,
        root=cfg.root,
        split=split,
        holdout=holdout,
        elapsed_s=time.perf_counter() - start,
        resize_shorter=cfg.stats.resize,
        max_images=cfg.stats.max_images,
        sample_seed=cfg.stats.seed,
        decoder=decoder,
        selection_fingerprint=fingerprint,
    )


def _fingerprint(cfg: DataConfig, splits: Splits) -> str:
    """The selection's fingerprint: it stats every file (3-5 s for ImageNet's 1.28M files on a local
    disk, minutes on network storage), so a start computes it once, on rank 0, and passes it along."""
    selection, _ = stats_selection(cfg, splits)
    return stats.fingerprint(selection, cfg.root)


def _existing(cfg: DataConfig, splits: Splits) -> tuple[Path, stats.StatsRecord | None, str]:
    fingerprint = _fingerprint(cfg, splits)
    path = stats_path(cfg, fingerprint)
    return path, (stats.read_stats_file(path) if path.is_file() else None), fingerprint


def _checked(
    cfg: DataConfig, splits: Splits, record: stats.StatsRecord, path: Path, fingerprint: str
) -> list[str]:
    warnings = check_leakage_and_staleness(cfg, splits, record, path, fingerprint)
    stats.check_settings(record, expected_settings(cfg, splits, cfg.stats.resize), path)
    return warnings


def compute_and_save(
    cfg: DataConfig, splits: Splits, env: DistEnv, device: torch.device
) -> tuple[stats.StatsRecord, Path]:
    """`resnet-repro stats`: always recompute; rank 0 writes the file."""
    if cfg.normalization == "pixel_mean":
        return pixel_mean.compute_and_save(cfg, splits, env, device)
    # only the path: an old or corrupt file there is what this command replaces
    fingerprint = distributed.broadcast_object(env, _fingerprint(cfg, splits) if env.is_main else None)
    path = stats_path(cfg, fingerprint)
    return _compute_and_write(cfg, splits, env, device, path, fingerprint), path


def _compute_and_write(
    cfg: DataConfig, splits: Splits, env: DistEnv, device: torch.device, path: Path, fingerprint: str
) -> stats.StatsRecord:
    """The pass, then rank 0 writes `path`; whether it can be written is checked first."""
    distributed.all_or_none(env, lambda: stats.check_writable(path) if env.is_main else None)
    record = compute_record(cfg, splits, env, device, fingerprint)
    if env.is_main:
        stats.write_stats_file(path, record)
    return record


def resolve(
    cfg: DataConfig, splits: Splits, env: DistEnv, device: torch.device
) -> tuple[Normalization, list[str]]:
    """The normalization of a training run, the same on every rank, plus warnings to log."""
    if cfg.normalization == "none":
        return Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "none", "pixels scaled to [0, 1]"), []
    if cfg.normalization == "published":
        return Normalization(tuple(cfg.mean), tuple(cfg.std), "published", "data.mean / data.std"), []
    if cfg.normalization == "pixel_mean":
        return pixel_mean.resolve(cfg, splits, env, device)

    # rank 0 looks for the file (fingerprinting stats every file: once, not per rank)
    found: object = None
    if env.is_main:
        try:
            found = _existing(cfg, splits)
        except UserError as e:
            found = e
    found = distributed.broadcast_object(env, found)
    if isinstance(found, UserError):
        raise found
    path, record, fingerprint = found
    computed_now = record is None
    if computed_now:
        record = _compute_and_write(cfg, splits, env, device, path, fingerprint)

    outcome: object = None
    if env.is_main:
        try:
            outcome = _checked(cfg, splits, record, path, fingerprint)
        except UserError as e:
            outcome = e
    outcome = distributed.broadcast_object(env, outcome)
    if isinstance(outcome, UserError):
        raise outcome
    how = "computed now" if computed_now else "loaded"
    detail = (
        f"{how} from {path} ({record.split}, {record.num_images} images, "
        f"resize {record.resize_shorter}, decoder {record.decoder}, fingerprint {record.fingerprint[:12]})"
    )
    return Normalization(tuple(record.mean), tuple(record.std), "computed", detail), list(outcome)
