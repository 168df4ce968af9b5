"""torchvision ResNets by name, trained from scratch, plus the paper's (v1) stride placement and
the regularizers a researcher may switch on.

torchvision already gives what the paper's init needs: Kaiming-normal (fan_out, relu) conv
weights, BatchNorm gamma=1 / beta=0, and no bias in any conv that feeds a BatchNorm (its bias
would be cancelled by the mean subtraction; beta does its job). Regularizers are attached as
forward hooks that act only in training mode, so parameter names stay torchvision's and a
torchvision state dict loads as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
from torchvision import models as tvm
from torchvision.ops import drop_block2d, stochastic_depth

from resnet_repro.config import ModelConfig, RegularizationConfig, UserError

_FACTORIES: dict[str, Callable[..., tvm.ResNet]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
    "resnet152": tvm.resnet152,
}
MODEL_NAMES = tuple(_FACTORIES)
STAGES = ("layer1", "layer2", "layer3", "layer4")


class DropBlockRate:
    """The DropBlock drop probability now; the training loop ramps it up linearly per epoch."""

    def __init__(self, final_p: float, ramp_epochs: int) -> None:
        self.final_p, self.ramp_epochs = final_p, ramp_epochs
        self.p = final_p if ramp_epochs == 0 else 0.0

    def set_epoch(self, epoch: int) -> None:
        """`epoch` counts from 0; the final rate is reached after `ramp_epochs` epochs."""
        if self.ramp_epochs > 0:
            self.p = self.final_p * min(1.0, epoch / self.ramp_epochs)


def _norm_layer(cfg: ModelConfig) -> Callable[[int], nn.Module]:
    if cfg.norm == "bn":
        return partial(nn.BatchNorm2d, momentum=cfg.bn_momentum, eps=cfg.bn_eps)
    if cfg.norm == "gn":
        return partial(nn.GroupNorm, cfg.gn_groups)
    raise UserError(f"model.norm={cfg.norm!r} is unknown; choose bn or gn")


def _use_v1_strides(model: tvm.ResNet) -> None:
    """Paper (v1) placement: the stride-2 of a downsampling bottleneck sits in its first 1x1 conv,
    not in the 3x3 conv (torchvision's v1.5). Parameter shapes are unchanged."""
    for stage in STAGES[1:]:
        block = getattr(model, stage)[0]
        if isinstance(block, tvm.resnet.Bottleneck) and block.conv2.stride == (2, 2):
            block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)


def _use_cifar_stem(model: tvm.ResNet) -> None:
    """The stem for 32 px images: a 3x3 stride-1 conv and no max pool, so stage 1 sees 32x32
    instead of 8x8 (the ImageNet stem's 7x7 stride 2 + max pool divide by 4). Same parameter name
    (conv1.weight), a [64, 3, 3, 3] shape, initialized as torchvision initializes its convs."""
    conv = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    model.conv1 = conv
    model.maxpool = nn.Identity()


def _residual_branch_ends(model: tvm.ResNet) -> list[nn.Module]:
    """The last norm layer of every block's residual branch, in depth order."""
    ends = []
    for stage in STAGES:
        for block in getattr(model, stage):
            ends.append(block.bn3 if isinstance(block, tvm.resnet.Bottleneck) else block.bn2)
    return ends


@torch.compiler.disable
def _drop_block(out: torch.Tensor, rate: DropBlockRate, block_size: int, training: bool) -> torch.Tensor:
    """torchvision's drop_block2d with the block clamped to the largest odd size that fits the
    feature map (small images give 2x2 maps in stage 4; the op needs an odd block).

    Run eagerly under torch.compile: the ramped rate is a Python number that changes every epoch,
    and a compiled graph guarding on it would be recompiled each epoch (then, past dynamo's
    recompile limit, silently run uncompiled)."""
    p = rate.p
    size = min(block_size, out.shape[-1], out.shape[-2])
    size -= 1 - size % 2
    if p == 0 or size < 1:
        return out
    return drop_block2d(out, p, size, training=training)


def _attach_regularizers(model: tvm.ResNet, reg: RegularizationConfig) -> DropBlockRate | None:
    if reg.stochastic_depth > 0:
        # Linearly increasing drop rate with depth (Huang et al. 2016): the last block drops at `p`
        ends = _residual_branch_ends(model)
        for i, end in enumerate(ends):
            p = reg.stochastic_depth * (i + 1) / len(ends)
            end.register_forward_hook(
                lambda m, _i, out, p=p: stochastic_depth(out, p, "row", training=m.training)
            )
    if reg.spatial_dropout > 0:
        for stage in STAGES:
            getattr(model, stage).register_forward_hook(
                lambda m, _i, out: nn.functional.dropout2d(out, reg.spatial_dropout, training=m.training)
            )
    rate = None
    if reg.dropblock > 0:
        rate = DropBlockRate(reg.dropblock, reg.dropblock_ramp_epochs)
        for stage in ("layer3", "layer4"):
            getattr(model, stage).register_forward_hook(
                lambda m, _i, out: _drop_block(out, rate, reg.dropblock_size, m.training)
            )
    if reg.dropout > 0:
        model.avgpool.register_forward_hook(
            lambda m, _i, out: nn.functional.dropout(out, reg.dropout, training=m.training)
        )
    return rate


def build_model(cfg: ModelConfig, num_classes: int, reg: RegularizationConfig | None = None) -> nn.Module:
    """The model; `model.dropblock_rate` (or None) is the handle to ramp DropBlock per epoch."""
    try:
        factory = _FACTORIES[cfg.name]
    except KeyError:
        raise UserError(
            f"model.name={cfg.name!r} is unknown; choose one of {', '.join(MODEL_NAMES)}"
        ) from None
    if cfg.variant not in ("v1.5", "v1"):
        raise UserError(f"model.variant={cfg.variant!r} is unknown; choose v1.5 (torchvision) or v1 (paper)")
    model = factory(
        weights=None,
        num_classes=num_classes,
        zero_init_residual=cfg.zero_init_residual,
        norm_layer=_norm_layer(cfg),
    )
    if cfg.variant == "v1":
        _use_v1_strides(model)
    if cfg.stem == "cifar":
        _use_cifar_stem(model)
    elif cfg.stem != "imagenet":
        raise UserError(f"model.stem={cfg.stem!r} is unknown; choose imagenet or cifar (32 px images)")
    if cfg.sync_bn and cfg.norm == "bn":
        # before the hooks: conversion replaces the BatchNorm modules the hooks attach to
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.dropblock_rate = _attach_regularizers(model, reg or RegularizationConfig())
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
