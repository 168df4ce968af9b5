"""SLURM as this tool asks it: node lists, what the controller says about a job, and what a stop
signal means for the job: requeue it, SLURM requeued it already, or stop (and say how to resume).

A decision never rests on a guess. USR1 / USR2 come from `--signal` (the time-limit warning), a
deliberate `scancel --signal`, or a preemption's start under PreemptParameters=send_user_signal,
never from a plain `scancel`: they requeue unless the controller shows a preemption (PreemptTime
set), which is decided as one. SIGTERM is what SLURM sends for a cancel, a time limit, a
preemption and a requeue alike: it requeues only on positive evidence (a time limit or a
preemption in `scontrol show job`) and an unknown state (no scontrol, a slow or unreachable
controller, an error) never requeues. A preemption is left to SLURM only where SLURM will requeue
it (`_preemption`); a job past its --deadline is not requeued.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from resnet_repro.config import UserError

# Seconds one scontrol call may take. SLURM's default KillWait is 30 s between SIGTERM and SIGKILL,
# and the sbatch scripts' warning is 120 s. After a SIGTERM: the state, then the requeue and (where
# its answer was lost) the check, at half this each: 20 s. After a warning: the state, then up to
# REQUEUE_ATTEMPTS requests, each with its check: 50 s. Both beside the checkpoint.
QUERY_TIMEOUT_S = 10.0

# Job state flags that SLURM shows *instead of* the base state (job_state_string() returns the
# first flag set): `JobState=COMPLETING` hides whether the job was CANCELLED, TIMEOUT, PREEMPTED or
# requeued (PENDING). Only the JSON of SLURM >= 23.11 (data_parser v0.0.40) lists the base state beside them.
STATE_FLAGS = frozenset(
    {
        "COMPLETING",
        "CONFIGURING",
        "EXPEDITING",  # 23.02+: an expedited requeue under way (libslurm 25.11 names it)
        "LAUNCH_FAILED",
        "POWER_UP_NODE",
        "RECONFIG_FAIL",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "RESV_DEL_HOLD",
        "REVOKED",
        "SIGNALING",
        "SPECIAL_EXIT",
        "STAGE_OUT",
        "STOPPED",
        "UPDATE_DB",
    }
)
REQUEUE_FLAGS = frozenset({"REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"})
# the signals `scancel <job>` never sends: SLURM's --signal time-limit warning, submitit's USR2
WARNING_SIGNALS = frozenset({"SIGUSR1", "SIGUSR2"})

Runner = Callable[..., subprocess.CompletedProcess]


# ------------------------------------------------------------------------------------- node lists


def _split_top_level(text: str) -> list[str]:
    """'a,b[1-3,5],c' -> ['a', 'b[1-3,5]', 'c']: commas outside brackets separate host expressions."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _expand_range(spec: str, nodelist: str) -> list[str]:
    """'01-03,7' -> ['01', '02', '03', '7']: each range keeps the zero padding of its lower bound."""
    out = []
    for item in spec.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise UserError(f"SLURM node list {nodelist!r}: cannot read the range [{spec}]")
        if not sep:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise UserError(f"SLURM node list {nodelist!r}: range {item} runs backwards")
        width = len(lo) if lo.startswith("0") else 0
        out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return out


def expand_hostlist(nodelist: str) -> list[str]:
    """Every host of a SLURM node list, in SLURM's order, as `scontrol show hostnames` prints them:
    'gpu[01-02]-ib' -> gpu01-ib, gpu02-ib; 'rack[1-2]-node[01-02]' -> rack1-node01, rack1-node02,
    rack2-node01, rack2-node02; 'a,b[1-3],c' -> a, b1, b2, b3, c."""
    hosts: list[str] = []
    for expr in _split_top_level(nodelist.strip()):
        if not expr:
            raise UserError(f"SLURM node list {nodelist!r}: an empty host name")
        names = [""]
        for text, spec in re.findall(r"([^\[\]]*)(?:\[([^\[\]]*)\])?", expr):
            names = [n + text for n in names]
            if spec:
                names = [n + suffix for n in names for suffix in _expand_range(spec, nodelist)]
        if expr.count("[") != expr.count("]") or any(not n for n in names):
            raise UserError(f"SLURM node list {nodelist!r}: unbalanced brackets in {expr!r}")
        hosts.extend(names)
    return hosts


