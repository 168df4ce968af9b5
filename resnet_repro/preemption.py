"""Preemption: signals polled between steps, periodic checkpoints, and what follows the
checkpoint of a stopped run (a SLURM requeue, preempted.json)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from resnet_repro import checkpoint, distributed
from resnet_repro.config import RootConfig
from resnet_repro.distributed import DistEnv

log = logging.getLogger("resnet_repro")


class Interrupts:
    """Preemption and periodic checkpoints, polled between steps.

    Ranks agree on a pending signal every `check_steps` steps with one small all-reduce, so all
    of them stop after the same step.
    """

    def __init__(self, cfg: RootConfig, env: DistEnv, device: torch.device) -> None:
        self.env, self.device = env, device
        self.check_steps = cfg.trainer.preempt_check_steps
        minutes = cfg.trainer.checkpoint_every_minutes
        self.save_interval_s = minutes * 60 if minutes else None
        self.last_save = time.monotonic()
        self.watch = checkpoint.PreemptionWatch(cfg.trainer.preempt_signals)
        self.stopped_by: str | None = None

    def stop_requested(self, step: int, force_check: bool = False) -> bool:
        """Whether any rank got a preemption signal; all ranks must call this at the same steps."""
        due = force_check or step % self.check_steps == 0
        if not due and not (self.watch.received and not self.env.distributed):
            return False
        flag = torch.tensor([1.0 if self.watch.received else 0.0], device=self.device)
        if distributed.all_reduce_sum(self.env, flag).item() > 0:
            self.stopped_by = self.watch.received or "a signal on another rank"
            return True
        return False

    def save_due(self) -> bool:
        if self.save_interval_s is None or time.monotonic() - self.last_save < self.save_interval_s:
            return False
        self.last_save = time.monotonic()
        return True

    def close(self) -> None:
        self.watch.restore()


def resume_command(run_dir: Path) -> str:
    """This process's command line with hydra.run.dir=<run_dir>: the command that continues the run
    (`resnet-repro` rewrites sys.argv[0] to "resnet-repro <command>")."""
    import shlex
    import sys

    program = sys.argv[0].split() if sys.argv and sys.argv[0].startswith("resnet-repro") else ["resnet-repro"]
    args = [a for a in sys.argv[1:] if not a.startswith("hydra.run.dir=")]
    return shlex.join([*program, *args, f"hydra.run.dir={run_dir}"])


def after_preemption(
    cfg: RootConfig,
    env: DistEnv,
    run_dir: Path,
    interrupts: Interrupts,
    epoch: int,
    epoch_step: int,
) -> dict[str, Any]:
    """After the checkpoint of a preempted run: requeue the SLURM job (rank 0), report.

    A time-limit warning (USR1 from the sbatch scripts' --signal), a preemption or a signal sent
    with `scancel --signal=...` requeues the job; a plain `scancel <job>` (SIGTERM while the job is
    being cancelled) does not: a cancel cancels, and last.pt stays for a deliberate resume. Where a
    launcher has its own requeueing handler for the signal (submitit's USR2 at the time limit), the
    checkpoint is written first and then that handler runs: it requeues the job its own way."""
    signal_name = interrupts.stopped_by
    job = checkpoint.slurm_job_ref()
    watch = interrupts.watch
    by_launcher = watch.launcher_requeues()
    requeued: bool | str = "by the launcher" if by_launcher else False
    cancelled = False
    if env.is_main:
        if job and not by_launcher:
            fate = checkpoint.slurm_job_fate(job, int(os.environ.get("SLURM_RESTART_COUNT", "0")))
            cancelled = fate == "cancelled"
            if fate == "requeued":
                requeued = "by SLURM"
            elif cfg.trainer.requeue and not cancelled:
                requeued = checkpoint.requeue_slurm_job(job)
        last = run_dir / "checkpoints" / "last.pt"
        if cancelled:
            then = f"SLURM job {job} was cancelled, not requeued; to continue: hydra.run.dir={run_dir}"
        else:
            then = {
                "by the launcher": "its launcher requeues the job",
                "by SLURM": f"SLURM requeued job {job} itself",
                True: f"SLURM job {job} requeued (SLURM holds a requeued job about 2 minutes)",
                False: f"to resume, run: {resume_command(run_dir)}",
            }[requeued]
        where = f"epoch {epoch + 1}, step {epoch_step} of the epoch"
        log.warning(f"stopped by {signal_name} at {where}; checkpoint {last}; {then}")
        checkpoint.write_text_atomic(
            run_dir / "preempted.json",
            json.dumps(
                {
                    "signal": signal_name,
                    "epoch": epoch,
                    "epoch_step": epoch_step,
                    "requeued": requeued,
                    "cancelled": cancelled,
                    "slurm_job": job,
                }
            )
            + "\n",
        )
    distributed.barrier(env)
    if by_launcher:
        watch.hand_over()  # submitit: rank 0 requeues and exits here
    elif requeued is True and watch.launcher_handler() is not None and env.is_main:
        # requeued by us under a launcher whose handler only logged the signal (submitit's SIGTERM):
        # end the process without a result, as submitit's own requeue does, so that the sweep waits
        # for the requeued job instead of collecting this unfinished one
        raise SystemExit(-1)
    return {"preempted": True, "requeued": requeued, "cancelled": cancelled}
