"""Optimizers by name, with the LR derived from the global batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from resnet_repro.config import OptimConfig, UserError


def peak_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule: lr_per_256 is the LR for 256 images per step."""
    return cfg.lr_per_256 * global_batch / 256


def _sgd(params, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": _sgd}
OPTIMIZER_NAMES = tuple(_OPTIMIZERS)


def build_optimizer(cfg: OptimConfig, model: nn.Module, global_batch: int) -> torch.optim.Optimizer:
    try:
        make = _OPTIMIZERS[cfg.name]
    except KeyError:
        raise UserError(
            f"optim.name={cfg.name!r} is unknown; choose one of {', '.join(OPTIMIZER_NAMES)}"
        ) from None
    if cfg.nesterov and cfg.momentum <= 0:
        raise UserError(f"optim.nesterov=true needs optim.momentum > 0 (got {cfg.momentum})")
    return make(model.parameters(), cfg, peak_lr(cfg, global_batch))
