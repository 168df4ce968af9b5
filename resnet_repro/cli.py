"""`resnet-repro <command> [hydra overrides]`: one thin function per subcommand."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from resnet_repro.config import (
    UserError,
    check_override_keys,
    deprecation_warnings,
    per_device_batch,
    register_configs,
    to_dataclass,
    validate,
)

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
PROG = "resnet-repro"

USAGE = f"""usage: {PROG} <command> [options or hydra overrides]

commands:
  train [overrides]              train (default: the demo); add -m for a Hydra multirun sweep
  eval checkpoint=PATH [...]     evaluate a checkpoint; prints one JSON line
  make-demo-data [--out DIR]     write the embedded demo dataset
  prepare-imagenet --train-tar T --val-tar V --devkit D --out DIR
                                 extract the official ILSVRC2012 archives into train/ and val/ folders
  verify-data data.root=DIR      count images per split and class, decode every image, report problems
  stats [data overrides]         train-only per-channel mean/std -> stats file beside the data; prints JSON
  report MULTIRUN_DIR            table (markdown + CSV), plot and TensorBoard hparams of a sweep
  bench MODE [overrides]         throughput: model | data | train | loop-overhead | stats; table + JSON

examples:
  {PROG} train
  {PROG} train experiment=imagenet_paper data.root=/data/imagenet trainer.nproc=8
  {PROG} eval checkpoint=runs/demo/<date>/checkpoints/last.pt
