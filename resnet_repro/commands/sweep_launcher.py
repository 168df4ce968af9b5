"""What hydra/launcher=slurm and hydra/launcher=local change in hydra-submitit-launcher's launchers:
a sweep point whose job ends without a result does not end the sweep.

The plugin reads the points' results in order. The first job that ends without one (cancelled,
killed by the kernel or SLURM, a stop that was not requeued, an exception in the task) raised
submitit's error in the submitting process: `train -m` ended on a traceback while the other points
still ran, and the sweep's count of failed points never came. Worse, on a cluster without
accounting (no `sacct`: submitit then knows no job's state), it waited forever for a cancelled
job's result. Here each point is waited for on its own, under SLURM by what the controller says
(`scontrol`, as the runs read their own jobs); a point without a result leaves its reason in its
folder's error.txt, as a point that fails inside its job does, and the sweep waits for the others.
`train -m` then counts them all (commands/sweep_outcome.py) and exits 2, naming the first.

The launcher classes are in hydra_plugins/resnet_repro_launchers: Hydra takes launchers from its
plugin package only."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

# states of a job that has ended (a requeued job is PENDING again, not one of these)
ENDED_STATES = frozenset(
    ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE",
     "BOOT_FAIL")
)  # fmt: skip
# how often the controller is asked about a point's job that has no result yet; an ended state
# counts once two answers in a row say it (a requeue passes through states of its own)
POLL_S = 10.0
# PREEMPTED is an end under PreemptMode=CANCEL, and a passage under REQUEUE (until SLURM has ended
# the job's processes: KillWait, epilogs): it counts once it has lasted this long
PREEMPTED_SETTLE_S = 300.0
# what a user can do about a pending job that will not start by itself
RELEASE = "it runs only once released: scontrol release {job}"
STUCK = {
    "JobHeldUser": RELEASE,
    "JobHeldAdmin": RELEASE,
    "launch failed requeued held": RELEASE,
    "DependencyNeverSatisfied": "it will never run: scancel {job}",
}

log = logging.getLogger(__name__)


class EachPointOnItsOwn:
    """`launch` of the plugin's launchers, each point's job waited for and read on its own."""

    _EXECUTOR: str
    config: Any
    hydra_context: Any

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        from resnet_repro.commands.hydra_app import sweep_point

        plugin_launch = super().launch  # type: ignore[misc]
        submitted_ns = time.time_ns()
        jobs = _submitted(lambda: plugin_launch(job_overrides, initial_job_idx))
        returns = []
        points = [list(o) for o in job_overrides]
        for number, (overrides, job) in enumerate(zip(job_overrides, jobs, strict=True), initial_job_idx):
            rank0 = job.task(0)  # the point's result is rank 0's, as the plugin reads it (results()[0])
            failed = None
            if self._EXECUTOR == "slurm":  # submitit's own wait needs sacct (accounting) to see an end
                point = sweep_point(points, number - initial_job_idx + 1)
                say = functools.partial(log.info, "%s: %s", point)
                wait_until_ended(job.job_id, rank0.paths.result_pickle.exists, say=say)
                if not _result_shows(rank0):
                    failed = ""
            if failed is None:
                try:
                    result = rank0.result()
                except UncompletedJobError as e:  # ended with no result: cancelled, killed, exited non-zero
                    failed = _state_in(str(e))
                except FailedJobError as e:  # an error in submitit's call of the task
                    failed = _error_line(str(e))
                else:
                    if result.status == JobStatus.FAILED:  # an exception in the task (Hydra's run_job)
                        error = result._return_value
                        failed = f"{type(error).__name__}: {error}".splitlines()[0]
            if failed is not None:
                result = self._without_result(list(overrides), number, job, failed, submitted_ns)
            returns.append(result)
        return returns

    def _without_result(
        self, overrides: list[str], number: int, job: Any, said: str, submitted_ns: int
    ) -> JobReturn:
        """A point whose job ended without a result: its reason in its folder's error.txt (unless
        the run wrote one there after this sweep submitted it), and a return that lets the sweep go
        on (its count at the end reads error.txt)."""
        from resnet_repro.commands.hydra_app import record_failure
        from resnet_repro.commands.sweep_outcome import point_dirs

        # the job id as the job names itself (submitit's JobEnvironment)
        _, job_dir = point_dirs(self.hydra_context.config_loader, self.config, overrides, number, job.job_id)
        try:
            its_own = (job_dir / "error.txt").stat().st_mtime_ns >= submitted_ns
        except OSError:
            its_own = False
        if not its_own:  # none, or an earlier sweep's (a point that never started writes no Hydra files)
            slurm = self._EXECUTOR == "slurm"
            state = _slurm_state(job.job_id) if slurm else ""
            detail = "; ".join(part for part in (state, said) if part)
            what = f"SLURM job {job.job_id}" if slurm else f"job {job.job_id}"
            record_failure(
                job_dir, f"its {what} ended without a result ({detail}); its log: {job.paths.stderr}"
            )
        return JobReturn(overrides=overrides, working_dir=str(job_dir), status=JobStatus.COMPLETED)


class _Submitted(Exception):
    def __init__(self, jobs: list[Any]) -> None:
        self.jobs = jobs


def _submitted(launch: Callable[[], object]) -> list[Any]:
    """The submitit jobs the plugin's `launch` submits, taken as it submits them: its reading of
    their results, in order and without a state for a job SLURM ended, is never reached."""
    import submitit

    submit = submitit.AutoExecutor.map_array

    def taken(executor: Any, *args: Any, **kwargs: Any) -> list[Any]:
        raise _Submitted(submit(executor, *args, **kwargs))

    submitit.AutoExecutor.map_array = taken  # type: ignore[method-assign]
    try:
        launch()
    except _Submitted as done:
        return done.jobs
    finally:
        submitit.AutoExecutor.map_array = submit  # type: ignore[method-assign]
    raise RuntimeError("hydra-submitit-launcher's launch submitted no job array")  # not this plugin version


def wait_until_ended(
    job_id: str,
    has_result: Callable[[], bool],
    query: Callable[[str], tuple[Any, str]] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = lambda line: None,
) -> None:
    """Return once the job has a result, or the controller has said twice in a row, POLL_S apart,
    that it ended (or no longer knows it: it ended minutes ago); PREEMPTED only once it has lasted
    PREEMPTED_SETTLE_S. A requeued job is waited for again. Each new state (with its reason) is
    passed to `say` once: a job held or pending for good is not waited for in silence."""
    from resnet_repro.cluster.slurm import UNKNOWN_JOB, query_job

    query = query or query_job
    ended_for = None  # polls since an ended state was first seen, in a row
    last_said = None
    while not has_result():
        view, how = query(job_id)
        ended = view.base in ENDED_STATES if view is not None else UNKNOWN_JOB in how
        line = _state_line(job_id, view, how, ended)
        if line != last_said:
            say(line)
            last_said = line
        ended_for = (0 if ended_for is None else ended_for + 1) if ended else None
        settle = PREEMPTED_SETTLE_S if view is not None and view.base == "PREEMPTED" else POLL_S
        if ended_for is not None and ended_for * POLL_S >= settle:
            return
        sleep(POLL_S)


def _state_line(job_id: str, view: Any, how: str, ended: bool) -> str:
    """The job's state in one line: `SLURM job 7_1: PENDING (Reason=JobHeldUser; ...)`."""
    if view is None:
        return f"SLURM job {job_id}: {'ended' if ended else 'state unknown'} ({how})"
    state = "+".join(view.states)
    if view.reason in ("None", ""):
        return f"SLURM job {job_id}: {state}"
    # `scontrol show job` words a reason's spaces as underscores (launch_failed_requeued_held)
    hint = STUCK.get(view.reason.replace("_", " "), "").format(job=job_id) if view.base == "PENDING" else ""
    return f"SLURM job {job_id}: {state} (Reason={view.reason}{'; ' + hint if hint else ''})"


