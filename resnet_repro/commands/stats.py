"""`resnet-repro stats`: per-channel mean / std of the training images, written beside the data."""

from __future__ import annotations

import dataclasses
import json
import sys

from omegaconf import DictConfig

from resnet_repro.commands.hydra_app import PROG, fail, hydra_command
from resnet_repro.config import UserError, to_dataclass, validate

# `stats --help`, shown by conf/hydra/help/resnet_repro.yaml with the config groups
HELP = f"""usage: {PROG} stats [data=...] [key=value ...]

Per-channel mean / std of the training images only (never the holdout or test images), exact over
every pixel, written to a stats file beside the data (<root>/.resnet_repro_stats/, or
data.stats.path) that training checks and reuses; prints it as JSON. trainer.nproc=N local
processes (or torchrun's) share the pass.

key overrides:
  data=imagenet data.root=DIR
  data.stats.max_images=50000       a stratified sample (with standard errors), not every image
  data.stats.resize=256             after resizing the shorter side, as evaluation does
  data.holdout.size=10000 data.holdout.stats_from=train_minus_holdout
  trainer.nproc=8                   processes (GPUs) sharing the pass, as in train

example:
  {PROG} stats data=imagenet data.root=/data/imagenet
"""


def stats_command(args: list[str]) -> None:
    # the small Hydra output (config, log) goes to runs/stats/<time>, apart from training runs (a
    # name= on the command line still wins)
    hydra_command(_stats, ["name=stats", *args], "stats", HELP)


def _stats(dcfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    from resnet_repro.cluster import distributed

    try:
        cfg = to_dataclass(dcfg)
        validate(cfg)
        if distributed.local_workers(cfg.trainer.nproc, distributed.detect()):
            # trainer.nproc local processes share the pass, as they would in `train`
            too_many = distributed.local_launch_check(cfg.trainer.nproc, cfg.trainer.device)
            if too_many:
                print(f"{PROG}: warning: {too_many}", file=sys.stderr)
            yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
            try:
                shown = distributed.launch_local(cfg.trainer.nproc, stats_worker, yaml, what="statistics")[0]
            except distributed.WorkersSignalled as e:  # a cancel: nothing was written, nothing to resume
                fail(f"stopped by {e.signal_name} before the statistics were written; run the command again")
        else:
            shown = _compute(cfg)
    except UserError as e:
        fail(str(e))
    if shown is not None:
        print(json.dumps(shown))


def stats_worker(cfg_yaml: str) -> dict | None:
    """Entry point of a locally launched worker process (picklable: plain values in); rank 0
    returns what the command prints."""
    import logging
    import sys

    from omegaconf import OmegaConf

    from resnet_repro.cluster import distributed

    # a spawned worker has no Hydra logging: a plain console, rank 0's log only (as in train)
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    logging.getLogger("resnet_repro").setLevel(
        logging.INFO if distributed.detect().is_main else logging.ERROR
    )
    try:
        return _compute(to_dataclass(OmegaConf.create(cfg_yaml)))
    except UserError as e:  # one line from the failing rank, not a traceback per rank
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _compute(cfg) -> dict | None:
    """The pass on this process's share (all of it outside torchrun); the record as printed, on
    the main process only."""
    from resnet_repro.cluster import distributed
    from resnet_repro.data.normalization import compute_and_save
    from resnet_repro.training.run_data import load_file_lists

    env = distributed.detect()
    device = distributed.pick_device(cfg.trainer.device, env)
    distributed.init(env, device, cfg.trainer.dist_timeout_s)
    try:
        record, path = compute_and_save(cfg.data, load_file_lists(cfg.data), env, device)
    finally:
        distributed.teardown()
    if not env.is_main:
        return None
    return {"path": str(path), **{k: v for k, v in dataclasses.asdict(record).items() if k != "contents"}}
