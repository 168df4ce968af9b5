"""Synthetic batches for throughput benchmarks: the training step without any decode cost.

One batch of random images (standard normal, like normalized pixels) and random labels is made
once, directly on the device, and yielded every step; the last step of a pass gets a slice of it,
so lengths and partial batches follow the same contract as DaliLoader and TorchLoader.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from resnet_repro.config import UserError


class SyntheticLoader:
    """Iterates `ceil(num_images / batch_size)` batches of (images float32 NCHW, labels int64 [N]).

    Every step yields the same tensors (no copy, so no per-step cost): callers must not modify them
    in place. Deterministic for a given (seed, device type).
    """

    def __init__(
        self,
        num_images: int,
        num_classes: int,
        image_size: int,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        for name, value in (
            ("num_images", num_images),
            ("num_classes", num_classes),
            ("image_size", image_size),
            ("batch_size", batch_size),
        ):
            if value <= 0:
                raise UserError(f"synthetic data: {name}={value} must be positive")
        self.num_images = num_images
        self.batch_size = batch_size
        n = min(batch_size, num_images)
        # A generator on the device itself: no host-side generation or copy, even for big batches
        g = torch.Generator(device=device).manual_seed(seed)
        self._images = torch.randn(n, 3, image_size, image_size, generator=g, device=device)
        self._labels = torch.randint(0, num_classes, (n,), generator=g, device=device)

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step in range(len(self)):
            n = min(self.batch_size, self.num_images - step * self.batch_size)
            if n == self._images.shape[0]:
                yield self._images, self._labels
            else:
                yield self._images[:n], self._labels[:n]
