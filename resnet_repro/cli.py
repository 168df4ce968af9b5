"""`resnet-repro <command> [hydra overrides]`: one thin function per subcommand."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from resnet_repro.config import (
    CONF_DIR,
    DataConfig,
    RootConfig,
    UserError,
    check_override_keys,
    deprecation_warnings,
    per_device_batch,
    register_configs,
    sweep_collisions,
    to_dataclass,
    validate,
)

PROG = "resnet-repro"

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


# `<command> --help` of the Hydra-based commands (conf/hydra/help/resnet_repro.yaml shows it with
# the config groups). No "$": Hydra's help template is a string.Template.
HYDRA_HELP = {
    "train": f"""usage: {PROG} train [group=option ...] [key=value ...] [-m]

Train a ResNet. With no overrides: the embedded demo (digits, on the CPU in minutes). Writes
runs/<name>/<run id>/ (resolved config, deviations.json, metrics.jsonl, TensorBoard events,
checkpoints) and prints one JSON line with the final top-1. The run id follows from the run's
settings (cfg-<hash>; slurm-<job id> under SLURM): the same command run again resumes the run
(trainer.resume=never: a new one). -m runs a Hydra multirun sweep over comma-separated values.

key overrides:
  experiment=imagenet_paper         a whole recipe (imagenet_paper_stabilized, he2016, demo)
  data=imagenet data.root=DIR       <root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG
  trainer.nproc=8                   processes (GPUs) on this machine
  trainer.epochs=90 trainer.batch_size=256 trainer.precision=bf16
  optim.lr_per_256=0.1 optim.weight_decay=1e-4
  stabilizer=warmup_clip stabilizer.max_norm=2.0   LR warm-up and gradient max-norm clipping

example:
  {PROG} train experiment=imagenet_paper data.root=/data/imagenet trainer.nproc=8
""",
    "eval": f"""usage: {PROG} eval checkpoint=PATH [key=value ...]

Top-1 / top-5 / loss of a checkpoint (a run's last.pt or best.pt, or a plain torchvision ResNet
state dict) on data.eval_split; prints one JSON line. From a run's checkpoint it takes that run's
model, data and precision; data.* keys and trainer.precision on the command line win.

key overrides:
  checkpoint=PATH                   the checkpoint (required)
  data.root=DIR data.eval_split=val trainer.precision=bf16

example:
  {PROG} eval checkpoint=runs/demo/<run id>/checkpoints/last.pt
""",
    "verify-data": f"""usage: {PROG} verify-data [--no-decode] [data=imagenet] data.root=DIR [key=value ...]

Count the images per split and class (data=imagenet: against ImageNet-1K's 1,000 classes, 1,281,167
train and 50,000 val images), decode every image with DALI and list the files that fail or are not
what their name says. Writes verify_data.json (and bad_files.txt, for data.exclude_files) into
runs/verify-data/<time>/; exits 1 when a count or a file is wrong.

options and key overrides:
  --no-decode                       read headers and the JPEG end marker only (much faster)
  data.num_threads=16               reader and decoder threads
  logging.progress=false            no progress bar

example:
  {PROG} verify-data data=imagenet data.root=/data/imagenet