"""


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_id() -> str:
    """The last part of a run directory, the same in every process of one job step and across
    requeues: the SLURM job id (array: <array id>_<task>), plus `.<step>` for the second and later
    `srun` steps of one allocation (a seed loop in one sbatch script gets one directory per step;
    a requeued job's script numbers its steps the same way again); else torchrun's rendezvous id,
    else the start time."""
    import os
    import time

    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        job = f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    elif env.get("SLURM_JOB_ID"):
        job = f"slurm-{env['SLURM_JOB_ID']}"
    else:
        rdzv = env.get("TORCHELASTIC_RUN_ID", "none")
        return f"torchrun-{rdzv}" if rdzv != "none" else time.strftime("%Y-%m-%d_%H-%M-%S")
    step = env.get("SLURM_STEP_ID", "")
    # the batch script itself has no step id (or SLURM's "batch" number); step 0 keeps the plain name
    return f"{job}.{step}" if step.isdigit() and 0 < int(step) < 0xFFFFFFF0 else job


def _hydra_command(task: Callable[[DictConfig], object], args: list[str]) -> None:
    """Run `task` under hydra.main with `args` as the command-line overrides."""
    import hydra
    from omegaconf import OmegaConf

    from resnet_repro import distributed

    register_configs()
    try:
        check_override_keys(args, groups=[d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()])
    except UserError as e:
        _fail(str(e))
    for line in deprecation_warnings(args):
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)
    try:
        rank = distributed.detect().rank
    except UserError as e:
        _fail(str(e))
    if rank != 0:  # only rank 0 writes Hydra's config copy and log file into the run directory
        args = [
            *args,
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ]
    sys.argv = [f"{PROG} {task.__name__.removeprefix('_')}", *args]
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(task)()


def _record_failure(run_dir: Path, message: str) -> None:
    if _is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(message + "\n")


def _is_main_process() -> bool:
    from resnet_repro import distributed

    try:
        return distributed.detect().is_main
    except UserError:
        return True


def _train(dcfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from resnet_repro import distributed
    from resnet_repro.train import train, train_worker

    try:
        cfg = to_dataclass(dcfg)
        validate(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        local_launch = cfg.trainer.nproc > 1 and distributed.detect().source == "single"
        # a batch-size conflict is refused here, once, before any worker or data loading starts
        per_device_batch(cfg.trainer, cfg.trainer.nproc if local_launch else distributed.detect().world_size)
        if local_launch:
            yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
            distributed.launch_local(cfg.trainer.nproc, train_worker, yaml, str(run_dir))
        else:
            train(cfg, run_dir)
    except UserError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # one sweep point that fails (a NaN stop, a bad combination) must not end the sweep:
            # say why, leave the reason in its directory for `resnet-repro report`, go on
            print(f"{PROG}: error: {e}", file=sys.stderr)
            _record_failure(Path(HydraConfig.get().runtime.output_dir), str(e))
            return None
        _fail(str(e))
    if not distributed.detect().is_main:
        return None
    if not (run_dir / "final.json").exists() and (run_dir / "preempted.json").exists():
        print(
            json.dumps(
                {"run_dir": str(run_dir), "preempted": json.loads((run_dir / "preempted.json").read_text())}
            )
        )
        return None
    (run_dir / "preempted.json").unlink(missing_ok=True)
    final = json.loads((run_dir / "final.json").read_text())
    print(json.dumps({"run_dir": str(run_dir), **final}))
    return final["top1"]  # the sweeper's objective value


def _override_keys() -> set[str]:
    """The config keys and groups named on this command line (`data.root=..` -> `data.root`)."""
    from hydra.core.hydra_config import HydraConfig

    keys = set()
    for item in HydraConfig.get().overrides.task:
        key = item.split("=", 1)[0].lstrip("+~")
        keys.add(key.split("@", 1)[0])
    return keys


def _eval(dcfg: DictConfig) -> None:
    from resnet_repro.eval_checkpoint import evaluate_checkpoint

    try:
        cfg = to_dataclass(dcfg)
        validate(cfg)
        if not cfg.checkpoint:
            raise UserError("eval needs checkpoint=PATH (a last.pt of a run, or a torchvision state dict)")
        result = evaluate_checkpoint(cfg, cfg.checkpoint, explicit=_override_keys())
    except UserError as e:
        _fail(str(e))
    print(json.dumps(result))


def _make_demo_data(args: list[str]) -> None:
    import argparse

    from resnet_repro.data.demo import build_demo_dataset

    p = argparse.ArgumentParser(prog=f"{PROG} make-demo-data", description="Write the embedded demo dataset.")
    p.add_argument("--out", default=None, help="output folder (default: data.root of data=demo)")
    ns = p.parse_args(args)
    out = ns.out
    if out is None:
        from hydra import compose, initialize_config_dir

        register_configs()
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            out = compose(config_name="config").data.root
    print(build_demo_dataset(out))


def _prepare_imagenet(args: list[str]) -> None:
    import argparse

    from resnet_repro.data.imagenet import prepare_imagenet

    p = argparse.ArgumentParser(
        prog=f"{PROG} prepare-imagenet",
        description="Extract ILSVRC2012 into <out>/train/<wnid>/*.JPEG and <out>/val/<wnid>/*.JPEG. "
        "Resumable: run it again after an interruption.",
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
        _fail(str(e))
    print(json.dumps(summary, default=str))


def _verify_data(dcfg: DictConfig) -> None:
    import os

    from hydra.core.hydra_config import HydraConfig

    from resnet_repro.data.imagenet import ERROR_KINDS, verify_data

    try:
        cfg = to_dataclass(dcfg)
        if cfg.data.name == "demo":
            from resnet_repro.data.demo import build_demo_dataset

            build_demo_dataset(cfg.data.root)
        summary = verify_data(
            Path(cfg.data.root).expanduser(),
            expect_imagenet=cfg.data.name == "imagenet",
            num_threads=cfg.data.num_threads,
            progress=cfg.logging.progress,
            summary_path=Path(HydraConfig.get().runtime.output_dir) / "verify_data.json",
        )
    except UserError as e:
        _fail(str(e))
    bad = [i["path"] for i in summary["issues"] if i["kind"] in ERROR_KINDS]
    if bad:
        bad_list = Path(HydraConfig.get().runtime.output_dir) / "bad_files.txt"
        root = Path(cfg.data.root).expanduser()
        # relative to data.root: the list then matches however the root is spelled later
        bad_list.write_text("\n".join(os.path.relpath(p, root) for p in bad) + "\n")
        print(f"{len(bad)} files cannot be used; to train without them: data.exclude_files={bad_list}")
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


def _bench(dcfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from resnet_repro.bench import format_table, run_bench

    try:
        cfg = to_dataclass(dcfg)
        validate(cfg)
        record = run_bench(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as e:
        _fail(str(e))
    print(format_table(record))
    print(json.dumps(record))


def _bench_command(args: list[str]) -> None:
    if not args or "=" in args[0]:
        _fail("bench needs a mode first: resnet-repro bench model|data|train|loop-overhead|stats [overrides]")
    _hydra_command(_bench, [f"bench.mode={args[0]}", "name=bench", *args[1:]])


def _stats(dcfg: DictConfig) -> None:
    import dataclasses

    from resnet_repro import distributed
    from resnet_repro.data.normalization import compute_and_save
    from resnet_repro.run_data import load_file_lists

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
        _fail(str(e))
    if env.is_main:
        shown = {k: v for k, v in dataclasses.asdict(record).items() if k != "contents"}
        print(json.dumps({"path": str(path), **shown}))


def _report(args: list[str]) -> None:
    import argparse

    from resnet_repro.report import collect, markdown_table, write_hparams, write_report

    p = argparse.ArgumentParser(prog=f"{PROG} report", description="Summarize a Hydra multirun directory.")
    p.add_argument("multirun_dir", type=Path)
    p.add_argument("--no-hparams", action="store_true", help="do not write TensorBoard hparams")
    ns = p.parse_args(args)
    try:
        rows = collect(ns.multirun_dir)
        paths = write_report(rows, ns.multirun_dir)
        if not ns.no_hparams:
            write_hparams(rows)
    except UserError as e:
        _fail(str(e))
    print(markdown_table(rows))
    print("\n" + "\n".join(f"{kind}: {path}" for kind, path in paths.items()))


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "train": lambda args: _hydra_command(_train, args),
    # eval, verify-data and stats keep their small Hydra output (config, log, verify_data.json) in
    # runs/<command>/<time>, apart from training runs (a name= on the command line still wins)
    "eval": lambda args: _hydra_command(_eval, ["name=eval", *args]),
    "make-demo-data": _make_demo_data,
    "prepare-imagenet": _prepare_imagenet,
    "verify-data": lambda args: _hydra_command(_verify_data, ["name=verify-data", *args]),
    "bench": _bench_command,
    "report": _report,
    "stats": lambda args: _hydra_command(_stats, ["name=stats", *args]),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    try:
        COMMANDS[command](rest)
    except UserError as e:  # any command's bad input: one line, never a traceback
        _fail(str(e))


if __name__ == "__main__":
    main()
