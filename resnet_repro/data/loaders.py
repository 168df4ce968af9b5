"""The input backend chosen by data.backend: dali (default), torchvision, or synthetic.

Each loader iterates (images float32 NCHW on the device, labels int64 [N]) over an explicit,
already sharded and ordered list of files, keeps a partial last batch and never pads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from resnet_repro.config import DataConfig


class Loader(Protocol):
    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def build_loader(
    cfg: DataConfig,
    files: Sequence[str],
    labels: Sequence[int],
    *,
    train: bool,
    batch_size: int,
    seed: int,
    device: torch.device,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    mean_image: np.ndarray | None = None,
    channels_last: bool = False,
    eval_mode: str = "center",
) -> Loader:
    """The configured backend over `files`; `mean` / `std` / `mean_image`: the run's resolved
    normalization (default: data.mean / data.std); `eval_mode`: see Transform.eval_mode.
    data.num_threads is DALI's thread count or the DataLoader's worker count. `channels_last`: the
    model's memory format; DALI then emits HWC and the batches are channels_last views, so the
    training step's `.contiguous(channels_last)` copies nothing."""
    if cfg.backend == "synthetic":
        from resnet_repro.data.synthetic import SyntheticLoader

        # same number of images and classes as the real selection, no decoding at all
        return SyntheticLoader(len(files), max(labels) + 1, cfg.image_size, batch_size, device, seed)
    from resnet_repro.data.dali import Transform

    transform = Transform.from_config(
        cfg, train=train, mean=mean, std=std, mean_image=mean_image, eval_mode=eval_mode
    )
    common = {"batch_size": batch_size, "seed": seed, "device": device, "prefetch": cfg.prefetch}
    if cfg.backend == "dali":
        from resnet_repro.data.dali import DaliLoader

        return DaliLoader(
            files, labels, transform, num_threads=cfg.num_threads, channels_last=channels_last, **common
        )
    from resnet_repro.data.torch_loader import TorchLoader

    return TorchLoader(files, labels, transform, num_workers=cfg.num_threads, decoder=cfg.decoder, **common)
