"""Per-pixel mean image (He et al. 2016, after Krizhevsky et al. 2012): data.normalization=pixel_mean.

What: a float64 image [3, S, S] (S = data.image_size, RGB, [0, 1] scale), the average of the
training selection's images at the training resolution: each image's shorter side resized to
S / crop_ratio and centre-cropped to S. Every crop a run feeds the network (random training crops,
the evaluation centre crop) is S x S, so one mean image serves them all.

Provenance: the same selection (train, or train minus holdout; never the holdout under
train_minus_holdout, never the evaluation split), the same stratified sample (data.stats.max_images),
fingerprint, leakage guard and mismatch policy as the per-channel statistics
(resnet_repro.data.normalization / stats); the JSON record is a StatsRecord with one more key,
`pixel_mean`, and the mean image itself lies beside it in a torch file whose sha256 the record holds.

The pass reads the images through the run's own evaluation loader (DALI, or the torchvision
backend's decoder) built with mean 0 and std 1, so the crops are exactly those the evaluation sees,
as float32 integers 0..255. Per-pixel sums are exact int64 (255 x 1.28M images < 2^31) and are
divided once in float64; the per-channel sums and sums of squares are exact Python ints, so shards
merge exactly, as for the per-channel statistics.

Scale: input = (x - mean_image) / pixel_std[channel], where pixel_std is each channel's std of the
pixels about the mean image, from the same pass. He et al. subtract the mean only (Caffe, 0..255
scale); dividing by one constant per channel changes nothing the network can represent (conv1 is
followed by BatchNorm) but gives the input unit variance per channel, as data.normalization=computed
does, so the same LR, weight decay and initialization apply whichever normalization a run picks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnet_repro.cluster import distributed
from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import DataConfig, UserError
from resnet_repro.data import channel_sums, sharding, stats, stats_process
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

FORMAT = 1
RECOMPUTE = "recompute with `resnet-repro stats data.normalization=pixel_mean`"


@dataclass
class PixelMeanRecord(stats.StatsRecord):
    """The per-channel StatsRecord of the pass (mean / std over the crops' pixels) plus `pixel_mean`:
    {format, image_size, resize_shorter, crop, pixel_std [3], file, sha256}."""

    pixel_mean: dict[str, Any] | None = None


def eval_resize(cfg: DataConfig) -> int:
    """Shorter side before the centre crop: the evaluation transform's (Transform.eval_resize)."""
    return round(cfg.image_size / cfg.crop_ratio)


def record_path(cfg: DataConfig, fingerprint: str) -> Path:
    """Beside the per-channel stats file (data.stats.path, else the default beside the data), one
    record per selection, resolution, sample and decoder, named as the per-channel files are:
    <stem>-pixelmean<S>r<resize>[-n<max_images>-s<seed>][-<decoder>].json (DALI adds nothing)."""
    base = (
        Path(cfg.stats.path).expanduser()
        if cfg.stats.path
        else stats.default_stats_path(cfg.root, fingerprint)
    )
    suffix = f"-pixelmean{cfg.image_size}r{eval_resize(cfg)}" + sample_and_decoder_suffix(cfg)
    return base.with_name(base.stem + suffix + ".json")


def tensor_path(json_path: Path) -> Path:
    return json_path.with_suffix(".pt")


def digest(mean_image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mean_image, dtype=np.float64).tobytes()).hexdigest()


# -------------------------------------------------------------------------------------------- the pass
@dataclass
class PixelSums:
    """Exact sums over some crops: per-pixel int64 [3, S, S] plus the per-channel PartialSums."""

    pixels: np.ndarray
    channels: channel_sums.PartialSums


def shard_sums(cfg: DataConfig, files: list[str], decoder: str, device: torch.device) -> PixelSums:
    """crop_sums over one rank's shard; with DALI in a process of its own (data/stats_process.py)."""
    if decoder != "dali" or not files:
        return crop_sums(files, cfg=cfg, decoder=decoder, device=device)
    in_flight = cfg.stats.batch_size * (cfg.prefetch + 1)
    target = f"{__name__}:crop_sums"
    return stats_process.run(target, files, in_flight=in_flight, cfg=cfg, decoder=decoder, device=device)