def _result_shows(job: Any, within_s: float = 120.0, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Whether the ended SLURM job has a result file: none will come unless it COMPLETED (the task
    returned), when a shared file system may show the file a little later (submitit's own wait
    refreshes the folder the same way)."""
    from resnet_repro.cluster.slurm import query_job

    path = job.paths.result_pickle
    if path.exists():
        return True
    view, _ = query_job(job.job_id)
    if view is None or view.base != "COMPLETED":
        return False
    for _ in range(int(within_s)):
        try:
            path.parent.chmod(path.parent.stat().st_mode)  # a folder's attributes read afresh (NFS)
        except OSError:
            pass
        if path.exists():
            return True
        sleep(1.0)
    return path.exists()


def _slurm_state(job_id: str) -> str:
    from resnet_repro.cluster.slurm import query_job

    view, _ = query_job(job_id)
    if view is None:
        return ""
    reason = "" if view.reason == "None" else f", Reason={view.reason}"
    return f"JobState={'+'.join(view.states)}{reason}"


def _state_in(message: str) -> str:
    """The state submitit names in its UncompletedJobError ("... (state: CANCELLED)")."""
    found = re.search(r"\(state: ([^)]*)\)", message)
    return f"submitit's state {found.group(1)}" if found else ""


def _error_line(message: str) -> str:
    """The exception's line of submitit's FailedJobError: the last line of the trace it quotes
    between two lines of dashes (after them come only log paths)."""
    parts = message.split("-" * 22)
    trace = parts[1] if len(parts) >= 3 else message
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
