"""What a run writes and says as it starts, once set up: the deviations from the claimed recipe
(deviations.json), the run directory's files, the start-up summary (console, train.log,
TensorBoard), then the start warnings."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from resnet_repro import checkpoint
from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import RootConfig, eval_protocols
from resnet_repro.data import progressive, subset
from resnet_repro.evaluation.protocols import describe as describe_protocol
from resnet_repro.training.loop import Parts
from resnet_repro.training.metrics import write_run_files
from resnet_repro.training.optim import summarize_groups
from resnet_repro.training.run_data import RunData
from resnet_repro.training.start_warnings import start_warnings
from resnet_repro.training.summary import Deviation, deviations, deviations_record, render

log = logging.getLogger("resnet_repro")


def describe_run(
    parts: Parts, cfg: RootConfig, run_dir: Path, env: DistEnv, data: RunData, selection: str | None
) -> None:
    """The start-up summary (console, train.log, TensorBoard) and the run directory's files."""
    if not env.is_main:
        return
    norm, derived, splits = data.norm, data.derived, data.splits
    found = deviations(cfg, derived.world_size)
    checkpoint.write_text_atomic(
        run_dir / "deviations.json", json.dumps(deviations_record(cfg, found), indent=1) + "\n"
    )
    text = summary_text(parts, cfg, data, selection, found)
    write_run_files(
        run_dir,
        cfg,
        derived,
        {"normalization": {"mean": norm.mean, "std": norm.std, "source": norm.source, "detail": norm.detail}},
        notes=[
            f"normalization used: {norm.describe()}",
            f"global batch {derived.global_batch}, peak LR {derived.peak_lr:g}",
        ],
    )
    if splits.holdout is not None:
        (run_dir / "holdout_files.txt").write_text("\n".join(splits.holdout.files) + "\n")
    if subset.is_active(cfg.data.subset):  # the kept classes, in label order
        (run_dir / "classes.txt").write_text("\n".join(splits.train.classes) + "\n")
    parts.logger.text("summary", "<pre>" + text + "</pre>")
    log.info(f"run directory {run_dir}\n{text}")
    for warning in start_warnings(cfg, data.norm_warnings, selection):
        log.warning(warning)


def summary_text(
    parts: Parts, cfg: RootConfig, data: RunData, selection: str | None, found: list[Deviation]
) -> str:
    groups = summarize_groups(parts.state.optimizer)
    text = render(cfg, data.derived, groups, data.norm.describe(), found)
    text += f"\n  model selection  {selection or 'none (no holdout): no best.pt'}"
    if progressive.is_active(cfg.data.progressive):
        text += "\n* progressive      " + progressive.describe(cfg.data, cfg.trainer.epochs)
    if subset.is_active(cfg.data.subset):
        cap = cfg.data.subset.per_class
        text += f"\n* subset           {data.derived.num_classes} classes (classes.txt)" + (
            f", at most {cap} images per class" if cap is not None else ""
        )
    if cfg.data.max_eval_images is not None:  # a smoke test's numbers are not the split's
        text += (
            f"\n* eval capped      at {cfg.data.max_eval_images} images per split "
            f"(data.max_eval_images): {data.derived.num_eval} {cfg.data.eval_split} images evaluated"
        )
    d = cfg.data
    for name in eval_protocols(cfg.eval):
        detail = describe_protocol(dataclasses.replace(cfg.eval, protocol=name), d.image_size, d.crop_ratio)
        text += f"\n  final test eval  {name}: {detail}"
    return text