def rendezvous_host(environ: Mapping[str, str]) -> str:
    """The host that rank 0 of this srun step runs on: the first node of the step's node list
    (a step may use part of the job's nodes), of heterogeneous group 0 in a heterogeneous job."""
    if "SLURM_HET_SIZE" in environ or "SLURM_JOB_NODELIST_HET_GROUP_0" in environ:
        group0 = environ.get("SLURM_JOB_NODELIST_HET_GROUP_0")
        if not group0:
            raise UserError(
                "heterogeneous SLURM job without SLURM_JOB_NODELIST_HET_GROUP_0: cannot tell where rank 0 "
                "runs; set MASTER_ADDR (and MASTER_PORT) in the job script"
            )
        return expand_hostlist(group0)[0]
    for var in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if environ.get(var):
            return expand_hostlist(environ[var])[0]
    raise UserError("srun task without SLURM_STEP_NODELIST or SLURM_JOB_NODELIST: set MASTER_ADDR")


def rendezvous_port(environ: Mapping[str, str]) -> int:
    """The port an srun step's ranks meet on, in 20000-31999: from the job id and the step id, so
    that concurrent steps of one allocation (two `srun ... &` in one script) do not collide; below
    Linux's ephemeral range (32768-60999), where an outgoing connection may hold the port."""
    job = int(environ.get("SLURM_JOB_ID", "0") or 0)
    step = int(environ.get("SLURM_STEP_ID", "0") or 0)
    return 20000 + (job * 97 + step) % 12000


def in_srun_step(environ: Mapping[str, str]) -> bool:
    """Whether this process runs in an srun step: SLURM_STEP_ID is a step's number there, and absent
    or one of SLURM's special ids (the batch script's "batch", 0xFFFFFFFB, ...) elsewhere."""
    step = environ.get("SLURM_STEP_ID", "")
    return step.isdigit() and int(step) < 0xFFFFFFF0


def batch_launcher_warning(environ: Mapping[str, str], nproc: int, parent_name: str) -> str | None:
    """A warning for `trainer.nproc` workers started by the batch script of a SLURM job through a
    shell (`parent_name`, the launcher's parent process): SLURM's `--signal` reaches the batch
    step only as `--signal=B:...`, and then only the shell, which dies of USR1 and takes the
    workers with it. The supported form is `exec resnet-repro train trainer.nproc=N` (its parent
    is slurmstepd). None where that does not apply."""
    if nproc <= 1 or not environ.get("SLURM_JOB_ID"):
        return None
    if in_srun_step(environ) or parent_name == "slurmstepd":
        return None
    return (
        f"trainer.nproc={nproc} started by the batch script through {parent_name or 'a shell'}: a "
        "time-limit warning (#SBATCH --signal=B:USR1@120) would reach that shell only, and kill it; "
        "start it as `exec resnet-repro train ...` (docs/cluster.md, launch forms)"
    )


def one_node_of_several_warning(environ: Mapping[str, str]) -> str | None:
    """A warning for a training started by the batch script of a job of several nodes: the batch
    script runs on the first node only, and so do the workers it starts; the other nodes idle.
    None inside an srun step (a step of fewer nodes is chosen) or a job of one node."""
    nodes = environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or "1"
    if not environ.get("SLURM_JOB_ID") or in_srun_step(environ) or not nodes.isdigit() or int(nodes) <= 1:
        return None
    here = environ.get("SLURMD_NODENAME") or "the first node"
    return (
        f"SLURM job {environ['SLURM_JOB_ID']} has {nodes} nodes, but its batch script trains on {here} "
        "only; for every node: srun --ntasks-per-node=<GPUs> resnet-repro train ... "
        "(scripts/slurm/train_imagenet_multinode.sbatch)"
    )


