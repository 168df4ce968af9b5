"""An exponential moving average of the weights (and BatchNorm buffers), evaluated beside the raw
weights and saved in checkpoints: trainer.ema.decay.

After each optimizer step, ema = decay * ema + (1 - decay) * weights, for parameters and BatchNorm's
running statistics alike, so the averaged model is evaluated with statistics that match its weights.
The averages are torch's (get_ema_multi_avg_fn: one foreach lerp per device and dtype) and the
checkpoint format is AveragedModel's (`module.*` and `n_averaged`), but the update does not go
through AveragedModel.update_parameters: that reads its `n_averaged` counter (`n_averaged == 0`)
and copies it to the device every step, which on CUDA makes the host wait for the GPU. Here the
first-update decision is a Python count, and `n_averaged` is only kept in step (on the CPU) for
the checkpoint.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightEMA:
    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.averaged = AveragedModel(net, use_buffers=True)  # the copy, and the checkpoint format
        self._average = get_ema_multi_avg_fn(decay)
        self.updates = 0  # == n_averaged, held on the host: deciding the first copy reads no tensor

    @property
    def module(self) -> nn.Module:
        """The averaged network, for evaluation."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """After an optimizer step (the first call copies the weights). No host sync: kernels only."""
        ema = itertools.chain(self.averaged.module.parameters(), self.averaged.module.buffers())
        live = itertools.chain(net.parameters(), net.buffers())
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for e, w in zip(ema, live, strict=True):
            pair = groups.setdefault((e.device, e.dtype), ([], []))
            pair[0].append(e.detach())
            pair[1].append(w.detach())
        for averages, weights in groups.values():
            if self.updates == 0:
                torch._foreach_copy_(averages, weights)
            else:  # foreach lerp for floats; integer buffers (num_batches_tracked) as torch does
                self._average(averages, weights, self.updates)
        self.updates += 1
        self.averaged.n_averaged.add_(1)  # a CPU tensor: no transfer

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
        self.updates = int(self.averaged.n_averaged)  # once, at resume
