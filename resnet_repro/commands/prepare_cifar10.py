"""`resnet-repro prepare-cifar10`: CIFAR-10's official archive written as PNG class folders."""

from __future__ import annotations

import json
from pathlib import Path

from resnet_repro.commands.hydra_app import PROG, fail
from resnet_repro.config import UserError


def prepare_cifar10_command(args: list[str]) -> None:
    import argparse

    from resnet_repro.data.cifar10 import prepare_cifar10

    p = argparse.ArgumentParser(
        prog=f"{PROG} prepare-cifar10",
        description="Write CIFAR-10 as PNGs into <out>/train/<class>/ and <out>/val/<class>/ (val = the "
        "official test set). Resumable: run it again after an interruption.",
        epilog=f"example:\n  {PROG} prepare-cifar10 --archive cifar-10-python.tar.gz --out /data/cifar10\n"
        f"  {PROG} train experiment=cifar10_resnet18 data.root=/data/cifar10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--archive", required=True, type=Path, help="cifar-10-python.tar.gz (the official one)")
    p.add_argument("--out", required=True, type=Path, help="output folder (becomes data.root)")
    p.add_argument("--no-progress", action="store_true")
    ns = p.parse_args(args)
    _check_out(ns.out)
    try:
        summary = prepare_cifar10(ns.archive, ns.out, progress=not ns.no_progress)
    except UserError as e:
        fail(str(e))
    print(json.dumps(summary))


def _check_out(out: Path) -> None:
    from resnet_repro.checkpoint import folder_problem

    problem = folder_problem(out, "--out")
    if problem is not None:
        fail(problem)
