"""A run's evaluations: the splits measured after every epoch (centre crop), model selection, and
the final measurement of the test split under each of eval.protocol's test protocols."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.nn as nn

from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import EvalConfig, RootConfig, eval_protocols
from resnet_repro.data.selection import Normalization, Splits
from resnet_repro.data.splits import FileList
from resnet_repro.evaluation.evaluate import evaluate
from resnet_repro.evaluation.protocols import Scorer, flips, views_own_mean_image
from resnet_repro.evaluation.protocols import describe as describe_protocol
from resnet_repro.training.metrics import MetricsLogger, NullLogger
from resnet_repro.training.run_data import make_eval_loader
from resnet_repro.training.schedule import LRSchedule
from resnet_repro.training.stabilizers import EarlyStopper

log = logging.getLogger("resnet_repro")


class EvalSets:
    """The splits evaluated after every epoch: the test split (data.eval_split) and the holdout,
    when there is one; their loaders are built once."""

    def __init__(
        self,
        cfg: RootConfig,
        splits: Splits,
        norm: Normalization,
        env: DistEnv,
        device: torch.device,
        batch_size: int,
    ) -> None:
        self.env, self.device, self.precision = env, device, cfg.trainer.precision
        self.files = {cfg.data.eval_split: splits.test}
        if splits.holdout is not None:
            self.files["holdout"] = splits.holdout
        self.loaders = {
            name: make_eval_loader(cfg.data, files, env, device, batch_size, norm, cfg.model.channels_last)
            for name, files in self.files.items()
        }

    def run(self, net: nn.Module) -> dict[str, dict[str, Any]]:
        # the bare module: DDP may broadcast buffers in forward, and ranks hold uneven eval shards
        return {name: self._evaluate(net, name) for name in self.files}

    def _evaluate(self, net: nn.Module, name: str) -> dict[str, Any]:
        total = len(self.files[name])
        return evaluate(
            net, self.loaders[name], self.env, self.device, expected_total=total, precision=self.precision
        )


def selection_split(cfg: RootConfig, splits: Splits) -> str | None:
    """The split that picks best.pt and feeds early stopping and the plateau schedule: the
    holdout; the test split only on request (trainer.select_on_test); else none."""
    if splits.holdout is not None:
        return "holdout"
    return cfg.data.eval_split if cfg.trainer.select_on_test else None


def evaluate_protocol(
    cfg: RootConfig,
    model: nn.Module,
    files: FileList,
    env: DistEnv,
    device: torch.device,
    batch_size: int,
    norm: Normalization | None = None,
) -> dict[str, Any]:
    """`files` evaluated under each of cfg.eval's test protocols: the first one's metrics, named
    (`protocol`, `protocol_detail`), and every protocol's metrics under its name (`ten_crop`, ...)."""
    names = eval_protocols(cfg.eval)
    measured = {
        name: _evaluate_one(
            cfg, dataclasses.replace(cfg.eval, protocol=name), model, files, env, device, batch_size, norm
        )
        for name in names
    }
    return {**measured[names[0]], **measured}


def _evaluate_one(
    cfg: RootConfig,
    ev: EvalConfig,
    model: nn.Module,
    files: FileList,
    env: DistEnv,
    device: torch.device,
    batch_size: int,
    norm: Normalization | None,
) -> dict[str, Any]:
    """`files` evaluated once under the single test protocol `ev`; the metrics name it."""
    mean_image = None
    if norm is not None and norm.mean_image is not None and views_own_mean_image(ev):
        # the mean image fits image_size crops: the protocol's views subtract it (protocols.Scorer)
        std = torch.tensor(norm.std, dtype=torch.float64).view(3, 1, 1)
        mean_image = (torch.as_tensor(norm.mean_image) / std).float().to(device)
        norm = dataclasses.replace(norm, mean=(0.0, 0.0, 0.0), mean_image=None)
    loader = make_eval_loader(
        cfg.data, files, env, device, batch_size, norm, cfg.model.channels_last, ev.protocol
    )
    metrics = evaluate(
        model,
        loader,
        env,
        device,
        expected_total=len(files),
        precision=cfg.trainer.precision,
        scorer=Scorer(ev, cfg.data.image_size, mean_image),
    )
    return {
        **metrics,
        "protocol": ev.protocol,
        "protocol_detail": describe_protocol(ev, cfg.data.image_size, cfg.data.crop_ratio),
    }


def feed_model_selection(
    schedule: LRSchedule, early_stop: EarlyStopper, metrics: dict[str, float]
) -> str | None:
    """The model-selection split's evaluation to the plateau schedule and early stopping; the
    reason to stop, or None. Both skip evaluations before the LR warm-up ends (a metric measured
    while the LR still rises says nothing about a plateau) and judge improvement by the same rule
    (stabilizers.NoImprovement)."""
    if not schedule.warmed_up:
        return None
    schedule.epoch_end(metrics)
    return early_stop.update(metrics)


def final_test_eval(
    cfg: RootConfig,
    final: dict[str, Any],
    net: nn.Module,
    logger: MetricsLogger | NullLogger,
    test: FileList,
    env: DistEnv,
    device: torch.device,
    batch_size: int,
    norm: Normalization,
    step: int,
) -> dict[str, Any]:
    """`final` (the last epoch's centre-crop evaluation of the test split) under eval.protocol.

    Per-epoch evaluations and model selection stay centre crop (ten_crop costs 10 forward passes
    per image, multiscale five scales up to 640 px); the test split is measured once more under
    each configured protocol at the end: the first one's numbers replace the centre ones (kept
    under "center"), and each protocol's are under its name ("ten_crop", "multiscale").
    metrics.jsonl gets each as split "<eval_split>-<protocol>"."""
    if eval_protocols(cfg.eval) == ["center"] and not flips(cfg.eval):
        detail = describe_protocol(cfg.eval, cfg.data.image_size, cfg.data.crop_ratio)
        return {**final, "protocol": "center", "protocol_detail": detail}
    centre = {key: final[key] for key in ("top1", "top5", "loss")}
    log.info(f"final evaluation of {cfg.data.eval_split} under eval.protocol={cfg.eval.protocol}")
    measured = evaluate_protocol(cfg, net, test, env, device, batch_size, norm)
    for name in eval_protocols(cfg.eval):
        split, m = f"{cfg.data.eval_split}-{name}", measured[name]
        logger.record({"epoch": final["epochs_run"], "split": split, "step": step, **m}, step)
        log.info(
            f"{split}: loss {m['loss']:.4f} top-1 {m['top1']:.4f} top-5 {m['top5']:.4f} "
            f"({m['protocol_detail']}); centre crop top-1 {centre['top1']:.4f}"
        )
    return {**final, **measured, "center": centre}
