"""Which images a statistics pass reads, with which decoder, and the leakage and staleness guard on
a record of them: shared by the per-channel statistics (data/normalization.py) and the mean image
(data/pixel_mean.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resnet_repro.config import DataConfig, UserError
from resnet_repro.data import stats
from resnet_repro.data.splits import FileList


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # computed | published | none | pixel_mean | checkpoint
    detail: str  # provenance, one line
    # pixel_mean: float64 [3, image_size, image_size] on the [0, 1] scale, subtracted instead of
    # `mean` (which then holds its channel averages, for the record only)
    mean_image: np.ndarray | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        m = ", ".join(f"{v:.4f}" for v in self.mean)
        s = ", ".join(f"{v:.4f}" for v in self.std)
        if self.mean_image is not None:
            shape = "x".join(str(n) for n in self.mean_image.shape)
            return f"mean image {shape} (channel averages {m}) std ({s}); {self.source}: {self.detail}"
        return f"mean ({m}) std ({s}); {self.source}: {self.detail}"


@dataclass(frozen=True)
class Splits:
    """The file lists of a run. `train` excludes the holdout; `train_full` is the whole split."""

    train_full: FileList
    train: FileList
    holdout: FileList | None
    test: FileList


def stats_selection(cfg: DataConfig, splits: Splits) -> tuple[FileList, str]:
    """The images the statistics must cover, and the record's name for that selection."""
    if cfg.holdout.stats_from == "train_minus_holdout":
        return splits.train, "train_minus_holdout"
    return splits.train_full, "train"


def stats_decoder(cfg: DataConfig) -> str:
    """Decode for the statistics as the run's input pipeline does: DALI, or the torchvision
    backend's decoder (which needs no DALI)."""
    return cfg.decoder if cfg.backend == "torchvision" else "dali"


def sample_and_decoder_suffix(cfg: DataConfig) -> str:
    """The part of a statistics file's name that says which sample and decoder made it:
    `-n<max_images>-s<seed>` for a sample, `-<decoder>` for a decoder other than DALI."""
    suffix = f"-n{cfg.stats.max_images}-s{cfg.stats.seed}" if cfg.stats.max_images is not None else ""
    decoder = stats_decoder(cfg)
    return suffix + (f"-{decoder}" if decoder != "dali" else "")


def expected_settings(cfg: DataConfig, splits: Splits, resize_shorter: int | None) -> dict:
    """The settings (resize, sample, decoder) a statistics record for this run must have been
    computed with (the per-channel file's resize is data.stats.resize, the mean image's the
    evaluation resize)."""
    selection, _ = stats_selection(cfg, splits)
    return stats.record_settings(
        resize_shorter=resize_shorter,
        max_images=cfg.stats.max_images,
        sample_seed=cfg.stats.seed,
        decoder=stats_decoder(cfg),
        selection_size=len(selection),
    )


def available_stats_decoder(cfg: DataConfig) -> str:
    """stats_decoder(cfg), refused in one line when it is DALI and DALI is not installed."""
    import importlib.util

    decoder = stats_decoder(cfg)
    if decoder == "dali" and importlib.util.find_spec("nvidia.dali") is None:
        raise UserError(
            "computing normalization statistics with data.backend=dali needs NVIDIA DALI, which is not "
            "installed; install nvidia-dali-cuda130, or use data.backend=torchvision, or "
            "data.normalization=published (data.mean / data.std)"
        )
    return decoder


def stats_images(cfg: DataConfig, splits: Splits) -> tuple[FileList, FileList, str]:
    """(selection, the images actually read: all of it or its stratified sample, split name)."""
    selection, split = stats_selection(cfg, splits)
    images = selection
    if cfg.stats.max_images is not None and cfg.stats.max_images < len(selection):
        images = stats.stratified_sample(selection, cfg.stats.max_images, cfg.stats.seed)
    return selection, images, split


def check_leakage_and_staleness(
    cfg: DataConfig, splits: Splits, record: stats.StatsRecord, path: Path, fingerprint: str | None = None
) -> list[str]:
    """A statistics record against this run's selection: refused when it saw evaluation or holdout
    images, or (unless data.stats.allow_mismatch) a different file list; the per-channel file and
    the mean image share this guard."""
    selection, _ = stats_selection(cfg, splits)
    return stats.check_stats_file(
        record,
        train_selection=selection,
        test=splits.test,
        holdout=splits.holdout,
        stats_from=cfg.holdout.stats_from,
        root=cfg.root,
        allow_mismatch=cfg.stats.allow_mismatch,
        path=path,
        expected_fingerprint=fingerprint,
    )