""",
    "stats": f"""usage: {PROG} stats [data=...] [key=value ...]

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
""",
    "bench": f"""usage: {PROG} bench MODE [key=value ...]

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
""",
}


def _help_groups() -> str:
    """The config groups and their options (YAML files in conf/ and configs in Hydra's ConfigStore,
    such as the launcher plugins'), without the schemas config.register_configs stores in each
    group, and of Hydra's own groups only the launcher. Listed here rather than through Hydra's
    config loader, which copies its whole config repository for every group (seconds in all)."""
    from hydra.core.config_store import ConfigStore

    conf, store = Path(CONF_DIR), ConfigStore.instance()
    lines = []
    for folder in sorted(d for d in conf.rglob("*") if d.is_dir()):
        group = folder.relative_to(conf).as_posix()
        if group.startswith("hydra") and group != "hydra/launcher":
            continue
        options = {f.stem for f in folder.glob("*.yaml")}
        with contextlib.suppress(OSError):  # no ConfigStore entries in this group
            options |= {n.removesuffix(".yaml") for n in store.list(group) if n.endswith(".yaml")}
        options = {o for o in options if not o.endswith("_schema")}
        if options:
            lines.append(f"  {group}: {', '.join(sorted(options))}")
    return "\n".join(lines)


def _register_help(command: str) -> None:
    """The resolver conf/hydra/help/resnet_repro.yaml reads for `command --help`."""
    from omegaconf import OmegaConf

    def text(part: str) -> str:
        return (HYDRA_HELP[command] if part == "command" else _help_groups()).replace("$", "$$")

    OmegaConf.register_new_resolver("resnet_repro_help", text, replace=True)


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


def _train_run_id(_root_: DictConfig) -> str:
    """runs/<name>/<this>: the SLURM job's id under SLURM (stable across requeues); with
    trainer.resume=auto elsewhere, rerun_id (a rerun resumes); else run_id (torchrun's id or the
    start time: trainer.resume=never starts a fresh directory)."""
    import os

    from omegaconf import OmegaConf

    if os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_ARRAY_JOB_ID"):
        return run_id()
    try:
        job = OmegaConf.masked_copy(_root_, [k for k in _root_ if k != "hydra"])
        cfg = to_dataclass(job)
    except Exception:  # a bad config: the command fails on it with its own message right after
        return run_id()
    from resnet_repro.training.resume import rerun_id

    return rerun_id(cfg) if cfg.trainer.resume == "auto" else run_id()


def _collision_message(swept: list[str]) -> str:
    return (
        f"sweeping {', '.join(swept)} (run control, left out of job directory names) would put every "
        "job in one directory; name the jobs by number: 'hydra.sweep.subdir=${hydra.job.num}_"
        "${hydra.job.override_dirname}'"
    )


def _hydra_command(task: Callable[[DictConfig], object], args: list[str], command: str) -> None:
    """Run `task` under hydra.main with `args` as the command-line overrides."""
    import hydra
    from omegaconf import OmegaConf

    from resnet_repro.cluster import distributed

    register_configs()
    try:
        check_override_keys(args, groups=[d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()])
    except UserError as e:
        _fail(str(e))
    for line in deprecation_warnings(args):
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    swept = sweep_collisions(args) if {"-m", "--multirun"} & set(args) else []
    if swept and not any(a.startswith("hydra.sweep.subdir=") for a in args):
        _fail(_collision_message(swept))
    # a training run's directory is named after its settings (a rerun resumes it); the other
    # commands' after the start time
    if command == "train":
        memo: dict[str, str] = {}  # one value per process, as use_cache (refused with _root_) would

        def train_run_id(_root_: DictConfig) -> str:
            if "id" not in memo:
                memo["id"] = _train_run_id(_root_)
            return memo["id"]

        OmegaConf.register_new_resolver("run_id", train_run_id, replace=True)
    else:
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True, replace=True)
    _register_help(command)
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
    sys.argv = [f"{PROG} {command}", *args]
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(task)()


def _record_failure(run_dir: Path, message: str) -> None:
    if _is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(message + "\n")


def _is_main_process() -> bool:
    from resnet_repro.cluster import distributed

    try:
        return distributed.detect().is_main
    except UserError:
        return True


def _train(dcfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from resnet_repro.cluster import distributed
    from resnet_repro.training.train import train, train_worker

    try:
        cfg = to_dataclass(dcfg)
        validate(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        local_launch = cfg.trainer.nproc > 1 and distributed.detect().source == "single"
        # a batch-size conflict is refused here, once, before any worker or data loading starts
        per_device_batch(cfg.trainer, cfg.trainer.nproc if local_launch else distributed.detect().world_size)
        if local_launch:
            _warn_of_batch_shell(cfg.trainer.nproc)
            yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
            try:
                outcome = distributed.launch_local(cfg.trainer.nproc, train_worker, yaml, str(run_dir))[0]
            except distributed.WorkersSignalled as e:
                outcome = _workers_stop(run_dir, e.signal_name)
        else:
            outcome = train(cfg, run_dir)
    except UserError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # one sweep point that fails (a NaN stop, a bad combination) must not end the sweep:
            # say why, leave the reason in its directory for `resnet-repro report`, go on
            print(f"{PROG}: error: {e}", file=sys.stderr)
            _record_failure(Path(HydraConfig.get().runtime.output_dir), str(e))
            return None
        _fail(str(e))
    if outcome.get("preempted"):
        _stopped(run_dir, outcome, distributed.detect().is_main)
        return None
    if not distributed.detect().is_main:
        return None
    (run_dir / "preempted.json").unlink(missing_ok=True)
    final = json.loads((run_dir / "final.json").read_text())
    print(json.dumps({"run_dir": str(run_dir), **final}))
    return final["top1"]  # the sweeper's objective value


def _warn_of_batch_shell(nproc: int) -> None:
    import os

    from resnet_repro.cluster.slurm import batch_launcher_warning

    try:
        parent = Path(f"/proc/{os.getppid()}/comm").read_text().strip()
    except OSError:
        parent = ""
    warning = batch_launcher_warning(os.environ, nproc, parent)
    if warning:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)


def _workers_stop(run_dir: Path, signal_name: str) -> dict:
    """The stop of local workers whose launcher got `signal_name`: what rank 0 wrote into
    preempted.json, or, where it had not saved in time, a stop that was not requeued (the run
    resumes from its last checkpoint)."""
    try:
        saved = json.loads((run_dir / "preempted.json").read_text())
    except (OSError, ValueError):
        why = f"{signal_name} reached the worker launcher before rank 0 recorded its stop"
        return {"preempted": True, "requeued": False, "why": why}
    return {"preempted": True, "requeued": saved.get("requeued", False), "why": saved.get("why", "")}


def _stopped(run_dir: Path, outcome: dict, is_main: bool) -> None:
    """A stopped run: its one-line JSON; under submitit after a requeue, no result; when it was not
    requeued, the command that resumes it
    (also in preempted.json) and a non-zero exit on every rank, so that the job does not read as
    COMPLETED and `--dependency=afterok` jobs do not start on an unfinished run."""
    from hydra.core.hydra_config import HydraConfig

    from resnet_repro.cluster import preemption
    from resnet_repro.cluster.preemption import EXIT_NOT_REQUEUED, resume_command, under_submitit

    path = run_dir / "preempted.json"
    if not outcome["requeued"]:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a kill now must not cut the stop short
    if not outcome["requeued"] and not is_main:
        # the first rank to exit non-zero makes SLURM (--kill-on-bad-exit) kill the others: wait
        # until rank 0 has said how to resume (it writes preempted.json last)
        preemption.wait_for_resume_line(path)
        raise SystemExit(EXIT_NOT_REQUEUED)
    preempted = json.loads(path.read_text()) if is_main and path.is_file() else dict(outcome)
    if not outcome["requeued"]:
        preempted["resume"] = resume_command(run_dir, list(HydraConfig.get().overrides.task))
    if is_main:
        print(json.dumps({"run_dir": str(run_dir), "preempted": preempted}), flush=True)
    if outcome["requeued"] and under_submitit():
        # any requeue (ours, submitit's, SLURM's own: PreemptMode=REQUEUE, an admin's `scontrol
        # requeue`) ends every rank without a result, as submitit's own requeue does: the sweep
        # then waits for the requeued job instead of collecting this unfinished one
        raise SystemExit(-1)
    if not outcome["requeued"]:
        print(
            f"{PROG}: stopped, not requeued ({outcome['why']}); to resume: {preempted['resume']}",
            file=sys.stderr,
            flush=True,
        )
        from resnet_repro.checkpoint import write_text_atomic

        write_text_atomic(path, json.dumps(preempted) + "\n")
        raise SystemExit(EXIT_NOT_REQUEUED)


def _override_keys() -> set[str]:
    """The config keys and groups named on this command line (`data.root=..` -> `data.root`)."""
    from hydra.core.hydra_config import HydraConfig

    keys = set()
    for item in HydraConfig.get().overrides.task:
        key = item.split("=", 1)[0].lstrip("+~")
        keys.add(key.split("@", 1)[0])
    return keys


def _eval(dcfg: DictConfig) -> None:
    from resnet_repro.commands.eval_checkpoint import evaluate_checkpoint

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

    p = argparse.ArgumentParser(
        prog=f"{PROG} make-demo-data",
        description="Write the embedded demo dataset (digits; train/ and val/ class folders). "
        "`resnet-repro train` writes it itself when missing.",
        epilog=f"example:\n  {PROG} make-demo-data --out /tmp/demo-digits",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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


def _prepare_cifar10(args: list[str]) -> None:
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
    try:
        summary = prepare_cifar10(ns.archive, ns.out, progress=not ns.no_progress)
    except UserError as e:
        _fail(str(e))
    print(json.dumps(summary))


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
            from resnet_repro.data.demo import build_demo_dataset

            build_demo_dataset(cfg.data.root)
        summary = verify_data(
            Path(cfg.data.root).expanduser(),
            expect_imagenet=cfg.data.name == "imagenet",
            num_threads=cfg.data.num_threads,
            decode=decode,
            progress=cfg.logging.progress,
            summary_path=Path(HydraConfig.get().runtime.output_dir) / "verify_data.json",
            classes=_subset_classes(cfg.data),
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

    from resnet_repro.planning.bench import format_table, run_bench

    try:
        cfg = to_dataclass(dcfg)
        validate(cfg)
        record = run_bench(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as e:
        _fail(str(e))
    print(format_table(record))
    print(json.dumps(record))


def _verify_data_command(args: list[str]) -> None:
    decode = "--no-decode" not in args

    def _verify_data_task(dcfg: DictConfig) -> None:
        _verify_data(dcfg, decode=decode)

    # verify-data keeps its small Hydra output (config, log, verify_data.json) in
    # runs/verify-data/<time>, apart from training runs (a name= on the command line still wins)
    args = ["name=verify-data", *(a for a in args if a != "--no-decode")]
    _hydra_command(_verify_data_task, args, "verify-data")


def _bench_command(args: list[str]) -> None:
    if args and args[0] in ("-h", "--help"):
        _hydra_command(_bench, ["name=bench", *args], "bench")
        return
    if not args or "=" in args[0]:
        _fail("bench needs a mode first: resnet-repro bench model|data|train|loop-overhead|stats [overrides]")
    _hydra_command(_bench, [f"bench.mode={args[0]}", "name=bench", *args[1:]], "bench")


PLAN_HELP = f"""usage: {PROG} plan [-m] [overrides]

What a run (or, with -m, a sweep) will cost before you queue it: images per epoch, steps per epoch,
total steps and images processed, each epoch's training crop (progressive resizing included), and the
expected training and evaluation time from a per-GPU img/s that is given or measured on this machine
at each training crop. Nothing is trained or launched.

Also the weight decay shrink x = ln(w0/wT): weight decay alone shrinks a decayed weight by exp(-x)
over the run (SGD: sum of LR x wd / (1 - momentum), 10x the plain sum at momentum 0.9; AdamW:
-sum of ln(1 - LR x wd); Adam: none, its L2 term is rescaled per parameter; docs/recipes.md).

key overrides:
  any training override (experiment=, data.root=, trainer.*, ...), and
  plan.img_per_s_per_gpu=N      training img/s of ONE GPU to assume (default: measure a few steps here)
  plan.img_per_s_size=PX        the training crop that number holds at (default 224)
  plan.eval_img_per_s_per_gpu=N evaluation img/s of one GPU (default: 3 x the training rate)
  plan.scaling_efficiency=F     fraction of linear scaling over the processes (default 1.0)
  plan.train_images=N           training images per epoch when data.root is not readable here
  plan.world_size=N             processes the run will use
  plan.measure_steps=N          timed steps of the short measurement

example:
  {PROG} plan experiment=fast_16 plan.train_images=1281167 plan.img_per_s_per_gpu=2470
  {PROG} plan -m experiment=imagenet_paper data.root=/data/imagenet optim.weight_decay=1e-4,5e-5
"""


def _plan_command(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        print(PLAN_HELP)
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from resnet_repro.planning.plan import expand_sweep, format_table, plan

    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    register_configs()
    jobs = []
    try:
        check_override_keys(overrides, groups=[d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()])
        for job in expand_sweep(overrides, multirun):
            GlobalHydra.instance().clear()
            with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
                dcfg = compose(config_name="config", overrides=job)
            if OmegaConf.is_missing(dcfg.data, "root"):
                dcfg.data.root = ""  # plan.train_images may stand in for the data (plan says so if not)
            cfg = to_dataclass(dcfg)
            validate(cfg)
            jobs.append((job, cfg))
        record = plan(jobs)
    except HydraException as e:
        _fail(str(e).splitlines()[0])
    except UserError as e:
        _fail(str(e))
    print(format_table(record))
    print(json.dumps(record))


REHEARSE_HELP = f"""usage: {PROG} rehearse [-m] [--check-only] [--stand-in] [--scan] [--gpu-memory GiB]
                         [--images-per-step N] [train overrides]

Before you queue: the job `train` would run with these overrides, on this machine in minutes. The
same composed config and launch path (local workers for trainer.nproc, torchrun, srun), nothing
shrunk but the work: a few steps at each point of the schedule where behaviour changes (first step,
end of warm-up, LR milestones or ramp peak, each progressive-resizing size, last epoch), a
checkpoint, a second launch of the processes resuming from it, the final evaluation under
eval.protocol, `report` on the result. It judges as `train` judges: data.root through the real
listing (a missing root or split is train's error), the statistics file (loaded and checked, or
to be computed: its folder must be writable), the real run's directory (a live lock, a last.pt of
another job), the checkpoints against the free disk, and the per-process memory on the target GPU.
Data: a few images per class of data.root; a generated stand-in with the configured classes and
image sizes only when data.root is unset or with --stand-in. Ends in a verdict and a list of what
this machine did not check: exit 0, or the one-line error the real run would hit, exit 2. Writes
rehearsals/<name>/<id>/. The fault catalogue both must judge alike: docs/rehearse.md.

