"""Exact evaluation: correct counts, loss sums and totals are summed over ranks, never averaged."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from resnet_repro.cluster import distributed
from resnet_repro.cluster.distributed import DistEnv


def autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
    env: DistEnv,
    device: torch.device,
    *,
    expected_total: int,
    precision: str = "fp32",
    scorer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Top-1, top-5 (fractions) and mean cross-entropy over every image of the split exactly once.

    `batches` is this rank's shard (None for a rank whose shard is empty). Raises if the images
    counted over all ranks differ from `expected_total`. `scorer(model, images)`: (N, classes)
    scores of a batch under a test protocol (resnet_repro.evaluation.protocols.Scorer); default the logits.
    """
    was_training = model.training
    model.eval()
    # correct@1, correct@5, summed loss, count; float64 so sums of millions stay exact
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for images, labels in batches or ():
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(images) if scorer is None else scorer(model, images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        sums[0] += hits[:, 0].sum()
        sums[1] += hits.any(dim=1).sum()
        sums[2] += F.cross_entropy(logits, labels, reduction="sum").double()
        sums[3] += labels.numel()
    distributed.all_reduce_sum(env, sums)
    model.train(was_training)
    correct1, correct5, loss_sum, count = sums.tolist()
    if int(count) != expected_total:
        raise RuntimeError(f"evaluation counted {int(count)} images, expected {expected_total}")
    return {
        "top1": correct1 / count,
        "top5": correct5 / count,
        "loss": loss_sum / count,
        "num_samples": int(count),
    }
