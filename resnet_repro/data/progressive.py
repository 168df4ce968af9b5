"""Progressive resizing (FFCV's ResNet recipes): the training crop grows from `start_size` to
`end_size` between `start_epoch` and `end_epoch`, linearly, rounded to a multiple of `step`;
evaluation keeps data.image_size. Small early crops make the first epochs cheap; testing at a
higher resolution than the last training crop suits the train/test resolution discrepancy that
Touvron et al. 2019 ("FixRes") describe.

The size is a function of the epoch alone, so a resumed run trains each epoch at the size the
uninterrupted run would have used.
"""

from __future__ import annotations

import dataclasses

from resnet_repro.config import DataConfig, ProgressiveConfig


def is_active(cfg: ProgressiveConfig) -> bool:
    return cfg.start_size is not None


def size_at(cfg: ProgressiveConfig, epoch: int, epochs: int) -> int:
    """The training crop of epoch `epoch` (0-based) of a run of `epochs` epochs."""
    assert cfg.start_size is not None and cfg.end_size is not None
    end_epoch = epochs - 1 if cfg.end_epoch is None else cfg.end_epoch  # null: reached at the last
    if epoch <= cfg.start_epoch or end_epoch <= cfg.start_epoch:
        size = float(cfg.start_size if epoch <= cfg.start_epoch else cfg.end_size)
    elif epoch >= end_epoch:
        size = float(cfg.end_size)
    else:
        done = (epoch - cfg.start_epoch) / (end_epoch - cfg.start_epoch)
        size = cfg.start_size + done * (cfg.end_size - cfg.start_size)
    return max(cfg.step, int(round(size / cfg.step)) * cfg.step)


def train_data_config(cfg: DataConfig, epoch: int, epochs: int) -> DataConfig:
    """The data section the training loader of `epoch` uses (the evaluation loaders keep `cfg`)."""
    if not is_active(cfg.progressive):
        return cfg
    return dataclasses.replace(cfg, image_size=size_at(cfg.progressive, epoch, epochs))


def train_sizes(cfg: DataConfig, epochs: int) -> list[int]:
    """The distinct training crops of a run, in order (one compiled graph each)."""
    if not is_active(cfg.progressive):
        return [cfg.image_size]
    return list(dict.fromkeys(size_at(cfg.progressive, e, epochs) for e in range(epochs)))


def late_ramp(cfg: DataConfig, epochs: int) -> str | None:
    """A warning where the training crop never reaches end_size (the ramp ends at or after the last
    epoch: a preset's epochs in a shortened run, or a typo), else None. Not an error, as for
    step milestones (schedule.late_milestones)."""
    p = cfg.progressive
    if not is_active(p):
        return None
    assert p.end_size is not None
    last, final = size_at(p, epochs - 1, epochs), max(p.step, int(round(p.end_size / p.step)) * p.step)
    if last == final:
        return None
    end = "null" if p.end_epoch is None else p.end_epoch
    return (
        f"data.progressive.start_epoch={p.start_epoch} and end_epoch={end} (0-based) leave the ramp "
        f"unfinished at the last epoch ({epochs} epochs): it trains at {last} px, never at "
        f"end_size={p.end_size}"
    )


def describe(cfg: DataConfig, epochs: int) -> str:
    p = cfg.progressive
    sizes = [size_at(p, e, epochs) for e in range(epochs)]
    return (
        f"training crop {sizes[0]} -> {sizes[-1]} px (epochs {p.start_epoch + 1}-"
        f"{(p.end_epoch if p.end_epoch is not None else epochs - 1) + 1}, multiples of {p.step}); "
        f"evaluation at {cfg.image_size} px"
    )