def crop_sums(
    files: list[str],
    *,
    cfg: DataConfig,
    decoder: str,
    device: torch.device,
    on_batch: Callable[[int], object] | None = None,
) -> PixelSums:
    """Sums over the centre crops of `files`, read by the evaluation loader; `on_batch(i)` before
    each batch is decoded, i the index of its first file (DALI's loader decodes its first batch
    when it is built)."""
    from resnet_repro.data.dali import Transform

    s = cfg.image_size
    pixel_sum = torch.zeros((3, s, s), dtype=torch.int64, device=device)
    channels = channel_sums.PartialSums()
    if not files:
        return PixelSums(pixel_sum.cpu().numpy(), channels)
    # mean 0 and std 1/255 on the [0, 1] scale: the loaders apply 0 and 1.0 on the 0..255 scale, so
    # their float32 output is the crop's integer pixels
    raw = Transform(train=False, image_size=s, crop_ratio=cfg.crop_ratio, mean=(0.0,) * 3, std=(1 / 255,) * 3)
    loader: Any
    labels = [0] * len(files)
    common = {"batch_size": cfg.stats.batch_size, "seed": 0, "device": device, "prefetch": cfg.prefetch}
    if on_batch is not None:
        on_batch(0)
    if decoder == "dali":
        from resnet_repro.data.dali import DaliLoader

        loader = DaliLoader(files, labels, raw, num_threads=cfg.num_threads, **common)
    else:
        from resnet_repro.data.torch_loader import TorchLoader

        loader = TorchLoader(files, labels, raw, num_workers=cfg.num_threads, decoder=decoder, **common)
    for k, (images, _) in enumerate(loader):
        if on_batch is not None:
            on_batch((k + 1) * cfg.stats.batch_size)  # the next one (past the end: the next pass's)
        x = images.round().to(torch.int64)  # exact integers already; round() guards the conversion
        pixel_sum += x.sum(dim=0)
        per_image = x.sum(dim=(2, 3))  # [B, 3]
        means = per_image.double() / (255.0 * s * s)
        w2 = float(s * s) ** 2  # every crop has s x s pixels: the weights of mean_stderr are equal
        batch = channel_sums.PartialSums(
            num_images=x.shape[0],
            num_pixels=x.shape[0] * s * s,
            sum=tuple(int(v) for v in per_image.sum(dim=0).tolist()),
            sum_sq=tuple(int(v) for v in (x * x).sum(dim=(0, 2, 3)).tolist()),
            pixels_sq_sum=w2 * x.shape[0],
            weighted_mean_sum=tuple((w2 * means.sum(dim=0)).tolist()),
            weighted_mean_sq_sum=tuple((w2 * (means * means).sum(dim=0)).tolist()),
        )
        channels = channels + batch
    return PixelSums(pixel_sum.cpu().numpy(), channels)


def finalize(sums: PixelSums) -> tuple[np.ndarray, list[float]]:
    """(mean image float64 [3, S, S] on [0, 1], pixel_std [3]): std of each channel's pixels about
    the mean image, sqrt((N Q - sum_p S_p^2) / (255^2 N^2 P)) in exact integers, rounded once."""
    n = sums.channels.num_images
    if n <= 0:
        raise UserError("no images to compute the mean image from (empty file list?)")
    p = sums.pixels[0].size
    mean_image = sums.pixels.astype(np.float64) / (255.0 * n)
    pixel_std = []
    for c in range(3):
        s2 = sum(v * v for v in sums.pixels[c].ravel().tolist())  # Python ints: ~1e22 on ImageNet
        pixel_std.append(math.sqrt((n * sums.channels.sum_sq[c] - s2) / (255 * 255 * n * n * p)))
    if min(pixel_std) <= 0:
        raise UserError(f"the training crops have no spread about their mean image (std {pixel_std})")
    return mean_image, pixel_std