# ------------------------------------------------------------------------------------ job states


def job_ref(environ: Mapping[str, str] | None = None) -> str | None:
    """This process's SLURM job as scontrol names it: `<array id>_<task>` for an array task (the
    bare array id would name every task of the array: a requeue would requeue them all), else
    the job id; None outside SLURM."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


@dataclass(frozen=True)
class JobView:
    """What the controller says about one job: its state names (a base state and/or flags, as
    reported), the reason, the restart count, and whether a preemption has begun."""

    states: tuple[str, ...]
    reason: str = "None"
    restarts: int = 0
    preempted: bool = False
    partition: str | None = None
    requeue: bool | None = None  # whether SLURM may requeue the job (Requeue=1: --requeue or JobRequeue=1)

    @property
    def base(self) -> str | None:
        """The base state (RUNNING, PENDING, CANCELLED, TIMEOUT, PREEMPTED, ...); None where a flag
        hides it (22.05's `JobState=COMPLETING`)."""
        return next((s for s in self.states if s not in STATE_FLAGS), None)

    def describe(self) -> str:
        preempt = ", PreemptTime set" if self.preempted else ""
        return f"JobState={'+'.join(self.states)} Reason={self.reason} Restarts={self.restarts}{preempt}"


def _number(value: object) -> int:
    """An integer field of SLURM's JSON: a plain number (v0.0.38) or {"set", "number"} (v0.0.40+)."""
    if isinstance(value, dict):
        return int(value.get("number") or 0) if value.get("set", True) else 0
    return int(value or 0)


# SLURM's NO_VAL / INFINITE markers of an unset 32-bit field (openapi v0.0.38 prints them as numbers)
_UNSET = (0xFFFFFFFE, 0xFFFFFFFF)


def _task_id(value: object) -> int | None:
    """An array record's task id, or None where it has none: 25.11 prints the array's pending
    remainder with `{"set": false, "number": 0}` (not task 0), older JSON prints NO_VAL."""
    if isinstance(value, dict):
        return int(value["number"]) if value.get("set", True) and value.get("number") is not None else None
    if value is None or value == "":
        return None
    number = int(value)  # type: ignore[call-overload]
    return None if number in _UNSET else number


def _json_record_matches(record: dict, job: str) -> bool:
    """Whether `record` is job `job`: its own job id, or `<array id>_<task>` of an array task
    whose task id is set (the pending remainder of a throttled array, printed first for any of
    its tasks, is none of them)."""
    if "_" in job:
        array_id, task = record.get("array_job_id"), _task_id(record.get("array_task_id"))
        return task is not None and f"{_number(array_id)}_{task}" == job
    return str(_number(record.get("job_id"))) == job


class UnknownJob(ValueError):
    """The controller does not know the job: purged after MinJobAge, or never existed."""


def parse_job_json(text: str, job: str) -> JobView:
    """`scontrol --json show job <job>` (or squeue --json): the record of `job` (of heterogeneous
    component 0 when the job is a heterogeneous leader: its records share het_job_id). A job
    SLURM no longer knows (23.11+: exit 0 with `"jobs": []`) raises UnknownJob."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    records = data.get("jobs") or []
    if not records and "jobs" in data:
        raise UnknownJob(f"SLURM does not know job {job} (purged or never submitted)")
    leader, _, offset = job.partition("+")  # `<het job id>+<offset>` names one component
    chosen = [r for r in records if _json_record_matches(r, job)] or [
        r
        for r in records
        if str(_number(r.get("het_job_id"))) == leader
        and _number(r.get("het_job_offset")) == int(offset or 0)
    ]
    if not chosen:
        raise ValueError(f"no record of job {job} in the JSON")
    record = chosen[0]
    state = record.get("job_state")
    states = tuple(state) if isinstance(state, list) else tuple(str(state).split(","))
    return JobView(
        states=tuple(s for s in states if s),
        reason=str(record.get("state_reason") or "None"),
        restarts=_number(record.get("restart_cnt")),
        preempted=_number(record.get("preempt_time")) > 0,
        partition=str(record["partition"]) if record.get("partition") else None,
        requeue=bool(record["requeue"]) if isinstance(record.get("requeue"), bool) else None,
    )


_TEXT_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:.]*)=")


def _text_fields(line: str) -> dict[str, str]:
    """One `scontrol show job -o` line as a dict; values may hold spaces (Reason=launch failed ...)."""
    keys = list(_TEXT_KEY.finditer(line))
    return {
        m.group(1): line[m.end() : keys[i + 1].start() if i + 1 < len(keys) else len(line)].strip()
        for i, m in enumerate(keys)
    }


def parse_job_text(text: str, job: str) -> JobView:
    """`scontrol show job -o <job>`: one line per record (a heterogeneous job prints one per
    component: component 0's, the one named by the job id, is used)."""
    records = [_text_fields(line) for line in text.splitlines() if "JobState=" in line]
    if not records:
        raise ValueError(f"no JobState in the output for job {job}")
    record = next((r for r in records if r.get("JobId") == job.split("_")[0]), records[0])
    if "_" in job:  # an array task: its own line
        array_id, task = job.split("_", 1)
        record = next(
            (r for r in records if r.get("ArrayJobId") == array_id and r.get("ArrayTaskId") == task), record
        )
    preempt_time = record.get("PreemptTime", "None")
    return JobView(
        states=tuple(record["JobState"].split(",")),
        reason=record.get("Reason", "None") or "None",
        restarts=int(record.get("Restarts", "0") or 0),
        preempted=preempt_time not in ("None", "Unknown", ""),
        partition=record.get("Partition") or None,
        requeue={"1": True, "0": False}.get(record.get("Requeue", "")),
    )


# where `how` of query_job says the controller does not know the job (resume.py takes its lock over)
UNKNOWN_JOB = "does not know job"


def query_job(
    job: str, timeout_s: float = QUERY_TIMEOUT_S, run: Runner = subprocess.run
) -> tuple[JobView | None, str]:
    """(the job's view, how it was read) or (None, why it is unknown). The JSON form first (base
    state and flags apart); on any failure of it (no --json before 23.02, a build without the
    JSON serializer, output this tool cannot read) the one-line text form. A job the controller
    no longer knows gives (None, "SLURM does not know job ...")."""
    attempts = (["scontrol", "--json", "show", "job", job], ["scontrol", "show", "job", "-o", job])
    failures = []
    for args, parse in zip(attempts, (parse_job_json, parse_job_text), strict=True):
        command = " ".join(args[:-1])
        try:
            proc = run(args, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:  # the controller is not answering: the text form would not either
            return None, f"`{command}` did not answer within {timeout_s:g} s"
        except OSError as e:
            return None, f"`{command}` could not run ({e.strerror or e})"
        said = (proc.stderr or proc.stdout or "").strip().splitlines()
        if proc.returncode != 0 and any("Invalid job id" in line for line in said):
            return None, f"SLURM {UNKNOWN_JOB} {job} (`{command}`: {said[0]})"
        if proc.returncode != 0:
            failures.append(
                f"`{command}` failed (exit {proc.returncode}: {said[0] if said else 'no output'})"
            )
            continue
        try:
            return parse(proc.stdout, job), command
        except UnknownJob as e:
            return None, str(e)
        except (ValueError, KeyError, TypeError) as e:
            failures.append(f"`{command}` gave output this tool cannot read ({e})")
    return None, "; ".join(failures)


def restart_count(
    job: str | None, environ: Mapping[str, str] | None = None, run: Runner = subprocess.run
) -> int | None:
    """The job's restart count as the controller reports it now (at start-up), so that a later
    SIGTERM can tell whether SLURM requeued the job meanwhile. SLURM_RESTART_COUNT only when the
    controller cannot be asked (a container may strip it: then None, and only the job state
    counts as evidence)."""
    if job is None:
        return None
    view, _ = query_job(job, run=run)
    if view is not None:
        return view.restarts
    env = os.environ if environ is None else environ
    value = env.get("SLURM_RESTART_COUNT", "")
    return int(value) if value.isdigit() else None


def partition_preempt_mode(
    partition: str | None, timeout_s: float = QUERY_TIMEOUT_S, run: Runner = subprocess.run
) -> str | None:
    """The partition's PreemptMode as `scontrol show partition -o` prints it (REQUEUE, CANCEL,
    SUSPEND,GANG, OFF: the cluster's default where the partition sets none; the same text in 22.05
    and 25.11), or None where it cannot be read."""
    if not partition:
        return None
    try:
        proc = run(
            ["scontrol", "show", "partition", partition, "-o"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (subprocess.TimeoutExpired, OSError):
        return None
    lines = proc.stdout.strip().splitlines() if proc.returncode == 0 else []
    return _text_fields(lines[0]).get("PreemptMode") if lines else None


def cluster_preempt_type(timeout_s: float = QUERY_TIMEOUT_S, run: Runner = subprocess.run) -> str | None:
    """The cluster's PreemptType (`scontrol show config`: preempt/partition_prio, preempt/qos,
    preempt/none), or None where it cannot be read. Only under preempt/partition_prio is a
    partition's PreemptMode the one a preemption follows; under preempt/qos the QOS's applies."""
    try:
        proc = run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=timeout_s)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if proc.returncode != 0:
        return None
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "PreemptType":
            return value.strip() or None
    return None


# How long a preempted run whose partition requeues (PreemptMode=REQUEUE) waits, checkpoint saved,
# for SLURM to end it at the end of its GraceTime (SIGTERM, then SIGKILL after KillWait)
WAIT_FOR_PREEMPTION_S = 600.0


@dataclass(frozen=True)
class StopDecision:
    """What follows the checkpoint of a stopped run. action: "requeue" (ask SLURM to requeue the
    job), "requeued" (SLURM requeued it already), "stop" (not requeued: resume by hand); `why` is
    the one line the log and preempted.json give."""

    action: str
    why: str
    # seconds to wait for SLURM to end the job after the checkpoint (a preemption SLURM itself
    # requeues at the end of its GraceTime); 0: exit at once
    wait_s: float = 0.0


def decide_stop(
    signal_name: str,
    job: str | None,
    restarts_at_start: int | None,
    requeue: bool,
    query: Callable[[str], tuple[JobView | None, str]] = query_job,
    preempt_mode: Callable[[str | None], str | None] = partition_preempt_mode,
    preempt_type: Callable[[], str | None] = cluster_preempt_type,
) -> StopDecision:
    """Requeue, leave to SLURM, or stop, from evidence only (see the module docstring)."""
    if job is None:
        return StopDecision("stop", "not a SLURM job")
    if signal_name in WARNING_SIGNALS:
        if not requeue:
            return StopDecision("stop", f"{signal_name} (a time-limit warning); trainer.requeue=false")
        # PreemptParameters=send_user_signal sends --signal's signal at a preemption's start too:
        # that one is decided as the preemption it is; any other (or no answer) is the warning
        view, _ = query(job)
        if view is not None and view.preempted and view.base != "TIMEOUT" and view.reason != "TimeLimit":
            return _preemption(signal_name, job, view, preempt_mode, preempt_type)
        return StopDecision(
            "requeue", f"{signal_name}: the time-limit warning or a deliberate scancel --signal"
        )
    view, how = query(job)
    if view is None:
        return StopDecision("stop", f"SLURM job {job}'s state is unknown ({how})")
    seen = view.describe()
    requeued = requeue_evidence(view, restarts_at_start)
    if requeued is not None:
        return StopDecision("requeued", f"SLURM requeued job {job} itself ({requeued})")
    if view.base == "DEADLINE" or view.reason == "DeadLine":
        # sbatch --deadline: SLURM removes a job that cannot end before it; a requeued one again
        return StopDecision(
            "stop", f"{signal_name} at the job's deadline (sbatch --deadline; {seen}), not requeued"
        )
    time_limit = view.base == "TIMEOUT" or view.reason == "TimeLimit"
    preemption = view.base == "PREEMPTED" or view.preempted or view.reason == "Preempted"
    if not (time_limit or preemption):
        return StopDecision(
            "stop",
            f"{signal_name} with no sign of a time limit or preemption ({seen}): a cancel or a plain signal",
        )
    what = "time limit" if time_limit else "preemption"
    if not requeue:
        return StopDecision("stop", f"{signal_name} at a {what} ({seen}); trainer.requeue=false")
    if not time_limit:
        return _preemption(signal_name, job, view, preempt_mode, preempt_type)
    return StopDecision("requeue", f"{signal_name} at a {what} ({seen})")


def _preemption(
    signal_name: str,
    job: str,
    view: JobView,
    preempt_mode: Callable[[str | None], str | None],
    preempt_type: Callable[[], str | None],
) -> StopDecision:
    """A preemption is SLURM's to requeue, and only where it will: the partition's PreemptMode is
    REQUEUE, the cluster preempts by partition (PreemptType=preempt/partition_prio; under
    preempt/qos the job's QOS decides, which this tool does not read), and the job may be
    requeued (Requeue=1). Anything else, or anything unread, stops with the resume line: under
    CANCEL, SLURM ends the job at the grace's end, and a requeue of ours would undo its cancel."""
    seen = view.describe()
    where = f"{signal_name} at a preemption ({seen}); partition {view.partition}"
    mode = preempt_mode(view.partition)
    if mode is None or "REQUEUE" not in mode.upper():
        said = f"PreemptMode={mode}" if mode else "its PreemptMode could not be read"
        return StopDecision("stop", f"{where}: {said}, not requeued")
    kind = preempt_type()
    if kind is None or "partition" not in kind:
        said = (
            f"PreemptType={kind}: the job's QOS decides"
            if kind
            else "the cluster's PreemptType could not be read"
        )
        return StopDecision("stop", f"{where}: PreemptMode={mode}, but {said}; not requeued here")
    if view.requeue is False:
        return StopDecision(
            "stop",
            f"{where}: PreemptMode={mode}, but the job has Requeue=0 (submitted without --requeue): "
            "SLURM cancels it at the grace's end",
        )
    # SLURM requeues the job itself when it ends it at the grace's end; a requeue of ours now,
    # or an exit before then, is not the same thing on every version (25.11 requeued a job
    # that ended during its grace once more after its next run): wait to be ended
    return StopDecision(
        "requeued",
        f"{where}: PreemptMode={mode}: SLURM requeues the job when its GraceTime ends",
        wait_s=WAIT_FOR_PREEMPTION_S,
    )


# Attempts at `scontrol requeue` after the time-limit warning (USR1/USR2: 120 s before the end in the
# shipped scripts); after a SIGTERM (KillWait, 30 s by default) one only
REQUEUE_ATTEMPTS = 2

# SLURM's own messages for an answer lost on the way (a busy or restarting controller): the request
# may have been acted on, or not; any other failure is the controller's refusal
_LOST_ANSWER = (
    "timed out",  # "Socket timed out on send/recv operation"
    "Unable to contact",
    "Communication connection failure",
    "Zero Bytes were transmitted",
    "standby mode",  # a backup controller taking over
    "Connection refused",
)


def requeue_job(
    job: str,
    restarts_before: int | None,
    attempts: int = 1,
    timeout_s: float = QUERY_TIMEOUT_S,
    run: Runner = subprocess.run,
) -> tuple[bool, str]:
    """`scontrol requeue <job>`: SLURM restarts the same job id, which resumes from last.pt.
    (True, "" or what came before the requeue was seen) or (False, why not).

    The answer can be lost although the controller acted on the request: a busy controller answers
    too late (our timeout, or scontrol's own MessageTimeout: "Socket timed out"), and scontrol,
    running inside the job, can be ended by the SIGTERM with which the requeue itself ends the
    job's processes. After a lost answer the controller is asked whether the job shows the
    requeue (`requeue_took_effect`); only where it shows none is the request made again, up to
    `attempts` in all (a second request for a requeued job could requeue its rerun), and a refusal
    of that later request is checked the same way (a first request acted on late makes SLURM refuse
    the second: "Job is pending execution"). A first refusal (JobRequeue=0, --no-requeue) is final;
    where the controller cannot say, nothing is asked again."""
    failures: list[str] = []
    for attempt in range(attempts):
        lost, failure = _request_requeue(job, timeout_s, run)
        if not failure:
            return True, "; ".join([*failures, "asked again"]) if failures else ""
        failures.append(failure)
        if not lost and attempt == 0:
            return False, failure
        took, unknown = requeue_took_effect(job, restarts_before, timeout_s, run)
        if took:
            return True, f"{'; '.join(failures)}; but the controller shows the requeue"
        if took is None:
            return False, f"{'; '.join(failures)}; {unknown}"
        if not lost:
            break
    return False, f"{'; '.join(failures)}; the controller shows no requeue"


def requeue_took_effect(
    job: str, restarts_before: int | None, timeout_s: float = QUERY_TIMEOUT_S, run: Runner = subprocess.run
) -> tuple[bool | None, str]:
    """After a requeue request whose answer was lost: (True, "") where the controller shows the
    job requeued since it had `restarts_before` restarts, (False, "") where it shows the job as it
    was, or (None, why that is unknown)."""
    view, how = query_job(job, timeout_s, run)
    if view is None:
        return None, f"whether it took effect is unknown ({how})"
    if requeue_evidence(view, restarts_before) is not None:
        return True, ""
    if restarts_before is None:
        # 22.05 shows a job it has just requeued as `JobState=COMPLETING` (its Restarts up, the
        # REQUEUED flag hidden): without the count from before, that proves nothing either way
        return (
            None,
            f"whether it took effect is unknown ({view.describe()}, the restart count before unknown)",
        )
    return False, ""


def requeue_evidence(view: JobView, restarts_before: int | None) -> str | None:
    """What in the controller's view shows the job requeued since it had `restarts_before`
    restarts (None: unknown; then only a requeue state or flag counts), or None."""
    if restarts_before is not None and view.restarts > restarts_before:
        return f"Restarts {restarts_before} -> {view.restarts}"
    if view.base == "PENDING" or REQUEUE_FLAGS & set(view.states):
        return view.describe()
    return None


def lost_answer(failure: BaseException) -> str | None:
    """How the answer of a launcher's `scontrol requeue` (submitit's check_call, with its 60 s
    timeout) was lost, or None where it was a refusal: no answer in time, or scontrol ended by a
    signal (the requeue's own SIGTERM to the job's processes). submitit does not keep scontrol's
    message, so SLURM's communication errors read as refusals there."""
    cmd = getattr(failure, "cmd", None) or ["scontrol", "requeue"]
    command = cmd if isinstance(cmd, str) else " ".join(map(str, cmd))
    if isinstance(failure, subprocess.TimeoutExpired):
        return f"`{command}` did not answer within {failure.timeout:g} s"
    if isinstance(failure, subprocess.CalledProcessError) and failure.returncode < 0:
        return _ended_by(command, -failure.returncode)
    return None


def _ended_by(command: str, signum: int) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name here
        name = f"signal {signum}"
    return f"`{command}` was ended by {name} before it answered"


def _request_requeue(job: str, timeout_s: float, run: Runner) -> tuple[bool, str]:
    """One `scontrol requeue`: (whether its answer was lost, why it failed; "" where it did not)."""
    try:
        proc = run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        return True, str(lost_answer(e))
    except OSError as e:
        return False, f"`scontrol requeue` could not run ({e.strerror or e})"
    if proc.returncode == 0:
        return False, ""
    if proc.returncode < 0:  # scontrol runs inside the job, whose processes a requeue ends
        return True, str(lost_answer(subprocess.CalledProcessError(proc.returncode, proc.args)))
    first = (proc.stderr or proc.stdout or "").strip().splitlines()
    said = first[0] if first else f"exit {proc.returncode}"
    return any(words in said for words in _LOST_ANSWER), f"`scontrol requeue {job}` failed ({said})"
