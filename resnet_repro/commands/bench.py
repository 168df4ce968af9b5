"""`resnet-repro bench MODE`: measured throughput of the model, the input pipeline, the training
step, the loop's overhead or the statistics pass."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from resnet_repro.commands.hydra_app import PROG, fail, hydra_command
from resnet_repro.config import UserError, to_dataclass, validate

# `bench --help`, shown by conf/hydra/help/resnet_repro.yaml with the config groups
HELP = f"""usage: {PROG} bench MODE [key=value ...]

Throughput, measured: prints a table and writes JSON (<run dir>/bench_<mode>.json, or bench.json).
MODE:
  model                             synthetic batches on the device: forward, backward, step
  data                              the configured input pipeline alone (decode, augment, normalize)
  train                             the real training step with the real pipeline; data-wait share
  loop-overhead                     this runner's training step vs a bare loop
  stats                             the normalization-statistics pass vs decoding alone

key overrides:
  bench.steps=20 bench.trials=3 bench.warmup=5 bench.min_images=1000 bench.json=PATH
  model.name=resnet50 trainer.batch_size=256 trainer.precision=bf16 model.channels_last=true

example:
  {PROG} bench model trainer.precision=bf16 trainer.batch_size=256
"""


def bench_command(args: list[str]) -> None:
    if args and args[0] in ("-h", "--help"):
        hydra_command(_bench, ["name=bench", *args], "bench", HELP)
        return
    if not args or "=" in args[0]:
        fail("bench needs a mode first: resnet-repro bench model|data|train|loop-overhead|stats [overrides]")
    hydra_command(_bench, [f"bench.mode={args[0]}", "name=bench", *args[1:]], "bench", HELP)


def _bench(dcfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from resnet_repro.planning.bench import format_table, run_bench

    try:
        cfg = to_dataclass(dcfg)
        validate(cfg)
        record = run_bench(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as e:
        fail(str(e))
    print(format_table(record))
    print(json.dumps(record))
