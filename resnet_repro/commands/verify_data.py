"""`resnet-repro verify-data`: the images of data.root counted per split and class and decoded; the
files that cannot be used listed for data.exclude_files."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from resnet_repro.commands.hydra_app import PROG, fail, hydra_command, refuse_unknown_options
from resnet_repro.config import DataConfig, UserError, to_dataclass

# `verify-data --help`, shown by conf/hydra/help/resnet_repro.yaml with the config groups
HELP = f"""usage: {PROG} verify-data [--no-decode] [data=imagenet|folder] data.root=DIR [key=value ...]

Count the images per split and class (data=imagenet: against ImageNet-1K's 1,000 classes, 1,281,167
train and 50,000 val images), decode every image with DALI and list the files that fail, that it
decodes only with libjpeg's warnings of damaged data, or that are not what their name says. Writes
verify_data.json (and bad_files.txt, for data.exclude_files) into runs/verify-data/<time>/; exits 1
when a count, a split or a file is wrong.

options and key overrides:
  --no-decode                       read headers and the JPEG end marker only (much faster)
  data=imagenet                     check ImageNet-1K's counts too (without data=: any image folder)
  data.num_threads=16               reader and decoder threads
  logging.progress=false            no progress bar

example:
  {PROG} verify-data data=imagenet data.root=/data/imagenet
"""


def verify_data_command(args: list[str]) -> None:
    refuse_unknown_options(args, "verify-data", own=("--no-decode",))
    decode = "--no-decode" not in args

    def _verify_data_task(dcfg: DictConfig) -> None:
        _verify_data(dcfg, decode=decode)

    # verify-data keeps its small Hydra output (config, log, verify_data.json) in
    # runs/verify-data/<time>, apart from training runs (a name= on the command line still wins)
    args = ["name=verify-data", *(a for a in args if a != "--no-decode")]
    chosen = any(a.startswith(("data=", "experiment=")) for a in args)  # an experiment picks its data
    if any(a.startswith("data.root=") for a in args) and not chosen:
        # `verify-data data.root=DIR` (as the docs and the rehearsal's messages write it) checks DIR
        # as a folder of images: the default data group, the demo, would refuse any other folder
        args.append("data=folder")
    hydra_command(_verify_data_task, args, "verify-data", HELP)


def _subset_classes(data: DataConfig) -> tuple[str, ...] | None:
    """data.subset's classes (chosen from the training split's folders), or None without one."""
    from resnet_repro.data import subset
    from resnet_repro.data.splits import find_classes

    if not subset.is_active(data.subset) or data.subset.classes is None:
        return None
    root = Path(data.root).expanduser()
    return subset.select_classes(tuple(find_classes(root / data.train_split)), data.subset)


def _verify_data(dcfg: DictConfig, decode: bool = True) -> None:
    import os

    from hydra.core.hydra_config import HydraConfig

    from resnet_repro.data.imagenet_verify import ERROR_KINDS, verify_data

    try:
        cfg = to_dataclass(dcfg)
        if cfg.data.name == "demo":
            from resnet_repro.data.demo import ensure_demo_dataset

            ensure_demo_dataset(cfg.data.root)
        summary = verify_data(
            Path(cfg.data.root).expanduser(),
            expect_imagenet=cfg.data.name == "imagenet",
            num_threads=cfg.data.num_threads,
            decode=decode,
            progress=cfg.logging.progress,
            summary_path=Path(HydraConfig.get().runtime.output_dir) / "verify_data.json",
            classes=_subset_classes(cfg.data),
            required_splits=(cfg.data.train_split, cfg.data.eval_split),
        )
    except UserError as e:
        fail(str(e))
    bad = [i["path"] for i in summary["issues"] if i["kind"] in ERROR_KINDS]
    if bad:
        bad_list = Path(HydraConfig.get().runtime.output_dir) / "bad_files.txt"
        root = Path(cfg.data.root).expanduser()
        # relative to data.root: the list then matches however the root is spelled later
        bad_list.write_text("\n".join(os.path.relpath(p, root) for p in bad) + "\n")
        print(f"{len(bad)} files are broken or damaged; to train without them: data.exclude_files={bad_list}")
    for problem in summary["problems"]:
        print(f"problem: {problem}")
    for issue in summary["issues"][:50]:
        print(f"{issue['kind']}: {issue['path']}: {issue['detail']}")
    if len(summary["issues"]) > 50:
        print(
            f"... {len(summary['issues']) - 50} more in "
            f"{HydraConfig.get().runtime.output_dir}/verify_data.json"
        )
    print(
        json.dumps(
            {k: summary[k] for k in ("root", "images", "issue_counts", "images_per_s", "ok")}, default=str
        )
    )
    if not summary["ok"]:
        raise SystemExit(1)
