"""`resnet-repro train`: a training run (local workers for trainer.nproc, torchrun, srun) or a
`-m` sweep of them; a stopped run's resume line and exit status."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from omegaconf import DictConfig

from resnet_repro.commands.hydra_app import PROG, fail, hydra_command, record_failure, split_hydra_args
from resnet_repro.config import (
    RootConfig,
    UserError,
    check_job,
    files_as_user_errors,
    to_dataclass,
)

# `train --help`, shown by conf/hydra/help/resnet_repro.yaml with the config groups
HELP = f"""usage: {PROG} train [group=option ...] [key=value ...] [-m]

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
"""


def train_command(args: list[str]) -> None:
    hydra_command(_train, args, "train", HELP, check_point=_check_sweep_point)
    if "--multirun" in split_hydra_args(args).flags:
        _sweep_end()


def _check_sweep_point(cfg: RootConfig, launcher: DictConfig) -> None:
    """`check_job` for a sweep point, with the world size its launcher will give it (submitit's
    SLURM launcher: nodes x tasks_per_node; else trainer.nproc, as `train` decides)."""
    from resnet_repro.planning.rehearse_checks import launcher_description

    check_job(cfg, launcher_description(launcher, cfg.trainer.nproc)[1])


def _sweep_end() -> None:
    """After a sweep's last job: the points a non-finite loss stopped (a result: exit 0) and those
    that failed on another error (exit 2), each counted in one line with the first one's folder
    (rank 0 only, under a launcher of several ranks)."""
    from resnet_repro.cluster import distributed
    from resnet_repro.commands.sweep_outcome import ended_on_error, first_line

    end = ended_on_error()
    if end is None or not distributed.detect().is_main:
        return
    dirs = " ".join(str(d) for d in end.sweep_dirs)
    report = f"`{PROG} report {dirs}`" if len(end.sweep_dirs) == 1 else f"`{PROG} report` on each of {dirs}"

    def count(folders: list[Path], what: str) -> str:
        example = "e.g. " if len(folders) > 1 else ""
        return f"{len(folders)} of {end.points} sweep points {what}: {example}{folders[0]}"

    if end.diverged:
        diverged = count(end.diverged, "stopped on a non-finite loss")
        print(f"{PROG}: warning: {diverged}; {report} counts them as diverged", file=sys.stderr)
    if end.failed:
        failed = f"{count(end.failed, 'failed')} ({first_line(end.failed[0])})"
        fail(f"{failed}; each reason is in its point's error.txt, {report} lists them")


def _train(dcfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from resnet_repro.cluster import distributed
    from resnet_repro.training.metrics import settle_launch_files

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return _train_launch(dcfg, run_dir)
    finally:
        if distributed.detect().is_main:  # this launch's Hydra files: the run's, or gone (a refusal)
            settle_launch_files(run_dir)


def _train_launch(dcfg: DictConfig, run_dir: Path) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from resnet_repro.cluster import distributed
    from resnet_repro.training.train import train, train_worker

    try:
        cfg = to_dataclass(dcfg)
        env = distributed.detect()
        local_launch = distributed.local_workers(cfg.trainer.nproc, env)
        # refused here, once, before any worker or data loading starts (prepare_data checks too)
        check_job(cfg, cfg.trainer.nproc if local_launch else env.world_size)
        if env.source == "single":
            _warn_of_batch_shell(cfg.trainer.nproc)
        if local_launch:
            too_many = distributed.local_launch_check(cfg.trainer.nproc, cfg.trainer.device)
            if too_many:
                print(f"{PROG}: warning: {too_many}", file=sys.stderr)
            yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
            try:
                outcome = distributed.launch_local(cfg.trainer.nproc, train_worker, yaml, str(run_dir))[0]
            except distributed.WorkersSignalled as e:
                outcome = _workers_stop(run_dir, e.signal_name)
        else:
            with files_as_user_errors():
                outcome = train(cfg, run_dir)
    except UserError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # one sweep point that fails (a NaN stop, a bad combination) must not end the sweep:
            # say why, leave the reason in its directory for `resnet-repro report`, go on
            print(f"{PROG}: error: {e}", file=sys.stderr)
            record_failure(Path(HydraConfig.get().runtime.output_dir), str(e))
            return None
        fail(str(e))
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

    from resnet_repro.cluster.slurm import batch_launcher_warning, one_node_of_several_warning

    try:
        parent = Path(f"/proc/{os.getppid()}/comm").read_text().strip()
    except OSError:
        parent = ""
    warnings = (batch_launcher_warning(os.environ, nproc, parent), one_node_of_several_warning(os.environ))
    for warning in warnings:
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
