"""Gradient-norm statistics, the non-finite guard, the high-loss hint and early stopping."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from resnet_repro.cluster import distributed
from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import EarlyStopConfig


def grad_norm_summary(norms: torch.Tensor, max_norm: float | None) -> dict[str, float]:
    """Per-epoch statistics of the pre-clip total gradient norms (one value per step).

    `clipped_fraction`: the share of steps whose norm exceeded `max_norm`; `clip_factor_mean`:
    the mean over steps of min(1, max_norm / norm), how much of each step's gradient clipping kept
    (1.0: nothing clipped, as without clipping). Non-finite norms (steps skipped or stopped on) are
    left out of every statistic; with none finite the summary is empty."""
    finite = norms[torch.isfinite(norms)].double()
    if finite.numel() == 0:
        return {}
    q = torch.quantile(finite, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    return {
        "grad_norm_mean": finite.mean().item(),
        "grad_norm_p50": q[0].item(),
        "grad_norm_p90": q[1].item(),
        "grad_norm_p99": q[2].item(),
        "grad_norm_max": finite.max().item(),
        "clipped_fraction": (finite > max_norm).double().mean().item() if max_norm else 0.0,
        # a zero norm divides to inf and is kept whole
        "clip_factor_mean": (max_norm / finite).clamp(max=1.0).mean().item() if max_norm else 1.0,
    }


class NonFiniteError(RuntimeError):
    """Training stopped on a non-finite loss or gradient; the message names the report file."""


@dataclass
class NonFiniteGuard:
    """Keeps the last losses; on a non-finite step writes a report and says what to do.

    The check costs one host sync per step (reading one flag); with fp16 the gradient scaler
    already makes that sync, and with `nonfinite=off` there is none.
    """

    mode: str
    max_skips: int
    report_path: Path
    history: list[float] = field(default_factory=list)
    skipped_in_a_row: int = 0
    skipped_total: int = 0

    def is_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor, env: DistEnv) -> bool:
        """Whether every rank's loss and the (all-reduced, so shared) gradient norm are finite.

        Ranks must agree, or one would skip an update the others apply: the flag is summed over
        ranks (a one-number all-reduce)."""
        if self.mode == "off":
            return True
        bad = (~torch.isfinite(loss.detach().float() + grad_norm.float())).float().reshape(1)
        return distributed.all_reduce_sum(env, bad).item() == 0

    def skip(self) -> None:
        self.skipped_in_a_row += 1
        self.skipped_total += 1

    def ok(self) -> None:
        self.skipped_in_a_row = 0

    def remember(self, loss: float) -> None:
        self.history = (self.history + [loss])[-20:]

    def report(
        self,
        model: nn.Module,
        loss: torch.Tensor,
        labels: torch.Tensor,
        *,
        epoch: int,
        step: int,
        lr: float,
        stopped: bool,
    ) -> dict[str, Any]:
        """Write the report of a non-finite step; `epoch` counted from 1 (as the message and
        metrics.jsonl count it); `stopped`: whether it stops the run (a skipped step's report says
        false, so a skip-mode run killed later is not read as diverged)."""
        bad = [
            name
            for name, p in model.named_parameters()
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        report = {
            "epoch": epoch,
            "epochs_from": 1,  # reports written before this key counted epochs from 0
            "step": step,
            "lr": lr,
            "loss": float(loss.detach().float().item()),
            "loss_history_tail": self.history,
            "nonfinite_grad_params": bad[:10],
            "nonfinite_grad_param_count": len(bad),
            "label_min": int(labels.min().item()),
            "label_max": int(labels.max().item()),
            "skipped_total": self.skipped_total,
            "stopped": stopped,
        }
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        self.report_path.write_text(json.dumps(report, indent=2) + "\n")
        return report

    def mark_stopped(self) -> None:
        """The last report's step did stop the run after all (an epoch whose every step was skipped)."""
        if self.report_path.is_file():  # rank 0 wrote one at the step it skipped
            report = json.loads(self.report_path.read_text())
            self.report_path.write_text(json.dumps({**report, "stopped": True}, indent=2) + "\n")


class BufferSnapshot:
    """The module's buffers (BatchNorm running mean/var and batch counts) as they were before a step.

    A training-mode forward updates them before the non-finite check can run, and a moving
    average that has taken in one NaN stays NaN: a step found non-finite must put them back, or a
    skipped step poisons every later evaluation and a stopped run saves NaN statistics as its last
    good state. `take()` is one device-side copy per step into buffers allocated once (no host
    sync; ResNet-50's BatchNorm buffers are about 0.2 MB)."""

    def __init__(self, module: nn.Module) -> None:
        self.live = list(module.buffers())
        self.saved = [b.detach().clone() for b in self.live]

    def take(self) -> None:
        if self.live:
            torch._foreach_copy_(self.saved, self.live)

    def restore(self) -> None:
        if self.live:
            with torch.no_grad():
                torch._foreach_copy_(self.live, self.saved)


def chance_loss(num_classes: int) -> float:
    """Cross-entropy of a uniform guess: a model still at this loss has learnt nothing."""
    return math.log(num_classes)


METRICS = ("top1", "loss")


@dataclass
class NoImprovement:
    """The one definition of "no improvement" that the plateau schedule and early stopping share.

    An evaluation improves when its `metric` beats the best so far by more than `min_delta`, an
    absolute amount (top1, a fraction, higher is better: 0.001 = 0.1 points; loss, in nats, lower
    is better); the first evaluation fed sets the best. `bad_evals` counts the evaluations in a row
    without improvement. Which evaluations are fed (not those inside the LR warm-up) is decided
    by the caller, the same for both (run_eval.feed_model_selection)."""

    metric: str
    min_delta: float = 0.0
    best: float | None = None
    bad_evals: int = 0

    def update(self, value: float) -> bool:
        """Feed one evaluation's value; whether it improved (a NaN never does)."""
        sign = 1.0 if self.metric == "top1" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad_evals = value, 0
            return True
        self.bad_evals += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]


@dataclass
class EarlyStopper:
    cfg: EarlyStopConfig
    rule: NoImprovement = field(init=False)

    def __post_init__(self) -> None:
        self.rule = NoImprovement(self.cfg.metric, self.cfg.min_delta)

    def update(self, metrics: dict[str, float]) -> str | None:
        """Feed one evaluation; returns the reason to stop, or None."""
        if self.cfg.patience is None:
            return None
        if self.rule.update(metrics[self.cfg.metric]) or self.rule.bad_evals < self.cfg.patience:
            return None
        return (
            f"early stop: {self.cfg.metric} has not improved by more than {self.cfg.min_delta} "
            f"on the model-selection split for {self.rule.bad_evals} evaluations (best {self.rule.best:.4f})"
        )

    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)
