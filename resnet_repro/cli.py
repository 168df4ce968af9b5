"""`resnet-repro <command> [options or hydra overrides]`: the usage and the command table; each
command lives in its own module of resnet_repro/commands/ (the Hydra glue they share in
commands/hydra_app.py)."""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Callable

from resnet_repro.commands.bench import bench_command
from resnet_repro.commands.eval import eval_command
from resnet_repro.commands.hydra_app import PROG, fail
from resnet_repro.commands.make_demo_data import make_demo_data_command
from resnet_repro.commands.plan import plan_command
from resnet_repro.commands.prepare_cifar10 import prepare_cifar10_command
from resnet_repro.commands.prepare_imagenet import prepare_imagenet_command
from resnet_repro.commands.rehearse import rehearse_command
from resnet_repro.commands.report import report_command
from resnet_repro.commands.stats import stats_command
from resnet_repro.commands.train import train_command
from resnet_repro.commands.verify_data import verify_data_command
from resnet_repro.config import UserError, file_error_line

USAGE = f"""usage: {PROG} <command> [options or hydra overrides]

commands:
  train [overrides]              train (default: the demo); add -m for a Hydra multirun sweep
  eval checkpoint=PATH [...]     evaluate a checkpoint; prints one JSON line
  make-demo-data [--out DIR]     write the embedded demo dataset
  prepare-imagenet --train-tar T --val-tar V --devkit D --out DIR
                                 extract the official ILSVRC2012 archives into train/ and val/ folders
  prepare-cifar10 --archive cifar-10-python.tar.gz --out DIR
                                 CIFAR-10 as PNGs in train/<class>/ and val/<class>/ (val = test set)
  verify-data data.root=DIR      count images per split and class, decode every image, report problems
                                 (--no-decode: headers only)
  stats [data overrides]         train-only per-channel mean/std -> stats file beside the data; prints JSON
  report MULTIRUN_DIR            table (markdown + CSV), heat map, curves and TensorBoard hparams of a sweep
  report RUN_DIR                 one run's curves and gradient-norm/clipping/LR figure (PNG)
  bench MODE [overrides]         throughput: model | data | train | loop-overhead | stats; table + JSON
  plan [-m] [overrides]          steps, images and expected wall time of a run or a -m sweep; table + JSON
  rehearse [-m] [--check-only] [overrides]
                                 the exact job in minutes on a CPU: a few steps at each schedule change,
                                 checkpoint, resume, final evaluation, report; a one-screen verdict

{PROG} <command> --help: what the command does, its options or key overrides, an example.

examples:
  {PROG} train
  {PROG} train experiment=imagenet_paper data.root=/data/imagenet trainer.nproc=8
  {PROG} eval checkpoint=runs/demo/<run id>/checkpoints/last.pt
"""


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "train": train_command,
    "eval": eval_command,
    "make-demo-data": make_demo_data_command,
    "prepare-imagenet": prepare_imagenet_command,
    "prepare-cifar10": prepare_cifar10_command,
    "verify-data": verify_data_command,
    "bench": bench_command,
    "plan": plan_command,
    "rehearse": rehearse_command,
    "report": report_command,
    "stats": stats_command,
}


def _stack_on_crash() -> None:
    """A crash in native code (DALI's decoder on a broken JPEG, a driver) prints the Python stack of
    every thread before the process dies, instead of dying without a word (docs/troubleshooting.md)."""
    if faulthandler.is_enabled():
        return
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, OSError, RuntimeError):  # no usable stderr (None, in memory)
        pass


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    _stack_on_crash()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    try:
        COMMANDS[command](rest)
    except UserError as e:  # any command's bad input: one line, never a traceback
        fail(str(e))
    except OSError as e:  # a file of the user's that cannot be used (unreadable, a file for a folder)
        line = file_error_line(e)
        if line is None:
            raise
        fail(line)


if __name__ == "__main__":
    main()