options:
  -m                     rehearse each job of the sweep (train -m's directory collisions refused)
  --check-only           only what the run decides before its first step (config, launch, batch,
                         data listing and statistics decision, run directory, model, optimizer and
                         schedule shapes, memory fit, plan, deviations); seconds, nothing written
  --stand-in             do not read data.root (e.g. not mounted here): counts estimated from the
                         dataset's size with its subset and holdout, the rehearsal on generated images
  --scan                 also read every listed image's header (verify-data without decoding): a
                         file the run could not read is refused now
  --gpu-memory GiB       the target GPU's memory (default: the visible GPU's, else 80)
  --images-per-step N    images of each process's batch a trained step uses (the loader still
                         reads the whole batch); all: the whole batch; auto (default): the whole
                         batch on a GPU, at most 2 on a CPU

example:
  {PROG} rehearse experiment=he2016 data.root=/data/imagenet trainer.nproc=2
  {PROG} rehearse --check-only --stand-in experiment=he2016 trainer.nproc=8
"""


def _compose_jobs(args: list[str]) -> list[tuple[list[str], RootConfig, DictConfig]]:
    """The jobs of a command line (`-m`: each job of the sweep), composed as `train` composes them
    and converted to dataclasses (an unset data.root is left empty: the caller decides), each with
    the Hydra launcher it composed with (`hydra.launcher`)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict

    from resnet_repro.planning.plan import expand_sweep

    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    register_configs()
    check_override_keys(overrides, groups=[d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()])
    jobs = []
    for job in expand_sweep(overrides, multirun):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
                dcfg = compose(config_name="config", overrides=job, return_hydra_config=True)
        except HydraException as e:
            raise UserError(str(e).splitlines()[0]) from e
        finally:
            GlobalHydra.instance().clear()
        launcher = dcfg.hydra.launcher
        with open_dict(dcfg):
            del dcfg["hydra"]
        if OmegaConf.is_missing(dcfg.data, "root"):
            dcfg.data.root = ""
        jobs.append((job, to_dataclass(dcfg), launcher))
    return jobs


