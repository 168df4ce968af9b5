"""Every SLURM path against real SLURM clusters on this machine (scripts/slurm/local_cluster.sh),
on the demo data, CPU only: the sbatch scripts as shipped (GPU requests overridden on the sbatch
command line, as a user without GPUs would), signal, time-limit and partition-preemption requeues,
a plain cancel, a node failure, the controller down while a job is signalled, the submitit sweep
launcher, a job array, two `srun` steps in one allocation, and a job on two nodes.

Three clusters, so that no scenario disturbs another: `one` (one node, this machine: most
scenarios), `nodes` (three nodes in network namespaces of their own: the two-node job on node1 and
node2 in the `high` partition, which nothing preempts, and the partition preemption on node3) and
`controller` (one node in a namespace, whose slurmctld the controller scenario stops).
SLURM holds a requeued job for the job credential's lifetime (2 minutes by default, 1 minute on
these clusters: CRED_EXPIRE_S) before it may start again, so the scenarios run side by side: a
module fixture starts every scenario in its own thread, and each test waits for its scenario and
checks what it saw. Skipped, with the reason, where a cluster cannot be brought up (not root, or
SLURM missing and no apt-get).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import drop_checkpoints
from slurm_versions import VERSIONS, path_for, slurm_dirs

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_CLUSTER = REPO_ROOT / "scripts" / "slurm" / "local_cluster.sh"
SBATCH = REPO_ROOT / "scripts" / "slurm" / "train_imagenet.sbatch"
SBATCH_MULTINODE = REPO_ROOT / "scripts" / "slurm" / "train_imagenet_multinode.sbatch"
RESNET_REPRO = str(Path(sys.executable).parent / "resnet-repro")
# CPUs the node offers: more than the machine has, so that all scenarios run at once
NODE_CPUS = 16
# the clusters: name -> local_cluster.sh arguments after DIR
# nodes: node1-2 the two-node job, node3 the partition preemption, node4-5 the grace-time preemptions
CLUSTERS = {"one": [str(NODE_CPUS)], "nodes": ["4", "--nodes", "5"], "controller": ["4", "--nodes", "1"]}
# a scenario's whole life, the requeue hold included, on a busy 2-core machine
SCENARIO_TIMEOUT_S = 900
# the job credential's lifetime (AuthInfo=cred_expire; SLURM's default is 120 s), which is also how
# long SLURM holds a requeued job: a minute less on each requeue scenario, still ample for a step
# launch on a loaded machine (the credential is checked when slurmd receives it)
CRED_EXPIRE_S = 60

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# No GPUs here: the sbatch scripts' --gpus-per-node=8 and 8 tasks are overridden as a user would
CPU_JOB = ["--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=30"]
# a small demo run: a few steps per epoch, one check for a signal after every step
SMALL_RUN = [
    "experiment=demo",
    "trainer.batch_size=16",
    "trainer.max_steps_per_epoch=6",
    "trainer.preempt_check_steps=1",
    "logging.progress=false",
    "data.num_threads=1",
    "stabilizer.warmup_epochs=0",  # the demo's 1-epoch warm-up must be shorter than the run
    "data.max_eval_images=60",  # a sixth of the val split: the scenarios are about stops, not accuracy
]
# the scenarios that count every val image once across ranks evaluate the whole split
ALL_EVAL_IMAGES = "data.max_eval_images=null"


def skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "a local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd runs the jobs as their users)"
    if not (shutil.which("slurmctld") and shutil.which("munged")) and not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install slurm-wlm and munge"
    missing = [tool for tool in ("ip", "nsenter", "unshare") if not shutil.which(tool)]
    if missing:  # the namespaced nodes of the multi-node cluster
        return f"{', '.join(missing)} not found (iproute2 and util-linux make a cluster's nodes)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The SLURM commands, pointed at the test cluster through SLURM_CONF."""

    def __init__(self, folder: Path, demo_root: Path, version: str) -> None:
        self.folder = folder
        self.demo_root = demo_root
        self.version = version
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
            self.env.pop(name, None)
        self.env.update(
            # this version's sbatch, srun, scontrol; jobs inherit the PATH, so their scontrol too
            PATH=path_for(version, self.env.get("PATH")),
            SLURM_CONF=str(folder / "slurm.conf"),
            OMP_NUM_THREADS="1",
            DATA=str(demo_root),
            RESNET_REPRO=RESNET_REPRO,
        )

    def run(self, *args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=self.env, cwd=cwd, timeout=timeout)

    def sbatch(self, *args: str, cwd: Path) -> str:
        proc = self.run("sbatch", "--parsable", *args, cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (there is no accounting database for sacct)."""
        proc = self.run("scontrol", "show", "job", "-o", job_id)
        if proc.returncode != 0:
            return {}
        return dict(item.split("=", 1) for item in proc.stdout.split() if "=" in item)

    def wait_job(self, job_id: str, until: Callable[[dict[str, str]], bool], what: str) -> dict[str, str]:
        deadline = time.monotonic() + SCENARIO_TIMEOUT_S
        while True:
            info = self.job(job_id)
            if info and until(info):
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: {what} did not happen; last seen {info}")
            time.sleep(1)

    def wait_done(self, job_id: str) -> dict[str, str]:
        return self.wait_job(job_id, lambda j: j["JobState"] in FINAL_STATES, "the end")

    def log_of(self, job_id: str, tail: int | None = 4000) -> str:
        """The job's output file, its last `tail` characters (all of it with None)."""
        path = self.job(job_id).get("StdOut")
        text = Path(path).read_text() if path and Path(path).exists() else "(no log)"
        return text if tail is None else text[-tail:]

    def training_pids(self, job_id: str) -> list[int]:
        """The job's training processes (`resnet-repro train` started by srun; not srun itself).
        Job ids repeat across the test clusters: the job's SLURM_CONF tells them apart."""
        wanted = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_CONF={self.env['SLURM_CONF']}".encode()}
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                srun = Path(argv[0].decode()).name == "srun"
                if srun or not any(a.endswith(b"resnet-repro") for a in argv):
                    continue
                environ = set((proc / "environ").read_bytes().split(b"\0"))
            except (OSError, ValueError, IndexError):
                continue  # not a process, or one that ended meanwhile
            if wanted <= environ and b"train" in argv:
                pids.append(int(proc.name))
        return pids

    def stop_controller(self) -> None:
        """Stop slurmctld (SIGTERM: it saves its state, as on a controller restart)."""
        pid = int((self.folder / "slurmctld.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), "slurmctld's exit", timeout_s=60)

    def start_controller(self) -> None:
        proc = self.run("slurmctld", "-f", self.env["SLURM_CONF"])
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: self.run("scontrol", "ping").returncode == 0, "slurmctld's restart", timeout_s=60)


# the line a stopped run that was not requeued prints, with the command that resumes it
RESUME_COMMAND = "hydra.run.dir="
FINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "DEADLINE",
)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = SCENARIO_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.5)


def epochs_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return max((r["epoch"] for r in rows if r["split"] == "train"), default=0)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------- scenarios
# Each takes the cluster and a folder of its own, drives its jobs and returns what it saw.


