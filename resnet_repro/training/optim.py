"""Optimizers by name, weight-decay parameter groups, and the L1 penalty.

Weight decay semantics (see docs/recipes.md):
- SGD:   w <- w - lr * (g + wd * w)                   (decay as in its definition, via momentum)
- AdamW: w <- w - lr * wd * w - lr * adam_step(g)       (decoupled from the adaptive rescaling)
- Adam:  g <- g + wd * w, then the adaptive step         (an L2 term, rescaled per parameter)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from resnet_repro.config import OptimConfig, UserError

# optimizer state per parameter, in copies of the parameters (torch.optim's own buffers): SGD one
# momentum buffer (none at momentum 0), Adam and AdamW two moments (exp_avg, exp_avg_sq); their
# per-parameter step counters are scalars
OPTIMIZER_STATE_COPIES = {"sgd": 1, "adam": 2, "adamw": 2}

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def peak_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule: lr_per_256 is the LR for 256 images per step."""
    return cfg.lr_per_256 * global_batch / 256


@dataclass(frozen=True)
class GroupSummary:
    name: str
    weight_decay: float
    tensors: int
    parameters: int


def decay_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Parameter groups by module type and tensor rank, never by name substring: every norm
    layer's weight and bias (torchvision's downsample.1 BatchNorms included) and every bias go to
    the no-decay group when `decay_norm_and_bias` is false."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            exempt = isinstance(module, NORM_TYPES) or p.ndim <= 1
            (no_decay if exempt and not decay_norm_and_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "group": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "group": "no_decay"})
    return groups


def summarize_groups(optimizer: torch.optim.Optimizer) -> list[GroupSummary]:
    return [
        GroupSummary(
            name=g.get("group", str(i)),
            weight_decay=g["weight_decay"],
            tensors=len(g["params"]),
            parameters=sum(p.numel() for p in g["params"]),
        )
        for i, g in enumerate(optimizer.param_groups)
    ]


def _sgd(groups, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.nesterov and cfg.momentum <= 0:
        raise UserError(f"optim.nesterov=true needs optim.momentum > 0 (got {cfg.momentum})")
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def _adam(groups, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)


def _adamw(groups, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)


_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}
OPTIMIZER_NAMES = tuple(_OPTIMIZERS)


def build_optimizer(cfg: OptimConfig, model: nn.Module, global_batch: int) -> torch.optim.Optimizer:
    try:
        make = _OPTIMIZERS[cfg.name]
    except KeyError:
        raise UserError(
            f"optim.name={cfg.name!r} is unknown; choose one of {', '.join(OPTIMIZER_NAMES)}"
        ) from None
    groups = decay_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    return make(groups, cfg, peak_lr(cfg, global_batch))


def l1_weights(model: nn.Module) -> list[torch.Tensor]:
    """Conv and linear weights: what the L1 penalty covers (not norm parameters nor biases)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def l1_penalty(weights: list[torch.Tensor], lam: float) -> torch.Tensor:
    """lambda * sum |w| (PyTorch has no built-in L1 regularizer)."""
    return lam * torch.stack([w.abs().sum() for w in weights]).sum()


def optimizer_state_copies(o: OptimConfig) -> int:
    """Copies of the parameters the optimizer keeps."""
    if o.name not in OPTIMIZER_STATE_COPIES:
        raise UserError(
            f"optim.name={o.name!r} is unknown; choose one of {', '.join(OPTIMIZER_STATE_COPIES)}"
        )
    if o.name == "sgd" and o.momentum == 0:
        return 0
    return OPTIMIZER_STATE_COPIES[o.name]