def _rehearse_check(args: list[str], options: RehearseOptions) -> None:
    """`rehearse --check-only`: every job's checks and verdict; exit 2 at the first refusal."""
    from resnet_repro.planning import rehearse

    multirun = {"-m", "--multirun"} & set(args)
    swept = sweep_collisions(args) if multirun else []
    if swept and not any(a.startswith("hydra.sweep.subdir=") for a in args):
        _fail(_collision_message(swept))  # as `train -m` refuses it
    try:
        for job, cfg, launcher in _compose_jobs(args):
            launch = rehearse.launcher_description(launcher, cfg.trainer.nproc)
            real_dir = rehearse.real_run_dir(job, cfg, bool(multirun))
            shape = rehearse.check(
                cfg, launch, options.stand_in, options.gpu_memory_gib, options.scan, real_dir
            )
            print(f"{PROG} rehearse --check-only {' '.join(job)}".rstrip())
            print(rehearse.verdict(shape))
    except UserError as e:
        _fail(str(e))


_REHEARSAL_FAILURES: list[str] = []


def _rehearse(dcfg: DictConfig, options: RehearseOptions, check_real_dir: bool = False) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from resnet_repro.cluster import distributed
    from resnet_repro.planning import rehearse
    from resnet_repro.reporting.report import write_run_figures
    from resnet_repro.training.step_plan import StepPlan
    from resnet_repro.training.train import train, train_worker

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if OmegaConf.is_missing(dcfg.data, "root"):
            dcfg.data.root = ""  # the stand-in takes its place (the verdict says so)
        cfg = to_dataclass(dcfg)
        launch = rehearse.launch_description(cfg.trainer.nproc)
        real_dir = rehearse.real_run_dir([], cfg, multirun=False) if check_real_dir else None
        shape = rehearse.check(cfg, launch, options.stand_in, options.gpu_memory_gib, options.scan, real_dir)
        local_launch, world, _ = launch
        plan = StepPlan(
            rehearse.STEPS_PER_POINT,
            images_per_step=rehearse.images_per_step(
                options.images_per_step, shape.per_process_batch, shape.device
            ),
        )
        # under torchrun / srun every rank writes the same sample (idempotently) and reads it
        run_here = rehearse.cpu_equivalent(cfg)[0]  # the GPU-only settings as the verdict says
        rcfg, note = rehearse.rehearsal_config(run_here, world, run_dir, options.stand_in)
        if local_launch:  # two launches: the second process state knows the first's by last.pt only
            yaml = OmegaConf.to_yaml(OmegaConf.structured(rcfg))
            for phase in ("first", "second"):
                fields = dataclasses.asdict(dataclasses.replace(plan, phase=phase))
                try:
                    distributed.launch_local(cfg.trainer.nproc, train_worker, yaml, str(run_dir), fields)
                except UserError as e:
                    reason = run_dir / "error.txt"
                    raise UserError(reason.read_text().strip() if reason.exists() else str(e)) from e
        else:
            train(rcfg, run_dir, dataclasses.replace(plan, phase="both"))
        if not distributed.detect().is_main:
            return
        write_run_figures(run_dir)
        record = rehearse.collect(run_dir, shape, cfg, note, plan, launches=2 if local_launch else 1)
    except UserError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the other jobs are rehearsed too
            print(f"{PROG}: error: {e}", file=sys.stderr)
            _record_failure(run_dir, str(e))
            _REHEARSAL_FAILURES.append(str(e))
            return
        _fail(str(e))
    (run_dir / "rehearsal.json").write_text(json.dumps(record, indent=2) + "\n")
    print(rehearse.verdict(shape, record))


