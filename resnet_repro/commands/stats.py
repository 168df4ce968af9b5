"""`resnet-repro stats`: per-channel mean / std of the training images, written beside the data."""

from __future__ import annotations

import dataclasses
import json

from omegaconf import DictConfig

from resnet_repro.commands.hydra_app import PROG, fail, hydra_command
from resnet_repro.config import UserError, to_dataclass, validate

# `stats --help`, shown by conf/hydra/help/resnet_repro.yaml with the config groups
HELP = f"""usage: {PROG} stats [data=...] [key=value ...]

Per-channel mean / std of the training images only (never the holdout or test images), exact over
every pixel, written to a stats file beside the data (<root>/.resnet_repro_stats/, or
data.stats.path) that training checks and reuses; prints it as JSON. Under torchrun the ranks
share the pass.

key overrides:
  data=imagenet data.root=DIR
  data.stats.max_images=50000       a stratified sample (with standard errors), not every image
  data.stats.resize=256             after resizing the shorter side, as evaluation does
  data.holdout.size=10000 data.holdout.stats_from=train_minus_holdout

example:
  {PROG} stats data=imagenet data.root=/data/imagenet
"""


def stats_command(args: list[str]) -> None:
    # the small Hydra output (config, log) goes to runs/stats/<time>, apart from training runs (a
    # name= on the command line still wins)
    hydra_command(_stats, ["name=stats", *args], "stats", HELP)


def _stats(dcfg: DictConfig) -> None:
    from resnet_repro.cluster import distributed
    from resnet_repro.data.normalization import compute_and_save
    from resnet_repro.training.run_data import load_file_lists

    try:
        cfg = to_dataclass(dcfg)
        validate(cfg)
        env = distributed.detect()
        device = distributed.pick_device(cfg.trainer.device, env)
        distributed.init(env, device, cfg.trainer.dist_timeout_s)
        try:
            record, path = compute_and_save(cfg.data, load_file_lists(cfg.data), env, device)
        finally:
            distributed.teardown()
    except UserError as e:
        fail(str(e))
    if env.is_main:
        shown = {k: v for k, v in dataclasses.asdict(record).items() if k != "contents"}
        print(json.dumps({"path": str(path), **shown}))