def compute(
    cfg: DataConfig, splits: Splits, env: DistEnv, device: torch.device
) -> tuple[PixelMeanRecord, np.ndarray]:
    """One pass over the selection (or its sample), split across ranks, exact sums all-reduced."""
    decoder = available_stats_decoder(cfg)
    selection, images, split = stats_images(cfg, splits)
    idx = sharding.eval_indices(len(images), rank=env.rank, world_size=env.world_size)
    start = time.perf_counter()
    sums = distributed.all_or_none(
        env, lambda: shard_sums(cfg, [images.files[i] for i in idx], decoder, device)
    )
    if env.distributed:
        ints, floats = sums.channels.to_arrays()
        ints_t = distributed.all_reduce_sum(env, torch.from_numpy(ints).to(device))
        floats_t = distributed.all_reduce_sum(env, torch.from_numpy(floats).to(device))
        pixels_t = distributed.all_reduce_sum(env, torch.from_numpy(sums.pixels).to(device))
        channels = channel_sums.PartialSums.from_arrays(ints_t.cpu().numpy(), floats_t.cpu().numpy())
        sums = PixelSums(pixels_t.cpu().numpy(), channels)
    mean_image, pixel_std = finalize(sums)
    holdout = {"size": cfg.holdout.size, "seed": cfg.holdout.seed} if splits.holdout is not None else None
    base = stats.build_record(
        sums.channels,
        selection=selection,
        root=cfg.root,
        split=split,
        holdout=holdout,
        elapsed_s=time.perf_counter() - start,
        resize_shorter=eval_resize(cfg),
        max_images=cfg.stats.max_images,
        sample_seed=cfg.stats.seed,
        decoder=decoder,
    )
    extra = {
        "format": FORMAT,
        "image_size": cfg.image_size,
        "resize_shorter": eval_resize(cfg),
        "crop": "centre",
        "pixel_std": pixel_std,
        "file": None,  # set when written
        "sha256": digest(mean_image),
    }
    return PixelMeanRecord(**dataclasses.asdict(base), pixel_mean=extra), mean_image


# -------------------------------------------------------------------------------------------- files
def write(path: Path, record: PixelMeanRecord, mean_image: np.ndarray) -> None:
    """The mean image first, then the record naming it (both atomic): a record on disk always has
    its image, and a reader that finds no record recomputes."""
    from resnet_repro.checkpoint import save_atomic

    image_path = tensor_path(path)
    assert record.pixel_mean is not None
    record.pixel_mean["file"] = image_path.name
    try:
        save_atomic({"mean_image": torch.from_numpy(mean_image)}, image_path)
    except OSError as e:
        raise UserError(
            f"cannot write the mean image {image_path} ({e.strerror or e}); set data.stats.path to a "
            "writable location and rerun"
        ) from e
    stats.write_stats_file(path, record)


def read(path: Path) -> tuple[PixelMeanRecord, np.ndarray] | None:
    """The record at `path` and its mean image; None when either file is missing (compute it)."""
    import json

    if not path.is_file() or not tensor_path(path).is_file():
        return None
    base = stats.read_stats_file(path)  # validates the per-channel part, one-line errors
    extra = json.loads(path.read_text()).get("pixel_mean")
    if not isinstance(extra, dict) or extra.get("format", FORMAT) > FORMAT:
        raise UserError(f"{path} is not a pixel-mean record this resnet-repro reads; {RECOMPUTE}")
    image_path = tensor_path(path)
    try:
        loaded = torch.load(image_path, map_location="cpu", weights_only=True)
        mean_image = loaded["mean_image"].numpy().astype(np.float64)
    except Exception as e:  # a torn, foreign or hand-edited file: torch raises many types
        raise UserError(f"cannot read the mean image {image_path} ({type(e).__name__}); {RECOMPUTE}") from e
    if digest(mean_image) != extra.get("sha256"):
        raise UserError(f"the mean image {image_path} does not match its record {path} (sha256); {RECOMPUTE}")
    if not (np.isfinite(mean_image).all() and mean_image.min() >= 0.0 and mean_image.max() <= 1.0):
        lo, hi = np.nanmin(mean_image), np.nanmax(mean_image)
        raise UserError(
            f"the mean image {image_path} holds values outside [0, 1] (pixel scale): {lo:g} to {hi:g}"
            f"{' and non-finite ones' if not np.isfinite(mean_image).all() else ''}; {RECOMPUTE}"
        )
    return PixelMeanRecord(**dataclasses.asdict(base), pixel_mean=extra), mean_image


