"""An exponential moving average of the weights (and BatchNorm buffers), evaluated beside the raw
weights and saved in checkpoints: trainer.ema.decay.

torch's AveragedModel with get_ema_multi_avg_fn: after each optimizer step,
ema = decay * ema + (1 - decay) * weights, for parameters and (use_buffers) BatchNorm's running
statistics alike, so the averaged model is evaluated with statistics that match its weights.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightEMA:
    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def module(self) -> nn.Module:
        """The averaged network, for evaluation."""
        return self.averaged.module

    def update(self, net: nn.Module) -> None:
        """After an optimizer step (the first call copies the weights)."""
        self.averaged.update_parameters(net)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
