"""torchvision ResNets by name, trained from scratch (weights=None)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from torchvision import models as tvm

from resnet_repro.config import ModelConfig, UserError

_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
    "resnet152": tvm.resnet152,
}
MODEL_NAMES = tuple(_FACTORIES)


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    try:
        factory = _FACTORIES[cfg.name]
    except KeyError:
        raise UserError(
            f"model.name={cfg.name!r} is unknown; choose one of {', '.join(MODEL_NAMES)}"
        ) from None
    return factory(weights=None, num_classes=num_classes, zero_init_residual=cfg.zero_init_residual)
