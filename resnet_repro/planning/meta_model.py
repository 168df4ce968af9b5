"""The run's model on PyTorch's meta device (real modules and parameter shapes, no storage) and
the bytes of activations a training step keeps per image for its backward pass: what `rehearse`'s
check and the memory fit count without memory or time."""

from __future__ import annotations

import functools
import json
from typing import Any


@functools.lru_cache(maxsize=8)
def _meta_model(model_json: str, num_classes: int, regularization_json: str) -> Any:
    """The run's model on PyTorch's meta device (the real modules and parameter shapes, no storage);
    built once per distinct model section (the jobs of a sweep share it)."""
    import torch

    from resnet_repro.config import ModelConfig, RegularizationConfig
    from resnet_repro.models import build_model

    with torch.device("meta"):
        return build_model(
            ModelConfig(**json.loads(model_json)),
            num_classes,
            RegularizationConfig(**json.loads(regularization_json)),
        )


@functools.lru_cache(maxsize=8)
def _saved_activation_mb(model_json: str, num_classes: int, regularization_json: str, size: int) -> float:
    from resnet_repro.config import UserError

    net = _meta_model(model_json, num_classes, regularization_json)
    try:
        return saved_bytes_per_image(net, (3, size, size)) / 2**20
    except RuntimeError as e:
        if "overflow" not in str(e):
            raise
        raise UserError(
            f"a training crop of {size} px is too large for torch to size its tensors ({e}); check "
            "data.image_size and the data.progressive sizes"
        ) from e


def saved_bytes_per_image(net: Any, image_shape: tuple[int, ...]) -> float:
    """Bytes per image of the tensors a training forward of `net` keeps for its backward pass, each
    storage counted once and the parameters left out, for images of `image_shape` in float32
    (counted on a batch of 2: BatchNorm refuses one image at 1 x 1 px). On the meta device this
    costs no memory and a fraction of a second; it is the part of a step's memory that grows with
    the batch (the backward's transient gradients come on top)."""
    import torch

    device = next(net.parameters()).device
    params = {p.untyped_storage()._cdata for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in params:
            saved[key] = t.untyped_storage().nbytes()
        return t

    was_training = net.training
    net.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(torch.empty((2, *image_shape), device=device))
    finally:
        net.train(was_training)
    return sum(saved.values()) / 2
