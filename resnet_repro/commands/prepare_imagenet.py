"""`resnet-repro prepare-imagenet`: the official ILSVRC2012 archives extracted into train/ and val/
class folders."""

from __future__ import annotations

import json
from pathlib import Path

from resnet_repro.commands.hydra_app import PROG, fail
from resnet_repro.config import UserError


def prepare_imagenet_command(args: list[str]) -> None:
    import argparse

    from resnet_repro.data.imagenet_prepare import prepare_imagenet

    p = argparse.ArgumentParser(
        prog=f"{PROG} prepare-imagenet",
        description="Extract ILSVRC2012 into <out>/train/<wnid>/*.JPEG and <out>/val/<wnid>/*.JPEG. "
        "Resumable: run it again after an interruption.",
        epilog=f"example:\n  {PROG} prepare-imagenet --out /data/imagenet \\\n"
        "      --train-tar ILSVRC2012_img_train.tar --val-tar ILSVRC2012_img_val.tar \\\n"
        "      --devkit ILSVRC2012_devkit_t12.tar.gz\n"
        f"  {PROG} verify-data data=imagenet data.root=/data/imagenet     # then check the result",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (becomes data.root)")
    p.add_argument("--train-tar", type=Path, help="ILSVRC2012_img_train.tar")
    p.add_argument("--val-tar", type=Path, help="ILSVRC2012_img_val.tar")
    p.add_argument("--devkit", type=Path, help="ILSVRC2012_devkit_t12.tar.gz (or its extracted folder)")
    p.add_argument("--val-dir", type=Path, help="an already extracted flat folder of ILSVRC2012_val_*.JPEG")
    p.add_argument("--val-ground-truth", type=Path, help="ILSVRC2012_validation_ground_truth.txt")
    p.add_argument("--loc-val-solution", type=Path, help="LOC_val_solution.csv (instead of the devkit)")
    p.add_argument("--no-progress", action="store_true")
    ns = p.parse_args(args)
    _check_out(ns.out)
    try:
        summary = prepare_imagenet(
            ns.out,
            train_tar=ns.train_tar,
            val_tar=ns.val_tar,
            devkit=ns.devkit,
            val_dir=ns.val_dir,
            val_ground_truth=ns.val_ground_truth,
            loc_val_solution=ns.loc_val_solution,
            progress=not ns.no_progress,
        )
    except UserError as e:
        fail(str(e))
    print(json.dumps(summary, default=str))


def _check_out(out: Path) -> None:
    from resnet_repro.checkpoint import folder_problem

    problem = folder_problem(out, "--out")
    if problem is not None:
        fail(problem)