def scenario_sbatch(c: Cluster, work: Path) -> dict[str, Any]:
    job = c.sbatch(*CPU_JOB, str(SBATCH), *SMALL_RUN, "trainer.epochs=1", cwd=work)
    info = c.wait_done(job)
    return {
        "job": job,
        "info": info,
        "run_dir": work / "runs" / "demo" / f"slurm-{job}",
        "log": c.log_of(job),
    }


def submit_two_ranks(c: Cluster, work: Path, *overrides: str) -> str:
    """The multi-node script with two tasks on one node (srun --kill-on-bad-exit=1) on a small run."""
    return c.sbatch(
        "--nodes=1",
        "--ntasks-per-node=2",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=30",
        str(SBATCH_MULTINODE),
        *SMALL_RUN,
        *overrides,
        cwd=work,
    )


def scenario_multinode(c: Cluster, work: Path) -> dict[str, Any]:
    job = submit_two_ranks(c, work, "trainer.epochs=1", ALL_EVAL_IMAGES)
    info = c.wait_done(job)
    return {
        "job": job,
        "info": info,
        "run_dir": work / "runs" / "demo" / f"slurm-{job}",
        "log": c.log_of(job),
    }


def start_small_run(c: Cluster, work: Path, epochs: int, *sbatch_args: str) -> tuple[str, Path]:
    """Submit the single-node script on a small demo run; return once its first epoch is done."""
    job = c.sbatch(*CPU_JOB, *sbatch_args, str(SBATCH), *SMALL_RUN, f"trainer.epochs={epochs}", cwd=work)
    run_dir = work / "runs" / "demo" / f"slurm-{job}"
    wait_for(lambda: epochs_done(run_dir) >= 1 or c.job(job).get("JobState") in FINAL_STATES, "epoch 1")
    return job, run_dir


def requeued_then_finished(
    c: Cluster,
    job: str,
    run_dir: Path,
    while_held: Callable[[], object] | None = None,
    run_writes_preempted: bool = True,
) -> dict[str, Any]:
    """Wait for the requeue, read preempted.json while SLURM holds the job (a finished run deletes
    it), run `while_held`, then wait for the end.

    The run writes preempted.json after its own `scontrol requeue` has returned (the file says
    whether it was requeued), so SLURM's Restarts can be seen a moment before the file exists: wait
    for it (at most 60 s; the rerun starts ~2 minutes later) unless the run could not write it."""
    requeued = c.wait_job(job, lambda j: int(j["Restarts"]) >= 1 or j["JobState"] in FINAL_STATES, "requeue")
    if while_held is not None:
        while_held()
    preempted_json = run_dir / "preempted.json"
    if run_writes_preempted:
        with contextlib.suppress(AssertionError):  # absent: the test's own assert shows the log
            wait_for(preempted_json.exists, "preempted.json after the requeue", 60)
    preempted = read_json(preempted_json) if preempted_json.exists() else None
    info = c.wait_done(job)
    return {
        "job": job,
        "requeued": requeued,
        "preempted": preempted,
        "info": info,
        "run_dir": run_dir,
        "log": c.log_of(job),
    }


def said(*seen: object) -> str:
    """An assertion's message in whole (pytest shortens a dict it shows: the `why` of a stop
    record is at its end)."""
    return "\n".join(s if isinstance(s, str) else json.dumps(s, default=str) for s in seen)


def runtime_s(text: str) -> int:
    """SLURM's RunTime ([D-]HH:MM:SS) in seconds."""
    days, _, clock = text.rpartition("-")
    h, m, sec = (int(v) for v in clock.split(":"))
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + sec


def cut_to_its_warning(c: Cluster, job: str) -> dict[str, Any]:
    """Cut the job's time limit so that it is inside its last 120 s at once (the scripts' USR1@120)
    with 60-120 s still to run: SLURM sends the warning at its next time-limit check (every 30 s),
    before the end. A fixed 2 minutes kills, with SIGTERM and no warning, a job that has already run
    for 2 minutes (a slow machine's start)."""
    ran = runtime_s(c.job(job).get("RunTime", "0:00:00"))
    minutes = -(-(ran + 60) // 60)
    proc = c.run("scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}")
    return {"proc": proc, "ran_s": ran, "limit_min": minutes}


def scenario_usr1_preemption(c: Cluster, work: Path) -> dict[str, Any]:
    job, run_dir = start_small_run(c, work, epochs=3)
    signalled = c.run("scancel", "--signal=USR1", job)
    return {"signalled": signalled, **requeued_then_finished(c, job, run_dir)}


def scenario_usr1_requeue_answer_lost(c: Cluster, work: Path) -> dict[str, Any]:
    """USR1, and the job's `scontrol requeue` holds its answer back after the controller has acted
    (a busy controller does; so did CI's 22.05 run, where the requeue's own SIGTERM to the job's
    processes ended scontrol first): a wrapper first on the job's PATH becomes `sleep` after a
    requeue, until that SIGTERM ends it or the run's timeout gives up on it. It never answers a
    requeue: a shell that waited on `sleep` could outlive the SIGTERM (slurmstepd signals the
    job's processes one by one) and say "done" (25.11, once); one killed mid-request dies of the same
    signal."""
    real = shutil.which("scontrol", path=c.env["PATH"])
    assert real is not None
    slow = work / "slow-scontrol"
    slow.mkdir()
    wrapper = slow / "scontrol"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = requeue ] || exec "{real}" "$@"\n'
        f'"{real}" "$@"\n'
        "rc=$?\n"
        "[ $rc -gt 128 ] && kill -$((rc - 128)) $$\n"
        "[ $rc -eq 0 ] || exit $rc\n"
        "exec sleep 60\n"
    )
    wrapper.chmod(0o755)
    path = f"{slow}{os.pathsep}{c.env['PATH']}"
    job, run_dir = start_small_run(c, work, 3, f"--export=ALL,PATH={path}")
    signalled = c.run("scancel", "--signal=USR1", job)
    return {"signalled": signalled, **requeued_then_finished(c, job, run_dir)}


def scenario_time_limit(c: Cluster, work: Path) -> dict[str, Any]:
    # The script's own `--signal=USR1@120`, the time limit cut to within it; the run is long
    # enough to be still going when the warning comes
    job, run_dir = start_small_run(c, work, epochs=20)
    cut = cut_to_its_warning(c, job)
    # while SLURM holds it: give the rerun room, or its own USR1 would come at once again
    room = lambda: c.run("scontrol", "update", f"JobId={job}", "TimeLimit=30")  # noqa: E731
    return {"cut": cut, **requeued_then_finished(c, job, run_dir, while_held=room)}


def ended_without_requeue(c: Cluster, job: str, run_dir: Path) -> dict[str, Any]:
    """Wait for the end of a job that is not to be requeued, then what it left."""
    info = c.wait_done(job)
    time.sleep(5)  # a requeue would show by now
    preempted = run_dir / "preempted.json"
    return {
        "job": job,
        "info": info,
        "later": c.job(job),
        "run_dir": run_dir,
        "preempted": read_json(preempted) if preempted.exists() else None,
        "log": c.log_of(job),
    }


