"""Preemption: signals polled between steps, periodic checkpoints, and what follows the
checkpoint of a stopped run (a SLURM requeue, preempted.json)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from resnet_repro import checkpoint
from resnet_repro.cluster import distributed, slurm
from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import RootConfig

log = logging.getLogger("resnet_repro")

# The exit code of a run that stopped and was not requeued (EX_TEMPFAIL: try again, i.e. resume):
# never 0, so that SLURM does not record the job as COMPLETED
EXIT_NOT_REQUEUED = 75


class Interrupts:
    """Preemption and periodic checkpoints, polled between steps.

    Ranks agree on a pending signal every `check_steps` steps with one small all-reduce, so all
    of them stop after the same step; the same all-reduce carries rank 0's "a periodic checkpoint
    is due", so that every rank reaches the checkpoint together (it sums the epoch's metrics over
    the ranks). A single process reads its own flag after every step instead: no all-reduce, so
    no device tensor and no host sync.
    """

    def __init__(self, cfg: RootConfig, env: DistEnv, device: torch.device) -> None:
        self.env, self.device = env, device
        self.check_steps = cfg.trainer.preempt_check_steps
        minutes = cfg.trainer.checkpoint_every_minutes
        self.save_interval_s = minutes * 60 if minutes else None
        self.last_save = time.monotonic()
        self._save_agreed = False  # the last check's agreement that a periodic checkpoint is due
        self.stopped_by: str | None = None
        # the job's restart count now, from the controller: a later SIGTERM with a higher count
        # means SLURM requeued the job itself (rank 0 decides; nothing to ask outside SLURM)
        job = slurm.job_ref()
        self.restarts_at_start = slurm.restart_count(job) if env.is_main and job else None
        # last: once installed, the signal handlers are the caller's to give back (close())
        self.watch = checkpoint.PreemptionWatch(cfg.trainer.preempt_signals)

    def stop_requested(self, step: int, force_check: bool = False) -> bool:
        """Whether any rank got a preemption signal; all ranks must call this at the same steps."""
        if not self.env.distributed:  # one process: its own flag, no device tensor, no sync
            return self._stopped_locally()
        if not (force_check or step % self.check_steps == 0):
            return False
        names = self.watch.names
        save = float(self.env.is_main and self._interval_passed())
        flags = torch.tensor([*(float(self.watch.received == n) for n in names), save], device=self.device)
        *counts, saves = distributed.all_reduce_sum(self.env, flags).tolist()
        self._save_agreed = saves > 0 and not force_check  # an epoch's last step saves anyway
        arrived = [n for n, c in zip(names, counts, strict=True) if c > 0]
        if not arrived:
            return False
        # every rank learns which signals reached any rank, and all take the same one, so that
        # rank 0 decides on the signal even when it reached another rank first (skew between
        # nodes, a signal to one pid)
        self.stopped_by = agreed_signal(arrived)
        self.watch.agree(self.stopped_by)
        return True

    def _stopped_locally(self) -> bool:
        if self.watch.received:
            self.stopped_by = self.watch.received
            return True
        return False

    def _interval_passed(self) -> bool:
        return self.save_interval_s is not None and time.monotonic() - self.last_save >= self.save_interval_s

    def save_due(self) -> bool:
        """Whether a periodic checkpoint is due after this step: on every rank alike (as the last
        `stop_requested` check agreed) when there are several; call it after `stop_requested`."""
        due = self._save_agreed if self.env.distributed else self._interval_passed()
        self._save_agreed = False
        if due:
            self.last_save = time.monotonic()
        return due

    def close(self) -> None:
        self.watch.restore()


def agreed_signal(arrived: list[str]) -> str:
    """The signal a stop is decided on when ranks received different ones: a time-limit warning
    (USR1, submitit's USR2) before a plain one, since the SIGTERM that may follow it is the end of
    the same event; else the first in the configured order."""
    warnings = [name for name in arrived if name in slurm.WARNING_SIGNALS]
    return (warnings or arrived)[0]


def under_submitit() -> bool:
    """Whether this process is a job of the submitit launcher (hydra/launcher=slurm)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def wait_for_resume_line(path: Path, timeout_s: float = 30.0, poll_s: float = 0.1) -> bool:
    """Wait (at most `timeout_s`) until rank 0 has written the resume command into preempted.json;
    whether it did. A rank other than 0 calls this before its non-zero exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if "resume" in json.loads(path.read_text()):
                return True
        except (OSError, ValueError):
            pass
        time.sleep(poll_s)
    return False


def resume_command(run_dir: Path, overrides: list[str], prog: str = "resnet-repro train") -> str:
    """The exact command that continues a stopped run: the run's own overrides (a resume mode and
    a run directory named on the command line replaced) plus hydra.run.dir=<run_dir>."""
    kept = [
        o
        for o in overrides
        if not o.lstrip("+~").startswith(("hydra.run.dir=", "trainer.resume="))
        and o not in ("-m", "--multirun")
    ]
    return " ".join([prog, *(shlex.quote(o) for o in kept), shlex.quote(f"hydra.run.dir={run_dir}")])


def _decide(cfg: RootConfig, interrupts: Interrupts, job: str | None) -> tuple[bool | str, str, float]:
    """Rank 0: (requeued: True by us, "by SLURM", "by the launcher" or False; why, in one line;
    seconds to wait for SLURM to end the job)."""
    if interrupts.watch.launcher_requeues():  # submitit's USR2: its own handler requeues, after our save
        return "by the launcher", "its launcher requeues the job", 0.0
    signal_name = interrupts.stopped_by or "a signal"
    decision = slurm.decide_stop(signal_name, job, interrupts.restarts_at_start, cfg.trainer.requeue)
    if decision.action == "requeued":
        return "by SLURM", decision.why, decision.wait_s
    if decision.action == "requeue":
        assert job is not None
        # after a warning there is time to ask again; a SIGTERM's KillWait (30 s) is short
        if signal_name in slurm.WARNING_SIGNALS:
            ok, said = slurm.requeue_job(job, interrupts.restarts_at_start, slurm.REQUEUE_ATTEMPTS)
        else:
            ok, said = slurm.requeue_job(job, interrupts.restarts_at_start, 1, slurm.QUERY_TIMEOUT_S / 2)
        if ok:
            return (
                True,
                f"{decision.why}; SLURM job {job} requeued{f' ({said})' if said else ''}; SLURM holds a "
                "requeued job for AuthInfo's cred_expire, 2 minutes by default",
                0.0,
            )
        return False, f"{decision.why}; the requeue failed: {said}", 0.0
    return False, decision.why, 0.0


def after_preemption(
    cfg: RootConfig,
    env: DistEnv,
    run_dir: Path,
    interrupts: Interrupts,
    epoch: int,
    epoch_step: int,
) -> dict[str, Any]:
    """After the checkpoint of a stopped run: decide (rank 0, from evidence: resnet_repro.cluster.slurm),
    requeue when that is the decision, write preempted.json, and tell every rank.

    Where a launcher has its own requeueing handler for the signal (submitit's USR2 at the time
    limit), the checkpoint is written first and then that handler runs: it requeues the job its
    own way. The CLI ends the process from the returned outcome: without a result under submitit
    after any requeue, non-zero with the resume command after a stop that was not requeued."""
    job = slurm.job_ref()
    requeued: bool | str = False
    why, wait_s = "", 0.0
    if env.is_main:
        requeued, why, wait_s = _decide(cfg, interrupts, job)
        last = run_dir / "checkpoints" / "last.pt"
        training = epoch < cfg.trainer.epochs  # else stopped before the final evaluation
        where = (
            f"epoch {epoch + 1}, step {epoch_step} of the epoch"
            if training
            else "the end of the last epoch, before the final evaluation"
        )
        then = "requeued" if requeued else "not requeued"
        log.warning(f"stopped by {interrupts.stopped_by} at {where}; checkpoint {last}; {then}: {why}")
        outcome = {
            "signal": interrupts.stopped_by,
            # the epoch in progress, counted from 1 as the log and metrics.jsonl count; none after the last
            "epoch": epoch + 1 if training else None,
            "epochs_from": 1,
            "epoch_step": epoch_step if training else None,
            "where": where,
            "requeued": requeued,
            "why": why,
            "slurm_job": job,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # every stop of the run, kept after the run finishes (which removes preempted.json)
        with open(run_dir / "stops.jsonl", "a") as history:
            history.write(json.dumps(outcome) + "\n")
        checkpoint.write_text_atomic(run_dir / "preempted.json", json.dumps(outcome) + "\n")
    requeued, why, wait_s = distributed.broadcast_object(env, (requeued, why, wait_s))  # type: ignore[misc]
    distributed.barrier(env)
    if wait_s:  # checkpoint saved; SLURM ends the job (and requeues it) at the end of its grace time
        log.warning(f"waiting up to {wait_s:.0f} s for SLURM to end the job: {why}")
        time.sleep(wait_s)  # SIGTERM is only flagged by now; SLURM's SIGKILL ends the wait
        requeued, why = False, f"{why}; but SLURM did not end the job within {wait_s:.0f} s"
        if env.is_main:
            _revise_record(run_dir, False, why)
    if requeued == "by the launcher":
        try:
            interrupts.watch.hand_over()  # submitit: rank 0 requeues and exits here
        except (subprocess.SubprocessError, OSError) as e:
            # its `scontrol requeue` failed (JobRequeue=0, --no-requeue) or its answer was lost
            requeued, why = _after_launcher_requeue_error(interrupts, job, e)
            if env.is_main:
                _revise_record(run_dir, requeued, why)
    return {"preempted": True, "requeued": requeued, "why": why}


def _after_launcher_requeue_error(
    interrupts: Interrupts, job: str | None, failure: BaseException
) -> tuple[bool | str, str]:
    """(requeued, why) after the launcher's own requeue raised `failure` (on rank 0, the rank that
    requeues): a lost answer is the launcher's requeue where the controller shows the job requeued
    all the same; anything else is a stop, its reason in one line."""
    lost = slurm.lost_answer(failure)
    if lost is None:
        failed = (
            f"`{' '.join(map(str, failure.cmd))}`: exit {failure.returncode}"
            if isinstance(failure, subprocess.CalledProcessError)
            else str(failure)
        )
        return False, f"{interrupts.stopped_by}: the launcher's requeue failed ({failed})"
    took, unknown = (
        slurm.requeue_took_effect(job, interrupts.restarts_at_start)
        if job is not None
        else (None, "not a SLURM job")
    )
    if took:
        return "by the launcher", f"its launcher requeued the job ({lost}; the controller shows the requeue)"
    said = unknown or "the controller shows no requeue"
    return False, f"{interrupts.stopped_by}: the launcher's requeue failed ({lost}; {said})"


def _revise_record(run_dir: Path, requeued: bool | str, why: str) -> None:
    """The stop just recorded turned out otherwise (not requeued after all, or requeued after a
    lost answer): preempted.json and its line of stops.jsonl say so, so that `report` and a reader
    of either neither wait for a requeue that will not come nor resume a run SLURM reruns."""
    path = run_dir / "preempted.json"
    saved = {**json.loads(path.read_text()), "requeued": requeued, "why": why}
    checkpoint.write_text_atomic(path, json.dumps(saved) + "\n")
    stops = run_dir / "stops.jsonl"
    history = [*stops.read_text().splitlines()[:-1], json.dumps(saved)]  # this stop's own line replaced
    checkpoint.write_text_atomic(stops, "".join(f"{line}\n" for line in history))