@dataclasses.dataclass(frozen=True)
class RehearseOptions:
    images_per_step: str = "auto"
    stand_in: bool = False
    scan: bool = False
    gpu_memory_gib: float | None = None  # None: the visible GPU's, else memory_fit's default


def _rehearse_options(args: list[str]) -> tuple[RehearseOptions, list[str]]:
    """(rehearse's own options, the other arguments: flags and train overrides)."""
    from resnet_repro.planning.rehearse import parse_images_per_step

    values: dict[str, object] = {}
    rest: list[str] = []
    it = iter(args)
    for a in it:
        name, eq, value = a.partition("=")
        if name in ("--images-per-step", "--gpu-memory"):
            given = value if eq else next(it, None)
            if given is None:
                _fail(f"{name} needs a value")
            values[name] = given
        elif a in ("--stand-in", "--scan"):
            values[a] = True
        else:
            rest.append(a)
    images = str(values.get("--images-per-step", "auto"))
    try:
        parse_images_per_step(images)
    except UserError as e:
        _fail(str(e))
    gpu = values.get("--gpu-memory")
    if gpu is not None:
        try:
            gpu = float(str(gpu))
        except ValueError:
            gpu = -1.0
        if not gpu > 0:
            _fail(f"--gpu-memory={values['--gpu-memory']}: expected the GPU's memory in GiB, e.g. 80")
    options = RehearseOptions(images, bool(values.get("--stand-in")), bool(values.get("--scan")), gpu)
    return options, rest