def scenario_cancel(c: Cluster, work: Path) -> dict[str, Any]:
    job, run_dir = start_small_run(c, work, epochs=12)
    cancelled = c.run("scancel", job)
    return {"cancelled": cancelled, **ended_without_requeue(c, job, run_dir)}


def scenario_array(c: Cluster, work: Path) -> dict[str, Any]:
    job = c.sbatch("--array=0-1", *CPU_JOB, str(SBATCH), *SMALL_RUN, "trainer.epochs=1", cwd=work)
    infos = [c.wait_done(f"{job}_{task}") for task in (0, 1)]
    return {"job": job, "infos": infos, "runs": work / "runs" / "demo", "log": c.log_of(f"{job}_0")}


SEED_LOOP = """#!/usr/bin/env bash
#SBATCH --job-name=seed-loop
set -euo pipefail
for seed in 0 1; do
    srun "$RESNET_REPRO" train data.root="$DATA" trainer.seed=$seed "$@"
done
"""


def scenario_seed_loop(c: Cluster, work: Path) -> dict[str, Any]:
    script = work / "seed_loop.sbatch"
    script.write_text(SEED_LOOP)
    job = c.sbatch(*CPU_JOB, str(script), *SMALL_RUN, "trainer.epochs=1", cwd=work)
    info = c.wait_done(job)
    return {"job": job, "info": info, "runs": work / "runs" / "demo", "log": c.log_of(job)}


def point_dir(sweep: Path, seed: int) -> Path:
    """A sweep point's directory (named after all its overrides by Hydra)."""
    found = [p for p in sweep.glob("*") if f"trainer.seed={seed}" in p.name.split(",")]
    return found[0] if found else sweep / f"not-yet-seed-{seed}"


def held_or_ended(job: dict[str, str]) -> bool:
    """Requeued and waiting to run again, or ended."""
    return (int(job["Restarts"]) > 0 and job["JobState"] == "PENDING") or job["JobState"] in FINAL_STATES


def submitit_results(sweep: Path, task: str) -> list[Path]:
    """The result files submitit wrote for an array task (`<array id>_<index>`)."""
    return sorted(sweep.glob(f".submitit/{task}/*_result.pkl"))


def submitit_sweep(c: Cluster, sweep: Path, *overrides: str) -> list[str]:
    """`train -m` of small demo runs through hydra-submitit-launcher on this CPU-only cluster."""
    return [
        RESNET_REPRO,
        "train",
        "-m",
        "hydra/launcher=slurm",
        f"data.root={c.demo_root}",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.tasks_per_node=1",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=30",
        f"hydra.sweep.dir={sweep}",
        *SMALL_RUN,
        *overrides,
    ]


def scenario_submitit_point_fails(c: Cluster, work: Path) -> dict[str, Any]:
    """Two sweep points through hydra-submitit-launcher: 11 classes of the demo's 10 are valid
    settings that only the job, listing the data, refuses; the other point trains. The failing
    point's exception comes back in Hydra's FAILED return through submitit's result file."""
    sweep = work / "sweep"
    args = submitit_sweep(c, sweep, "trainer.epochs=1", "data.subset.classes=11,2")
    proc = subprocess.run(
        args, env=c.env, cwd=work, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S
    )
    points = {n: next(iter(sweep.glob(f"data.subset.classes={n},*")), None) for n in (11, 2)}
    return {"rc": proc.returncode, "output": proc.stdout + proc.stderr, "points": points}