def check(
    cfg: DataConfig, splits: Splits, record: PixelMeanRecord, mean_image: np.ndarray, path: Path
) -> list[str]:
    """The per-channel statistics' leakage and staleness guard, plus this run's resolution."""
    assert record.pixel_mean is not None
    want = (3, cfg.image_size, cfg.image_size)
    got = (record.pixel_mean.get("image_size"), record.pixel_mean.get("resize_shorter"))
    if got != (cfg.image_size, eval_resize(cfg)) or mean_image.shape != want:
        raise UserError(
            f"the mean image {path} is for image_size/resize {got} and has shape {mean_image.shape}; "
            f"this run needs {cfg.image_size}/{eval_resize(cfg)} (data.image_size / data.crop_ratio); "
            f"{RECOMPUTE}"
        )
    warnings = check_leakage_and_staleness(cfg, splits, record, path)
    # the sample and the decoder, as the per-channel file's (the resolution is checked above)
    stats.check_settings(record, expected_settings(cfg, splits, eval_resize(cfg)), path)
    return warnings


def _on_main(env: DistEnv, fn: Any) -> Any:
    """fn() on rank 0 only, its result (or its UserError) on every rank."""
    return distributed.broadcast_object(
        env, distributed.all_or_none(env, lambda: fn() if env.is_main else None)
    )


def _compute_and_write(
    cfg: DataConfig, splits: Splits, env: DistEnv, device: torch.device, path: Path
) -> tuple[PixelMeanRecord, np.ndarray]:
    """Whether `path` can be written is checked before the pass; rank 0 writes it after."""
    _on_main(env, lambda: stats.check_writable(path))
    record, mean_image = compute(cfg, splits, env, device)
    _on_main(env, lambda: write(path, record, mean_image))
    return record, mean_image


def compute_and_save(
    cfg: DataConfig, splits: Splits, env: DistEnv, device: torch.device
) -> tuple[PixelMeanRecord, Path]:
    """`resnet-repro stats data.normalization=pixel_mean`: always recompute; rank 0 writes."""
    path = _on_main(
        env, lambda: record_path(cfg, stats.fingerprint(stats_selection(cfg, splits)[0], cfg.root))
    )
    record, _ = _compute_and_write(cfg, splits, env, device, path)
    return record, path


def resolve(
    cfg: DataConfig, splits: Splits, env: DistEnv, device: torch.device
) -> tuple[Normalization, list[str]]:
    """The mean image and per-channel std of a run, the same on every rank, plus warnings to log.

    As data.normalization=computed: loaded when the record exists (refused when it saw held-out or
    evaluation images, or is stale, unless data.stats.allow_mismatch), computed first when missing."""

    def find() -> tuple[Path, tuple[PixelMeanRecord, np.ndarray] | None]:
        path = record_path(cfg, stats.fingerprint(stats_selection(cfg, splits)[0], cfg.root))
        return path, read(path)

    path, found = _on_main(env, find)
    computed_now = found is None
    record, mean_image = _compute_and_write(cfg, splits, env, device, path) if computed_now else found
    warnings = _on_main(env, lambda: check(cfg, splits, record, mean_image, path))
    assert record.pixel_mean is not None
    how = "computed now" if computed_now else "loaded"
    detail = (
        f"{how} from {path} ({record.split}, {record.num_images} images, "
        f"fingerprint {record.fingerprint[:12]})"
    )
    channel_means = tuple(float(v) for v in mean_image.mean(axis=(1, 2)))
    std = tuple(float(v) for v in record.pixel_mean["pixel_std"])
    return Normalization(channel_means, std, "pixel_mean", detail, mean_image=mean_image), list(warnings)