def _rehearse_command(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        print(REHEARSE_HELP)
        return
    options, args = _rehearse_options(args)
    if "--check-only" in args:
        _rehearse_check([a for a in args if a != "--check-only"], options)
        return
    flags = [a for a in args if a in ("-m", "--multirun")]
    rest = [a for a in args if a not in flags]
    # rehearsals/<name>/..., apart from training runs; a hydra.run.dir / hydra.sweep.dir given wins
    key = "hydra.sweep.dir" if flags else "hydra.run.dir"
    where = (
        "rehearsals/${name}/multirun-${now:%Y-%m-%d_%H-%M-%S}" if flags else "rehearsals/${name}/${run_id:}"
    )
    own = [] if any(a.startswith(f"{key}=") for a in rest) else [f"{key}={where}"]
    # the real run's own directory (runs/<name>/cfg-<hash>) is checked, never written; a
    # hydra.run.dir given is where the rehearsal itself runs (and meets its lock and last.pt)
    check_real_dir = not flags and bool(own)

    def rehearse_job(dcfg: DictConfig) -> None:
        _rehearse(dcfg, options, check_real_dir)

    _hydra_command(rehearse_job, [*flags, *own, *rest], "rehearse")
    if _REHEARSAL_FAILURES:
        raise SystemExit(2)


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
        _fail(str(e))
    if env.is_main:
        shown = {k: v for k, v in dataclasses.asdict(record).items() if k != "contents"}
        print(json.dumps({"path": str(path), **shown}))


def _report(args: list[str]) -> None:
    import argparse

    from resnet_repro.reporting import report

    p = argparse.ArgumentParser(
        prog=f"{PROG} report",
        description="Summarize a Hydra multirun directory (table, CSV, heat map, curves, TensorBoard "
        "hparams), or plot one run directory (curves.png, stabilizer.png).",
        epilog=f"example:\n  {PROG} report multiruns/demo/<date>\n  {PROG} report runs/demo/<id>",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", type=Path, metavar="MULTIRUN_DIR|RUN_DIR")
    p.add_argument("--no-hparams", action="store_true", help="do not write TensorBoard hparams")
    p.add_argument(
        "--compare",
        type=Path,
        metavar="OTHER_SWEEP",
        help="another sweep (e.g. the proxy of this one): its clipping statistics per max norm "
        "beside this sweep's in report.md",
    )
    ns = p.parse_args(args)
    try:
        rows = report.collect(ns.dir)
        compare = None if ns.compare is None else report.collect(ns.compare)
        if report.is_run_dir(ns.dir):  # one run: its own figures; a table of one row needs no files
            paths = report.write_run_figures(ns.dir)
        else:
            paths = report.write_report(rows, ns.dir, compare, "" if ns.compare is None else ns.compare.name)
            if not ns.no_hparams:
                report.write_hparams(rows)
    except UserError as e:
        _fail(str(e))
    print(report.markdown_table(rows))
    if not report.is_run_dir(ns.dir):  # the answer last, where the terminal leaves it in view
        clipping = report.clipping_table(rows, compare, "" if ns.compare is None else ns.compare.name)
        print(
            "\n"
            + (f"Clipping per max norm:\n\n{clipping}\n\n" if clipping else "")
            + report.answer_text(rows)
        )
    print("\n" + "\n".join(f"{kind}: {path}" for kind, path in paths.items()))


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "train": lambda args: _hydra_command(_train, args, "train"),
    # eval, verify-data and stats keep their small Hydra output (config, log, verify_data.json) in
    # runs/<command>/<time>, apart from training runs (a name= on the command line still wins)
    "eval": lambda args: _hydra_command(_eval, ["name=eval", *args], "eval"),
    "make-demo-data": _make_demo_data,
    "prepare-imagenet": _prepare_imagenet,
    "prepare-cifar10": _prepare_cifar10,
    "verify-data": _verify_data_command,
    "bench": _bench_command,
    "plan": _plan_command,
    "rehearse": _rehearse_command,
    "report": _report,
    "stats": lambda args: _hydra_command(_stats, ["name=stats", *args], "stats"),
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