def scenario_submitit_sweep(c: Cluster, work: Path) -> dict[str, Any]:
    """Three sweep points through hydra-submitit-launcher; point 0 gets submitit's time-limit signal
    (USR2), point 1 is requeued by SLURM (`scontrol requeue`, as an admin or a PreemptMode=REQUEUE
    preemption would), point 2 is cancelled (`scancel`). Neither requeued point may leave a result
    while SLURM holds it, or the sweep would not wait for the rerun; the cancelled one must not end
    the sweep before the others (on this cluster without accounting submitit never learns its state)."""
    sweep = work / "sweep"
    args = submitit_sweep(c, sweep, "trainer.epochs=3", "trainer.seed=0,1,2")
    with open(work / "sweep.out", "w") as out:
        proc = subprocess.Popen(args, env=c.env, cwd=work, stdout=out, stderr=subprocess.STDOUT)
        try:
            started = lambda: all(epochs_done(point_dir(sweep, s)) >= 1 for s in range(3))  # noqa: E731
            wait_for(lambda: started() or proc.poll() is not None, "epoch 1")
            points = [point_dir(sweep, s) for s in (0, 1, 2)]
            names = c.run("squeue", "-h", "-o", "%i %j").stdout.split("\n")
            # this sweep's array, from its own folder: another sweep's jobs on this cluster have
            # the same name
            array_id = next((sweep / ".submitit").glob("*_0")).name.split("_")[0]
            tasks = [f"{array_id}_0", f"{array_id}_1", f"{array_id}_2"]
            signals = [
                c.run("scancel", "--signal=USR2", tasks[0]),
                c.run("scontrol", "requeue", tasks[1]),
                c.run("scancel", tasks[2]),
            ]
            requeues = [c.wait_job(t, held_or_ended, "the requeue hold") for t in tasks[:2]]
            results_while_held = [submitit_results(sweep, t) for t in tasks[:2]]
            running_after_the_cancel = proc.poll() is None
            preempted = [
                read_json(p / "preempted.json") if (p / "preempted.json").exists() else None for p in points
            ]
            rc = proc.wait(timeout=SCENARIO_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report = subprocess.run(
        [RESNET_REPRO, "report", str(sweep)], capture_output=True, text=True, env=c.env, timeout=300
    )
    return {
        "rc": rc,
        "output": (work / "sweep.out").read_text(),
        "names": names,
        "tasks": tasks,
        "signals": signals,
        "requeues": requeues,
        "results_while_held": results_while_held,
        "running_after_the_cancel": running_after_the_cancel,
        "results": [submitit_results(sweep, t) for t in tasks],
        "preempted": preempted,
        "finals": [c.job(t) for t in tasks],
        "points": points,
        "report": report,
    }


def scenario_preempt(c: Cluster, work: Path) -> dict[str, Any]:
    """A job of partition `local` on node3, preempted by an exclusive job of partition `high`
    (PreemptType=preempt/partition_prio, PreemptMode=REQUEUE): SLURM signals and requeues it."""
    job, run_dir = start_small_run(c, work, 4, "--partition=local", "--nodelist=node3")
    high = c.sbatch(
        "--partition=high", "--nodelist=node3", "--exclusive", "--time=5", "--wrap=sleep 1", cwd=work
    )
    high_info = c.wait_done(high)
    rerun = requeued_then_finished(c, job, run_dir)
    return {"high": high_info, "whole_log": c.log_of(job, tail=None), **rerun}


def scenario_grace(c: Cluster, work: Path, partition: str, node: str) -> dict[str, Any]:
    """A job of `partition` (GraceTime=30) on `node`, preempted by an exclusive job of `high`:
    SIGTERM at once, SIGKILL 30 s later; the run saves its checkpoint within the grace."""
    job, run_dir = start_small_run(c, work, 4, f"--partition={partition}", f"--nodelist={node}")
    high = c.sbatch(
        "--partition=high", f"--nodelist={node}", "--exclusive", "--time=5", "--wrap=sleep 1", cwd=work
    )
    wait_for(
        lambda: (run_dir / "preempted.json").exists() or c.job(job).get("JobState") in FINAL_STATES,
        "the preempted job's stop",
    )
    wait_for(lambda: (run_dir / "preempted.json").exists(), "preempted.json", 120)
    preempted = read_json(run_dir / "preempted.json")
    saved = (run_dir / "checkpoints" / "last.pt").stat().st_mtime
    return {"job": job, "high": high, "preempted": preempted, "saved": saved, "run_dir": run_dir}


def scenario_grace_cancel(c: Cluster, work: Path) -> dict[str, Any]:
    o = scenario_grace(c, work, "gracecancel", "node4")
    info = c.wait_done(o["job"])
    time.sleep(5)  # a requeue would show by now
    # read again now that the job has ended: the resume line is added after the first write
    preempted = read_json(o["run_dir"] / "preempted.json")
    return {**o, "preempted": preempted, "info": info, "later": c.job(o["job"]), "log": c.log_of(o["job"])}


def scenario_grace_requeue(c: Cluster, work: Path) -> dict[str, Any]:
    first = scenario_grace(c, work, "gracerequeue", "node5")
    rerun = requeued_then_finished(c, first["job"], first["run_dir"])
    return {**rerun, "preempted": first["preempted"], "saved": first["saved"]}


def scenario_two_node(c: Cluster, work: Path) -> dict[str, Any]:
    """The multi-node script on node1 and node2, one rank each, in the partition nothing preempts."""
    job = c.sbatch(
        "--partition=high",
        "--nodes=2",
        "--nodelist=node[1-2]",
        "--ntasks-per-node=1",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=30",
        str(SBATCH_MULTINODE),
        *SMALL_RUN,
        "trainer.epochs=1",
        ALL_EVAL_IMAGES,
        cwd=work,
    )
    info = c.wait_done(job)
    return {
        "job": job,
        "info": info,
        "run_dir": work / "runs" / "demo" / f"slurm-{job}",
        "log": c.log_of(job),
    }


def scenario_controller_down(c: Cluster, work: Path) -> dict[str, Any]:
    """slurmctld stopped, then the training process sent SIGTERM: nothing can tell a preemption from
    a cancel. The controller is started again once the process has exited."""
    job, run_dir = start_small_run(c, work, 12)
    wait_for(lambda: bool(c.training_pids(job)), "the training process")
    (pid,) = c.training_pids(job)
    c.stop_controller()
    try:
        os.kill(pid, signal.SIGTERM)
        signalled = time.monotonic()
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the training process's exit", timeout_s=300)
        exit_s = time.monotonic() - signalled
    finally:
        c.start_controller()
    info = c.wait_done(job)
    time.sleep(5)  # a requeue would show by now
    return {
        "job": job,
        "exit_s": exit_s,
        "info": info,
        "later": c.job(job),
        "run_dir": run_dir,
        "preempted": read_json(run_dir / "preempted.json") if (run_dir / "preempted.json").exists() else None,
        "log": c.log_of(job),
    }


def scenario_node_failure(c: Cluster, work: Path) -> dict[str, Any]:
    """A node failure as the job sees it: its training process killed at once (SIGKILL, no signal to
    act on) in the middle of epoch 1, then the job requeued by SLURM (`scontrol requeue`, as after a
    node failure); the run resumes from its last periodic checkpoint."""
    job = c.sbatch(
        *CPU_JOB,
        str(SBATCH),
        *[arg for arg in SMALL_RUN if not arg.startswith("trainer.max_steps_per_epoch=")],
        "trainer.max_steps_per_epoch=40",
        "trainer.epochs=1",
        "trainer.checkpoint_every_minutes=0.01",
        cwd=work,
    )
    run_dir = work / "runs" / "demo" / f"slurm-{job}"
    last = run_dir / "checkpoints" / "last.pt"
    # metrics.jsonl gets epoch 1's row before the epoch's own checkpoint: a last.pt without the row
    # is a periodic checkpoint, from inside the epoch
    wait_for(lambda: last.exists() or epochs_done(run_dir) >= 1, "a periodic checkpoint")
    periodic_before_kill = epochs_done(run_dir) == 0
    for pid in c.training_pids(job):
        os.kill(pid, signal.SIGKILL)
    periodic = periodic_before_kill and epochs_done(run_dir) == 0
    failed = c.wait_done(job)
    requeue = c.run("scontrol", "requeue", job)
    return {
        "requeue": requeue,
        "failed": failed,
        "periodic": periodic,
        **requeued_then_finished(c, job, run_dir, run_writes_preempted=False),  # SIGKILLed: no file
    }


def scenario_array_throttled(c: Cluster, work: Path) -> dict[str, Any]:
    """`--array=0-2%1`: task 0 runs while the rest wait, and SLURM 25.11 answers a query for the
    task with the array's pending remainder first. A plain scancel of task 0 must read as what it
    is (a cancel: not requeued), not as "SLURM requeued it" from the remainder's PENDING."""
    job = c.sbatch("--array=0-2%1", *CPU_JOB, str(SBATCH), *SMALL_RUN, "trainer.epochs=20", cwd=work)
    task0 = f"{job}_0"
    run_dir = work / "runs" / "demo" / f"slurm-{task0}"
    wait_for(lambda: epochs_done(run_dir) >= 1 or c.job(task0).get("JobState") in FINAL_STATES, "epoch 1")
    cancelled = c.run("scancel", task0)
    info = c.wait_done(task0)
    wait_for(lambda: (run_dir / "preempted.json").exists(), "task 0's preempted.json", 120)
    c.run("scancel", job)  # the tasks still waiting
    return {
        "job": job,
        "cancelled": cancelled,
        "info": info,
        "preempted": read_json(run_dir / "preempted.json"),
        "log": c.log_of(task0),
    }


def rank_pid(c: Cluster, job: str, rank: int) -> int:
    """The training process of one rank (SLURM_PROCID) of a job."""
    for pid in c.training_pids(job):
        with contextlib.suppress(OSError):
            if f"SLURM_PROCID={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
    raise AssertionError(f"no training process of rank {rank} in job {job}")


def start_two_rank_run(c: Cluster, work: Path, epochs: int) -> tuple[str, Path]:
    """submit_two_ranks, once its first epoch is done."""
    job = submit_two_ranks(c, work, f"trainer.epochs={epochs}")
    run_dir = work / "runs" / "demo" / f"slurm-{job}"
    wait_for(lambda: epochs_done(run_dir) >= 1 or c.job(job).get("JobState") in FINAL_STATES, "epoch 1")
    return job, run_dir


def scenario_multi_rank_warning(c: Cluster, work: Path) -> dict[str, Any]:
    """The time-limit warning reaches rank 1 only (skew between nodes, a signal to one pid): the
    ranks agree on it, rank 0 requeues, the job resumes and completes."""
    job, run_dir = start_two_rank_run(c, work, epochs=3)
    os.kill(rank_pid(c, job, 1), signal.SIGUSR1)
    return requeued_then_finished(c, job, run_dir)


def scenario_multi_rank_stop(c: Cluster, work: Path) -> dict[str, Any]:
    """A plain SIGTERM to rank 1 only: not requeued; under --kill-on-bad-exit rank 1's exit 75
    must not cut rank 0 short before it says how to resume."""
    job, run_dir = start_two_rank_run(c, work, epochs=12)
    os.kill(rank_pid(c, job, 1), signal.SIGTERM)
    info = c.wait_done(job)
    return {"job": job, "info": info, "run_dir": run_dir, "log": c.log_of(job)}


def scenario_no_requeue(c: Cluster, work: Path) -> dict[str, Any]:
    """A job submitted with --no-requeue gets the time-limit warning: the requeue is refused, the
    stop says so and prints the resume command."""
    job, run_dir = start_small_run(c, work, 12, "--no-requeue")
    signalled = c.run("scancel", "--signal=USR1", job)
    return {"signalled": signalled, **ended_without_requeue(c, job, run_dir)}


def scenario_salloc(c: Cluster, work: Path) -> dict[str, Any]:
    """`salloc` + `srun` without a batch script."""
    run_dir = work / "run"
    proc = c.run(
        "salloc",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=1",
        "--time=30",
        "srun",
        RESNET_REPRO,
        "train",
        f"data.root={c.demo_root}",
        *SMALL_RUN,
        "trainer.epochs=1",
        f"hydra.run.dir={run_dir}",
        cwd=work,
        timeout=SCENARIO_TIMEOUT_S,
    )
    return {"proc": proc, "run_dir": run_dir}


BATCH_NPROC = """#!/usr/bin/env bash
#SBATCH --job-name=batch-nproc
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
exec "$RESNET_REPRO" train trainer.nproc=2 "$@"
"""


def scenario_batch_nproc(c: Cluster, work: Path) -> dict[str, Any]:
    """`exec resnet-repro train trainer.nproc=2` as the batch script, `--signal=B:USR1@120` (the
    form docs/cluster.md names): the time-limit warning reaches the launcher, which is the batch
    shell, and is passed on to its two workers: saved, requeued, resumed; then a plain scancel
    (SIGTERM to every process of the job) stops it with exit 75 and the resume line."""
    script = work / "batch_nproc.sbatch"
    script.write_text(BATCH_NPROC)
    job = c.sbatch(
        *CPU_JOB[:-1],
        "--cpus-per-task=2",
        "--time=30",
        f"--export=ALL,RESNET_REPRO={RESNET_REPRO}",
        str(script),
        f"data.root={c.demo_root}",
        *SMALL_RUN,
        # more epochs than the scenario can reach: SLURM sends the time-limit warning on its own
        # schedule (22.05 once let the run reach epoch 19 of 20 first), and the rerun must still be
        # training when the cancel comes, or it finishes and the cancel finds nothing to stop
        "trainer.epochs=500",
        cwd=work,
    )
    run_dir = work / "runs" / "demo" / f"slurm-{job}"
    wait_for(lambda: epochs_done(run_dir) >= 1 or c.job(job).get("JobState") in FINAL_STATES, "epoch 1")
    cut = cut_to_its_warning(c, job)
    requeued = c.wait_job(job, lambda j: int(j["Restarts"]) >= 1 or j["JobState"] in FINAL_STATES, "requeue")
    warned = read_json(run_dir / "preempted.json") if (run_dir / "preempted.json").exists() else None
    c.run("scontrol", "update", f"JobId={job}", "TimeLimit=30")  # room for the rerun
    c.wait_job(job, lambda j: j["JobState"] == "RUNNING" or j["JobState"] in FINAL_STATES, "the rerun")
    resumed_at = epochs_done(run_dir)
    wait_for(
        lambda: epochs_done(run_dir) > resumed_at or c.job(job).get("JobState") in FINAL_STATES,
        "an epoch of the rerun",
    )
    cancelled = c.run("scancel", job)
    return {
        "cut": cut,
        "requeued": requeued,
        "warned": warned,
        "cancelled": cancelled,
        **ended_without_requeue(c, job, run_dir),
        "whole_log": c.log_of(job, tail=None),
    }


# name -> (cluster, scenario)
SCENARIOS: dict[str, tuple[str, Callable[[Cluster, Path], dict[str, Any]]]] = {
    "sbatch": ("one", scenario_sbatch),
    "multinode": ("one", scenario_multinode),
    "usr1": ("one", scenario_usr1_preemption),
    "usr1_answer_lost": ("one", scenario_usr1_requeue_answer_lost),
    "time_limit": ("one", scenario_time_limit),
    "cancel": ("one", scenario_cancel),
    "array": ("one", scenario_array),
    "seed_loop": ("one", scenario_seed_loop),
    "submitit": ("one", scenario_submitit_sweep),
    "submitit_point_fails": ("one", scenario_submitit_point_fails),
    "node_failure": ("one", scenario_node_failure),
    "preempt": ("nodes", scenario_preempt),
    "two_node": ("nodes", scenario_two_node),
    "controller": ("controller", scenario_controller_down),
    "array_throttled": ("one", scenario_array_throttled),
    "multi_rank_warning": ("one", scenario_multi_rank_warning),
    "multi_rank_stop": ("one", scenario_multi_rank_stop),
    "no_requeue": ("one", scenario_no_requeue),
    "salloc": ("one", scenario_salloc),
    "batch_nproc": ("one", scenario_batch_nproc),
    "grace_cancel": ("nodes", scenario_grace_cancel),
    "grace_requeue": ("nodes", scenario_grace_requeue),
}


# -------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=VERSIONS)
def version(request) -> str:
    """Every scenario runs on Debian's SLURM 22.05, then on 25.11 (tests/slurm_versions.py): the
    test id names the version; a version that cannot run here is skipped with the reason."""
    return request.param


@pytest.fixture(scope="module")
def clusters(tmp_path_factory, demo_root: Path, version: str):
    """{cluster name: Cluster} of this SLURM version, started for its scenarios, stopped after."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    dirs, why = slurm_dirs(version)
    if dirs is None:
        pytest.skip(why or f"SLURM {version} is not available")
    started: dict[str, Cluster] = {}
    try:
        for name, cluster_args in CLUSTERS.items():
            folder = tmp_path_factory.mktemp(f"slurm-{version}-{name}")
            env = {
                **os.environ,
                "PATH": path_for(version),
                # job ids of their own per cluster: the srun steps' rendezvous ports (from the job
                # id) of clusters side by side on this one host must not collide, as on one cluster
                # they cannot
                "FIRST_JOB_ID": str(1 + 1000 * len(started)),
                "SLURMCTLD_PORT": str(free_port()),
                "SLURMD_PORT": str(free_port()),
                "CRED_EXPIRE": str(CRED_EXPIRE_S),
            }
            start = subprocess.run(
                ["bash", str(LOCAL_CLUSTER), "start", str(folder), *cluster_args],
                capture_output=True,
                text=True,
                env=env,
                timeout=900,
            )
            started[name] = Cluster(folder, demo_root, version)
            assert start.returncode == 0, f"cluster {name} on {version}: " + start.stdout + start.stderr
        # the demo's normalization statistics once, before the jobs (each would compute them otherwise)
        stats = subprocess.run(
            [RESNET_REPRO, "stats", f"data.root={demo_root}"],
            capture_output=True,
            text=True,
            env=started["one"].env,
            timeout=600,
        )
        assert stats.returncode == 0, stats.stderr
        yield started
    finally:
        for c in started.values():
            c.run("scancel", "--user", "root")
            subprocess.run(
                ["bash", str(LOCAL_CLUSTER), "stop", str(c.folder)],
                capture_output=True,
                timeout=120,
                env={**os.environ, "PATH": path_for(version)},
            )


@pytest.fixture(scope="module")
def scenarios(clusters: dict[str, Cluster], version: str, tmp_path_factory, request):
    """The selected tests' scenarios started at once on this version, each in its own thread and
    folder: {name: future}."""
    selected = {getattr(item, "function", None) for item in request.session.items}
    wanted = {getattr(test, "scenario", None) for test in selected}
    started = time.monotonic()
    folders = {name: tmp_path_factory.mktemp(f"{version}-{name}") for name in SCENARIOS if name in wanted}
    with ThreadPoolExecutor(max_workers=len(SCENARIOS)) as pool:
        futures: dict[str, Future] = {}
        for name, folder in folders.items():
            on, fn = SCENARIOS[name]
            futures[name] = pool.submit(fn, clusters[on], folder)
        yield futures
        for future in futures.values():  # let every scenario end before the clusters stop
            future.exception()
    print(f"\nSLURM {version} scenarios: {time.monotonic() - started:.0f} s wall time side by side")
    # a version's checkpoints are about 2 GiB: gone once its tests have read them (logs and records stay)
    for folder in folders.values():
        drop_checkpoints(folder)


def scenario(name: str) -> Callable:
    """Names the scenario a test checks: only the scenarios of the selected tests run."""

    def mark(test: Callable) -> Callable:
        test.scenario = name  # type: ignore[attr-defined]
        return test

    return mark


def outcome(scenarios: dict[str, Future], name: str, version: str) -> dict[str, Any]:
    """What scenario `name` saw on SLURM `version` (the scenarios fixture is this version's)."""
    return scenarios[name].result(timeout=SCENARIO_TIMEOUT_S + 60)


# ----------------------------------------------------------------------------------------- tests
@scenario("sbatch")
def test_sbatch_script_as_shipped_completes_into_runs_experiment_slurm_job_id(scenarios, version):
    o = outcome(scenarios, "sbatch", version)
    assert o["info"]["JobState"] == "COMPLETED", o["log"]
    assert o["info"]["ExitCode"] == "0:0"
    final = read_json(o["run_dir"] / "final.json")
    assert final["epochs"] == 1 and 0.0 <= final["top1"] <= 1.0


@scenario("multinode")
def test_multinode_script_with_two_tasks_runs_two_rank_ddp_from_slurm_variables(scenarios, version):
    o = outcome(scenarios, "multinode", version)
    assert o["info"]["JobState"] == "COMPLETED", o["log"]
    run = read_json(o["run_dir"] / "run.json")
    assert run["derived"]["world_size"] == 2
    assert read_json(o["run_dir"] / "final.json")["num_samples"] == 360  # every val image once


@scenario("usr1")
def test_usr1_checkpoints_requeues_once_and_the_job_resumes_in_the_same_directory(scenarios, version):
    o = outcome(scenarios, "usr1", version)
    assert o["signalled"].returncode == 0, o["signalled"].stderr
    assert o["preempted"] is not None, o["log"]
    assert o["preempted"]["signal"] == "SIGUSR1" and o["preempted"]["requeued"] is True, said(
        o["preempted"], o["log"]
    )
    assert o["info"]["JobState"] == "COMPLETED", o["log"]
    assert o["info"]["Restarts"] == "1"
    assert read_json(o["run_dir"] / "final.json")["epochs"] == 3
    train_log = (o["run_dir"] / "train.log").read_text()
    assert train_log.count("resumed from") == 1
    assert not (o["run_dir"] / "preempted.json").exists()


@scenario("usr1_answer_lost")
def test_a_requeue_whose_answer_is_lost_is_counted_from_the_controller_and_the_job_resumes(
    scenarios, version
):
    o = outcome(scenarios, "usr1_answer_lost", version)
    assert o["signalled"].returncode == 0, o["signalled"].stderr
    assert o["preempted"] is not None, o["log"]
    assert o["preempted"]["requeued"] is True, said(o["preempted"], o["log"])
    assert "the controller shows the requeue" in o["preempted"]["why"], said(o["preempted"])
    assert o["info"]["JobState"] == "COMPLETED", o["log"]
    assert o["info"]["Restarts"] == "1"  # asked once: a second request would have requeued the rerun
    assert read_json(o["run_dir"] / "final.json")["epochs"] == 3


@scenario("time_limit")
def test_the_scripts_time_limit_signal_checkpoints_requeues_and_the_job_completes(scenarios, version):
    o = outcome(scenarios, "time_limit", version)
    assert o["cut"]["proc"].returncode == 0, o["cut"]["proc"].stderr
    assert o["preempted"] is not None, o["log"]
    assert o["preempted"]["signal"] == "SIGUSR1" and o["preempted"]["requeued"] is True, said(
        o["preempted"], o["cut"]
    )
    assert o["info"]["JobState"] == "COMPLETED", o["log"]
    assert o["info"]["Restarts"] == "1"
    assert read_json(o["run_dir"] / "final.json")["epochs"] == 20
    assert "resumed from" in (o["run_dir"] / "train.log").read_text()


@scenario("cancel")
def test_plain_scancel_cancels_without_requeue_exits_non_zero_and_keeps_the_last_checkpoint(
    scenarios, version
):
    o = outcome(scenarios, "cancel", version)
    assert o["cancelled"].returncode == 0, o["cancelled"].stderr
    assert o["info"]["JobState"] == "CANCELLED", o["log"]
    assert o["info"]["ExitCode"] != "0:0"  # not a success: `--dependency=afterok` jobs do not start
    # the training process itself exits non-zero (srun reports its task's status) ...
    exits = [line for line in o["log"].splitlines() if "task 0: Exited with exit code" in line]
    assert exits and not exits[-1].endswith(" 0"), o["log"]
    # ... after saying how to resume the unfinished run
    resume = [line for line in o["log"].splitlines() if RESUME_COMMAND in line]
    assert resume and o["run_dir"].name in resume[-1], o["log"]
    assert o["later"]["JobState"] == "CANCELLED" and o["later"]["Restarts"] == "0"
    preempted = read_json(o["run_dir"] / "preempted.json")
    assert preempted["signal"] == "SIGTERM" and preempted["requeued"] is False
    assert (o["run_dir"] / "checkpoints" / "last.pt").is_file()
    assert not (o["run_dir"] / "final.json").exists()


@scenario("array")
def test_job_array_gives_one_run_directory_per_task(scenarios, version):
    o = outcome(scenarios, "array", version)
    assert [i["JobState"] for i in o["infos"]] == ["COMPLETED", "COMPLETED"], o["log"]
    dirs = sorted(p.name for p in o["runs"].iterdir())
    assert dirs == [f"slurm-{o['job']}_0", f"slurm-{o['job']}_1"]
    for name in dirs:
        assert (o["runs"] / name / "final.json").is_file()


@scenario("seed_loop")
def test_two_srun_steps_with_different_seeds_get_two_run_directories_and_two_results(scenarios, version):
    o = outcome(scenarios, "seed_loop", version)
    assert o["info"]["JobState"] == "COMPLETED", o["log"]
    dirs = sorted(p.name for p in o["runs"].iterdir())
    assert dirs == [f"slurm-{o['job']}", f"slurm-{o['job']}.1"]
    finals = [read_json(o["runs"] / name / "final.json") for name in dirs]
    assert [f["epochs_run"] for f in finals] == [1, 1]  # both trained; neither resumed the other
    assert finals[0]["loss"] != finals[1]["loss"]
    import yaml

    seeds = [yaml.safe_load((o["runs"] / n / "config.yaml").read_text())["trainer"]["seed"] for n in dirs]
    assert seeds == [0, 1]


@scenario("submitit")
def test_submitit_sweep_waits_for_points_requeued_by_submitit_or_slurm_and_counts_a_cancelled_one(
    scenarios, version
):
    o = outcome(scenarios, "submitit", version)
    # squeue names the jobs after the experiment
    assert [line.split()[1] for line in o["names"] if line.split()[:1] == [o["tasks"][0]]] == ["demo"]
    for signalled in o["signals"]:
        assert signalled.returncode == 0, signalled.stderr
    assert [j["JobState"] for j in o["requeues"]] == ["PENDING", "PENDING"], o["requeues"]
    # while SLURM holds the jobs, submitit has no result for either: the sweep waits for the reruns
    assert o["results_while_held"] == [[], []], o["results_while_held"]
    usr2, term, cancelled = o["preempted"]
    assert usr2 is not None and usr2["signal"] == "SIGUSR2" and usr2["requeued"] == "by the launcher"
    # `scontrol requeue` sends SIGTERM; the run sees that SLURM requeued the job, and says so
    assert term is not None and term["signal"] == "SIGTERM" and term["requeued"] == "by SLURM", term
    assert cancelled is None or not cancelled["requeued"], cancelled  # a cancel: not requeued
    assert [len(r) for r in o["results"]] == [1, 1, 0]
    for final in o["finals"][:2]:
        assert final["JobState"] == "COMPLETED" and final["Restarts"] == "1", final
    assert o["finals"][2]["JobState"] == "CANCELLED", o["finals"][2]
    for point in o["points"][:2]:
        assert read_json(point / "final.json")["epochs"] == 3
        assert "resumed from" in (point / "train.log").read_text()
    # the cancelled point ends neither the sweep nor its wait for the reruns: it is counted at the end
    assert o["running_after_the_cancel"], o["output"]
    # the wait says each state of the point it waits for: point 1's requeue hold is not silent
    held = f"sweep point 1 of 3 (trainer.seed=0): SLURM job {o['tasks'][0]}: PENDING"
    assert held in o["output"], o["output"]
    assert o["rc"] == 2, o["output"]
    last = o["output"].strip().splitlines()[-1]
    assert last.startswith(
        f"resnet-repro: error: 1 of 3 sweep points failed: {o['points'][2]} (its SLURM job {o['tasks'][2]} "
        "ended without a result (JobState=CANCELLED"
    ), o["output"]
    assert (o["points"][2] / "error.txt").read_text().startswith(f"its SLURM job {o['tasks'][2]} ended")
    assert o["report"].returncode == 0, o["report"].stderr
    for seed in (0, 1, 2):
        assert f"trainer.seed={seed}" in o["report"].stdout


@scenario("submitit_point_fails")
def test_a_submitit_point_whose_job_raises_is_counted_with_its_error_and_the_other_point_trains(
    scenarios, version
):
    o = outcome(scenarios, "submitit_point_fails", version)
    failed, trained = o["points"][11], o["points"][2]
    assert failed is not None and trained is not None, o["output"]
    assert o["rc"] == 2, o["output"]
    assert read_json(trained / "final.json")["epochs"] == 1
    assert not (failed / "final.json").exists()
    # the reason the job wrote on its node, not the launcher's "ended without a result": the job
    # ended with Hydra's FAILED return in submitit's result file, which the launcher read
    reason = (failed / "error.txt").read_text()
    assert reason.startswith("data.subset.classes=11 must be between 1 and the 10 classes"), reason
    last = o["output"].strip().splitlines()[-1]
    assert last.startswith(
        f"resnet-repro: error: 1 of 2 sweep points failed: {failed} (data.subset.classes=11 "
    ), o["output"]


@scenario("preempt")
def test_preempt_by_a_high_priority_partition_requeues_the_job_and_it_completes_in_the_same_directory(
    scenarios, version
):
    o = outcome(scenarios, "preempt", version)
    assert o["high"]["JobState"] == "COMPLETED", o["high"]
    assert "DUE TO PREEMPTION" in o["whole_log"], o["log"]
    assert o["info"]["JobState"] == "COMPLETED", o["log"]
    assert o["info"]["Restarts"] == "1"
    assert read_json(o["run_dir"] / "final.json")["epochs"] == 4
    assert (o["run_dir"] / "train.log").read_text().count("resumed from") == 1
    assert sorted(p.name for p in o["run_dir"].parent.iterdir()) == [o["run_dir"].name]


@scenario("two_node")
def test_two_node_job_runs_the_multinode_script_with_one_rank_per_node_and_master_addr_across_hosts(
    scenarios, version
):
    o = outcome(scenarios, "two_node", version)
    assert o["info"]["JobState"] == "COMPLETED", o["log"]
    assert o["info"]["NodeList"] == "node[1-2]"
    run = read_json(o["run_dir"] / "run.json")
    # rank 1 on node2 reached rank 0 at node1's address: each node resolves the other's host name
    # (the hosts file of its own mount namespace), over the bridge between their network namespaces
    assert run["derived"]["world_size"] == 2
    assert read_json(o["run_dir"] / "final.json")["num_samples"] == 360  # every val image once


@scenario("controller")
def test_controller_down_when_sigterm_arrives_means_no_requeue_a_non_zero_exit_and_the_resume_command(
    scenarios, version
):
    o = outcome(scenarios, "controller", version)
    assert o["info"]["JobState"] == "FAILED", o["log"]  # the batch script's exit status is non-zero
    assert o["info"]["ExitCode"] != "0:0"
    assert o["later"]["JobState"] == "FAILED" and o["later"]["Restarts"] == "0"
    # decided within the ~10 s limit on scontrol (not two 60 s waits), well inside KillWait
    assert o["exit_s"] < 100
    exits = [line for line in o["log"].splitlines() if "task 0: Exited with exit code" in line]
    assert exits and not exits[-1].endswith(" 0"), o["log"]
    resume = [line for line in o["log"].splitlines() if RESUME_COMMAND in line]
    assert resume and str(o["run_dir"].name) in resume[-1], o["log"]
    assert "unknown" in resume[-1], resume[-1]
    assert (o["run_dir"] / "checkpoints" / "last.pt").is_file()
    assert not (o["run_dir"] / "final.json").exists()
    if o["preempted"] is not None:
        assert o["preempted"]["requeued"] is False


@scenario("node_failure")
def test_node_failure_without_a_signal_resumes_from_the_periodic_checkpoint_after_the_requeue(
    scenarios, version
):
    o = outcome(scenarios, "node_failure", version)
    assert o["failed"]["JobState"] == "FAILED", o["log"]  # the killed task fails the job
    assert o["requeue"].returncode == 0, o["requeue"].stderr
    assert o["preempted"] is None  # no signal: nothing was recorded on the way out
    assert o["info"]["JobState"] == "COMPLETED", o["log"]
    assert o["info"]["Restarts"] == "1"
    assert read_json(o["run_dir"] / "final.json")["epochs"] == 1
    train_log = (o["run_dir"] / "train.log").read_text()
    resumed = [line for line in train_log.splitlines() if "resumed from" in line]
    assert len(resumed) == 1, train_log
    assert o["periodic"], "epoch 1 ended before the kill: the scenario did not test a periodic checkpoint"
    # "epoch 1, step S (S into the epoch)": inside the epoch, from the periodic checkpoint
    into = int(resumed[0].split("(")[-1].split()[0])
    assert 0 < into < 40, resumed[0]


@scenario("array_throttled")
def test_throttled_array_task_0_cancelled_is_read_from_its_own_record_and_not_requeued(scenarios, version):
    o = outcome(scenarios, "array_throttled", version)
    assert o["cancelled"].returncode == 0, o["cancelled"].stderr
    assert o["preempted"]["requeued"] is False, o["log"]
    assert o["preempted"]["slurm_job"] == f"{o['job']}_0"
    assert "no sign of a time limit or preemption" in o["preempted"]["why"], o["preempted"]
    assert o["info"]["JobState"] == "CANCELLED" and o["info"]["Restarts"] == "0", o["info"]


@scenario("multi_rank_warning")
def test_multi_rank_warning_on_one_rank_only_is_agreed_requeued_and_the_job_completes(scenarios, version):
    o = outcome(scenarios, "multi_rank_warning", version)
    assert o["preempted"] is not None, o["log"]
    assert o["preempted"]["signal"] == "SIGUSR1" and o["preempted"]["requeued"] is True, said(o["preempted"])
    assert o["info"]["JobState"] == "COMPLETED" and o["info"]["Restarts"] == "1", o["log"]
    assert read_json(o["run_dir"] / "final.json")["epochs"] == 3


@scenario("multi_rank_stop")
def test_multi_rank_plain_signal_on_one_rank_stops_with_the_resume_line_under_kill_on_bad_exit(
    scenarios, version
):
    o = outcome(scenarios, "multi_rank_stop", version)
    preempted = read_json(o["run_dir"] / "preempted.json")
    assert preempted["signal"] == "SIGTERM" and preempted["requeued"] is False, preempted
    assert RESUME_COMMAND in preempted["resume"], preempted
    assert "to resume:" in o["log"] and RESUME_COMMAND in o["log"], o["log"]
    assert o["info"]["JobState"] == "FAILED" and o["info"]["ExitCode"] != "0:0", o["info"]


@scenario("no_requeue")
def test_no_requeue_job_warned_of_its_time_limit_stops_says_why_and_prints_the_resume_command(
    scenarios, version
):
    o = outcome(scenarios, "no_requeue", version)
    assert o["preempted"] is not None and o["preempted"]["requeued"] is False, o["log"]
    assert "the requeue failed" in o["preempted"]["why"], o["preempted"]
    assert RESUME_COMMAND in o["preempted"]["resume"] and "to resume:" in o["log"]
    assert o["info"]["Restarts"] == "0" and o["later"]["JobState"] == "FAILED", o["later"]


@scenario("salloc")
def test_salloc_and_srun_without_a_batch_script_train_to_the_end(scenarios, version):
    o = outcome(scenarios, "salloc", version)
    assert o["proc"].returncode == 0, o["proc"].stdout[-3000:] + o["proc"].stderr[-3000:]
    assert read_json(o["run_dir"] / "final.json")["epochs"] == 1


@scenario("grace_cancel")
def test_grace_preemption_in_cancel_mode_checkpoints_first_and_is_not_requeued_against_slurms_cancel(
    scenarios, version
):
    o = outcome(scenarios, "grace_cancel", version)
    assert o["preempted"]["requeued"] is False and "PreemptMode=CANCEL" in o["preempted"]["why"], o[
        "preempted"
    ]
    assert RESUME_COMMAND in o["preempted"]["resume"], o["preempted"]
    assert o["info"]["Restarts"] == "0" and o["later"]["JobState"] != "PENDING", o["later"]
    assert o["saved"] > 0 and "to resume:" in o["log"], o["log"]


@scenario("grace_requeue")
def test_grace_preemption_in_requeue_mode_checkpoints_requeues_and_the_job_completes(scenarios, version):
    o = outcome(scenarios, "grace_requeue", version)
    # saved, then waited for SLURM to end the job at the grace's end: SLURM requeued it
    assert o["preempted"]["requeued"] == "by SLURM" and "PreemptMode=REQUEUE" in o["preempted"]["why"]
    assert o["info"]["JobState"] == "COMPLETED" and int(o["info"]["Restarts"]) >= 1, o["log"]
    assert read_json(o["run_dir"] / "final.json")["epochs"] == 4
    # 22.05 requeues it once; 25.11 (seen on this cluster) once more after the rerun completed,
    # whatever the run did (its own requeue or none): that last start resumes at the end and trains
    # nothing
    log = (o["run_dir"] / "train.log").read_text()
    assert log.count("resumed from") == int(o["info"]["Restarts"]), log[-2000:]


@scenario("batch_nproc")
def test_batch_nproc_workers_get_the_b_usr1_warning_requeue_resume_and_a_cancel_stops_with_the_resume_line(
    scenarios, version
):
    o = outcome(scenarios, "batch_nproc", version)
    assert o["warned"] is not None, o["whole_log"][-4000:]
    assert o["warned"]["signal"] == "SIGUSR1" and o["warned"]["requeued"] is True, said(o["warned"], o["cut"])
    assert int(o["requeued"]["Restarts"]) == 1, o["requeued"]
    assert "resumed from" in (o["run_dir"] / "train.log").read_text()
    # the cancel: every process of the job got SIGTERM; the workers saved, did not requeue
    assert o["preempted"]["signal"] == "SIGTERM" and o["preempted"]["requeued"] is False, o["preempted"]
    assert RESUME_COMMAND in o["preempted"]["resume"] and "to resume:" in o["log"], o["log"]
    assert o["later"]["JobState"] == "CANCELLED" and o["later"]["Restarts"] == "1", o["later"]
    assert "Traceback" not in o["whole_log"], o["whole_log"][-4000:]
    assert "started by the batch script through" not in o["whole_log"]  # exec: no shell in between
