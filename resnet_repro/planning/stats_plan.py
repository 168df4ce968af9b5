"""What a training run will do about its normalization statistics, decided as it decides, without
the pass: load a file (checked for leakage and staleness: a stale file is refused here as there),
compute and write one (checked writable first: a read-only data folder is refused here as there),
or use fixed numbers. `rehearse` prints the decision and what a pass costs."""

from __future__ import annotations

import time
from pathlib import Path

from resnet_repro.config import RootConfig
from resnet_repro.data import normalization, stats
from resnet_repro.data.selection import Splits

DECODE_SAMPLE = 8  # images decoded to time this machine's decoder


def decide(cfg: RootConfig, splits: Splits) -> str:
    """One line: what the real run does about its statistics; raises the UserError it would raise."""
    d = cfg.data
    if d.normalization == "none":
        return "none: pixels scaled to [0, 1]"
    if d.normalization == "published":
        return "fixed: data.mean / data.std"
    selection, images, split = normalization.stats_images(d, splits)
    fingerprint = stats.fingerprint(selection, d.root)
    if d.normalization == "pixel_mean":
        from resnet_repro.data import pixel_mean

        path = pixel_mean.record_path(d, fingerprint)
        found = pixel_mean.read(path)
        if found is not None:
            pixel_mean.check(d, splits, found[0], found[1], path)
            return f"mean image loaded from {path} (checked against this run's {split} split)"
    else:
        path = normalization.stats_path(d, fingerprint)
        if path.is_file():
            record = stats.read_stats_file(path)
            normalization._checked(d, splits, record, path, fingerprint)
            return f"loaded from {path} (checked against this run's {split} split)"
    stats.check_writable(path)
    return (
        f"computed at the start on {len(images):,} images of {split} and written to {path} "
        f"(writable: checked); {_pass_cost(images.files)}"
    )


def _pass_cost(files: tuple[str, ...]) -> str:
    """The pass's cost at this machine's decode rate (a few of its images decoded by PIL, one
    process: the run's DALI on a GPU is faster)."""
    from PIL import Image

    sample = files[:: max(1, len(files) // DECODE_SAMPLE)][:DECODE_SAMPLE]
    start, decoded = time.perf_counter(), 0
    for f in sample:
        try:
            with Image.open(Path(f)) as im:
                im.convert("RGB").load()
            decoded += 1
        except Exception:  # noqa: BLE001 - a bad image is verify-data's to report, not the timing's
            continue
    if not decoded:
        return "its cost unknown (no image of the sample decoded here)"
    rate = decoded / max(time.perf_counter() - start, 1e-6)
    minutes = len(files) / rate / 60
    return f"about {minutes:,.1f} min at {rate:,.0f} img/s (decoded here, one process)"
