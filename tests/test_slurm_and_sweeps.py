"""SLURM batch scripts, the submitit launchers, `make sweep*`, a local multirun and preempt/requeue/resume.

`scontrol` and `srun` are fakes: small shell scripts put first on PATH that log their arguments.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from resnet_repro import checkpoint
from resnet_repro.cluster.preemption import EXIT_NOT_REQUEUED
from resnet_repro.config import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
SBATCH_DIR = REPO_ROOT / "scripts" / "slurm"
SBATCH_SCRIPTS = sorted(SBATCH_DIR.glob("*.sbatch"))
SBATCH_IDS = [p.name for p in SBATCH_SCRIPTS]
PYTHON = sys.executable

# Variables of an enclosing launcher that would change what a child process believes it is
LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without SLURM / torchrun variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in LAUNCHER_VARS}
    env.update(extra)
    return env


def write_fake_tools(bin_dir: Path, log_dir: Path) -> None:
    """Fake `srun` and `scontrol`: each appends its argv (one line per call) to <log_dir>/<tool>.log
    and each argument on its own line to <log_dir>/<tool>.args. `scontrol show hostnames X` prints
    a host name like SLURM would."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("srun", "scontrol"):
        script = bin_dir / tool
        script.write_text(
            "#!/usr/bin/env bash\n"
            f'echo "$*" >> "{log_dir / tool}.log"\n'
            f'printf "%s\\n" "$@" >> "{log_dir / tool}.args"\n'
            + (
                'if [ "$1" = show ] && [ "$2" = hostnames ]; then echo fakehost001; echo fakehost002; fi\n'
                if tool == "scontrol"
                else ""
            )
            + "exit 0\n"
        )
        script.chmod(0o755)


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ---------------------------------------------------------------------------------- sbatch scripts
def test_both_sbatch_scripts_exist():
    assert SBATCH_IDS == ["train_imagenet.sbatch", "train_imagenet_multinode.sbatch"]


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=SBATCH_IDS)
def test_sbatch_script_is_valid_bash(script: Path):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=SBATCH_IDS)
def test_sbatch_script_asks_for_usr1_before_the_time_limit_and_is_requeueable(script: Path):
    lines = script.read_text().splitlines()
    assert "#SBATCH --signal=USR1@120" in lines
    assert "#SBATCH --requeue" in lines


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=SBATCH_IDS)
def test_sbatch_directives_all_come_before_the_first_command(script: Path):
    # sbatch stops reading #SBATCH lines at the first line that is not a comment or blank
    lines = script.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    late = [line for line in lines[first_command:] if line.startswith("#SBATCH")]
    assert late == []
    assert any(line.startswith("#SBATCH") for line in lines[:first_command])


def run_sbatch_script(script: Path, tmp_path: Path, **env_extra: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    write_fake_tools(bin_dir, tmp_path)
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env_extra)
    return subprocess.run(
        ["bash", str(script), "trainer.epochs=1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


SLURM_JOB_ENV = {
    "SLURM_JOB_ID": "77",
    "SLURM_JOB_NODELIST": "node[1-2]",
    "SLURM_NTASKS": "16",
    "SLURM_SUBMIT_DIR": str(REPO_ROOT),
}


def stand_in_entry_point(path: Path) -> Path:
    """An executable where the scripts look for resnet-repro (the fake srun never runs it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=SBATCH_IDS)
def test_sbatch_script_runs_srun_with_the_paper_recipe_and_extra_overrides(script: Path, tmp_path: Path):
    entry = stand_in_entry_point(tmp_path / "venv" / "bin" / "resnet-repro")
    proc = run_sbatch_script(
        script, tmp_path, DATA="/data/imagenet", RESNET_REPRO=str(entry), **SLURM_JOB_ENV
    )
    assert proc.returncode == 0, proc.stderr
    expected = [
        "--kill-on-bad-exit=1",
        str(entry),
        "train",
        "experiment=imagenet_paper",
        "data.root=/data/imagenet",
        "trainer.epochs=1",
    ]
    assert log_lines(tmp_path / "srun.log") == [" ".join(expected)]
    assert log_lines(tmp_path / "srun.args") == expected


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=SBATCH_IDS)
def test_sbatch_script_defaults_to_the_venv_entry_point_of_the_submit_dir(script: Path, tmp_path: Path):
    submit_dir = tmp_path / "checkout"
    stand_in_entry_point(submit_dir / ".venv" / "bin" / "resnet-repro")
    env = {**SLURM_JOB_ENV, "SLURM_SUBMIT_DIR": str(submit_dir)}
    proc = run_sbatch_script(script, tmp_path, DATA="/data/imagenet", **env)
    assert proc.returncode == 0, proc.stderr
    args = log_lines(tmp_path / "srun.args")
    assert args[1] == str(submit_dir / ".venv" / "bin" / "resnet-repro")


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=SBATCH_IDS)
def test_sbatch_script_submitted_outside_the_checkout_fails_once_naming_the_entry_point(
    script: Path, tmp_path: Path
):
    # sbatch from another folder: $SLURM_SUBMIT_DIR/.venv/bin/resnet-repro does not exist. Before,
    # every srun task failed on its own (exit 127); now the batch shell says it once, before srun.
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    env = {**SLURM_JOB_ENV, "SLURM_SUBMIT_DIR": str(elsewhere)}
    proc = run_sbatch_script(script, tmp_path, DATA="/data/imagenet", **env)
    assert proc.returncode == 2
    missing = elsewhere / ".venv" / "bin" / "resnet-repro"
    (line,) = proc.stderr.strip().splitlines()
    said = f"resnet-repro: error: {missing} is not an executable file or a command on the PATH: submit from"
    assert line.startswith(said)
    assert "RESNET_REPRO=" in line
    assert not (tmp_path / "srun.log").exists()  # nothing was launched


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=SBATCH_IDS)
def test_sbatch_script_takes_a_resnet_repro_found_on_the_path(script: Path, tmp_path: Path):
    # RESNET_REPRO=resnet-repro with the tool installed in the job's environment (conda, a module)
    stand_in_entry_point(tmp_path / "bin" / "resnet-repro")
    proc = run_sbatch_script(
        script, tmp_path, DATA="/data/imagenet", RESNET_REPRO="resnet-repro", **SLURM_JOB_ENV
    )
    assert proc.returncode == 0, proc.stderr
    assert log_lines(tmp_path / "srun.args")[1] == "resnet-repro"


@pytest.mark.parametrize("script", SBATCH_SCRIPTS, ids=SBATCH_IDS)
def test_sbatch_script_without_data_fails_with_a_message_about_data(script: Path, tmp_path: Path):
    proc = run_sbatch_script(script, tmp_path, RESNET_REPRO="/fake/resnet-repro", **SLURM_JOB_ENV)
    assert proc.returncode != 0
    assert "DATA" in proc.stderr
    assert not (tmp_path / "srun.log").exists()  # nothing was launched


# ---------------------------------------------------------------------------- launchers and make
def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "resnet_repro", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
    )


def test_slurm_launcher_config_composes_with_one_task_per_gpu_and_the_submitit_target():
    proc = run_cli("train", "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher")
    assert proc.returncode == 0, proc.stderr
    assert "tasks_per_node: 8" in proc.stdout
    launcher = yaml.safe_load(proc.stdout)
    assert launcher["_target_"] == "hydra_plugins.resnet_repro_launchers.sweep_launchers.SlurmSweepLauncher"
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 8
    assert launcher["nodes"] == 1
    assert launcher["partition"] is None


def test_local_launcher_config_composes_with_the_submitit_local_target():
    proc = run_cli("train", "hydra/launcher=local", "--cfg", "hydra", "-p", "hydra.launcher")
    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout)
    assert launcher["_target_"] == "hydra_plugins.resnet_repro_launchers.sweep_launchers.LocalSweepLauncher"
    assert launcher["tasks_per_node"] == 1


def test_the_sweep_launchers_are_the_plugins_own_with_hydras_plugin_registry():
    # Hydra instantiates a launcher only from the hydra_plugins package, after scanning it
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    from resnet_repro.planning.rehearse_checks import runs_elsewhere

    # (Hydra's scan loads the plugin modules afresh: classes compare by name)
    found = {c.__name__: [b.__name__ for b in c.__mro__] for c in Plugins.instance().discover(Launcher)}
    assert {"EachPointOnItsOwn", "SlurmLauncher"} <= set(found["SlurmSweepLauncher"])
    assert {"EachPointOnItsOwn", "LocalLauncher"} <= set(found["LocalSweepLauncher"])
    for target, elsewhere in [
        ("hydra_plugins.resnet_repro_launchers.sweep_launchers.SlurmSweepLauncher", True),
        ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", True),  # the plugin's own
        ("hydra_plugins.resnet_repro_launchers.sweep_launchers.LocalSweepLauncher", False),
        ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", False),
    ]:
        assert runs_elsewhere({"_target_": target}) is elsewhere, target


def answers(*states: str | None):
    """A stand-in for cluster.slurm.query_job answering with `states` in turn (None: the
    controller no longer knows the job), counting the questions."""
    from resnet_repro.cluster.slurm import JobView

    asked = []

    def query(job_id: str):
        state = states[len(asked)]
        asked.append(job_id)
        if state is None:
            return None, f"SLURM does not know job {job_id} (purged or never submitted)"
        return JobView(states=(state,)), "scontrol --json show job"

    return query, asked


@pytest.mark.parametrize(
    ("states", "questions"),
    [
        (["RUNNING", "CANCELLED", "CANCELLED"], 3),
        (["PREEMPTED", "PENDING", "RUNNING", "TIMEOUT", "TIMEOUT"], 5),  # a requeue passes through PREEMPTED
        (["CANCELLED", "PENDING", "FAILED", "FAILED"], 4),
        (["RUNNING", None, None], 3),  # ended long enough ago for the controller to forget it
        (["PREEMPTED"] * 20 + ["PENDING", "RUNNING", "COMPLETED", "COMPLETED"], 24),  # a slow requeue
        (["PREEMPTED"] * 31, 31),  # PreemptMode=CANCEL: an end, once it has lasted 300 s
    ],
    ids=[
        "cancelled",
        "requeued-then-timeout",
        "ended-once-is-not-enough",
        "forgotten",
        "slow-requeue",
        "preempted-for-good",
    ],  # fmt: skip
)
def test_a_points_slurm_job_without_a_result_is_waited_for_until_the_controller_says_twice_it_ended(
    states, questions
):
    from resnet_repro.commands.sweep_launcher import wait_until_ended

    query, asked = answers(*states)
    wait_until_ended("7_1", lambda: False, query=query, sleep=lambda s: None)
    assert asked == ["7_1"] * questions


def test_a_waited_points_slurm_state_is_said_each_time_it_changes_with_its_reason():
    """A point held or pending forever is not waited for in silence: each new state (and reason)
    is said once, not at every poll."""
    from resnet_repro.cluster.slurm import JobView
    from resnet_repro.commands.sweep_launcher import wait_until_ended

    views = [
        JobView(states=("PENDING",), reason="Priority"),
        JobView(states=("PENDING",), reason="Priority"),
        JobView(states=("PENDING",), reason="JobHeldUser"),
        JobView(states=("PENDING",), reason="launch_failed_requeued_held"),  # as `scontrol show job` words it
        JobView(states=("RUNNING",)),
        JobView(states=("RUNNING",)),
        None,
        None,
    ]
    asked, said = [], []

    def query(job_id):
        view = views[len(asked)]
        asked.append(job_id)
        return (view, "scontrol") if view else (None, f"SLURM does not know job {job_id}")

    wait_until_ended("7_1", lambda: False, query=query, sleep=lambda s: None, say=said.append)
    assert said == [
        "SLURM job 7_1: PENDING (Reason=Priority)",
        "SLURM job 7_1: PENDING (Reason=JobHeldUser; it runs only once released: scontrol release 7_1)",
        "SLURM job 7_1: PENDING (Reason=launch_failed_requeued_held; it runs only once released: "
        "scontrol release 7_1)",
        "SLURM job 7_1: RUNNING",
        "SLURM job 7_1: ended (SLURM does not know job 7_1)",
    ]


def test_the_reason_of_a_failed_submitit_call_is_the_exception_line_not_a_log_path():
    from submitit.core.utils import FailedJobError

    from resnet_repro.commands.sweep_launcher import _error_line

    trace = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nValueError: bad point'
    # the message as submitit's Job.exception() words it
    message = (
        f"Job (task=0) failed during processing with trace:\n----------------------\n{trace}\n"
        "----------------------\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'"
        "or at paths:\n  - /s/12_0_0_log.err\n  - /s/12_0_0_log.out"
    )
    assert _error_line(str(FailedJobError(message))) == "ValueError: bad point"


def test_a_points_slurm_job_with_a_result_is_not_asked_about():
    from resnet_repro.commands.sweep_launcher import wait_until_ended

    query, asked = answers()
    wait_until_ended("7_1", lambda: True, query=query, sleep=lambda s: None)
    assert asked == []


def make_dry_run(*args: str) -> str:
    """`make -n ...` in the repo root, with backslash-continued lines joined."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        ["make", "-n", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, env=clean_env()
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace("\\\n", " ")


def test_make_demo_passes_args_to_its_training_run():
    lines = make_dry_run("demo", "ARGS=trainer.epochs=2 stabilizer.max_norm=2").splitlines()
    (train,) = [line for line in lines if " train " in line]
    assert shlex.split(train)[-2:] == ["trainer.epochs=2", "stabilizer.max_norm=2"]


@pytest.mark.parametrize("target", ["demo", "train-imagenet", "sweep", "sweep-slurm"])
def test_a_dollar_in_make_args_is_refused_not_expanded_to_nothing(target):
    # make would turn ${oc.env:USER} into "" before resnet-repro sees it: runs/ instead of runs/<user>
    args = "hydra.run.dir=runs/${oc.env:USER}"
    proc = subprocess.run(
        ["make", "-n", target, "DATA=/d", f"ARGS={args}"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, env=clean_env(),
    )  # fmt: skip
    assert proc.returncode == 2 and "resnet-repro train" not in proc.stdout
    (line,) = proc.stderr.strip().splitlines()
    assert f"ARGS={args}: make would expand its '$'" in line
    # written as make's $$ inside single quotes, the override reaches resnet-repro whole
    (train,) = [ln for ln in make_dry_run(target, "DATA=/d", f"ARGS='{args.replace('$', '$$')}'").splitlines()
                if "resnet-repro train" in ln]  # fmt: skip
    assert shlex.split(train)[-1] == args


def test_make_sweep_slurm_submits_the_weight_decay_by_max_norm_grid_to_the_partition():
    out = make_dry_run("sweep-slurm", "DATA=/d", "PARTITION=gpu")
    command = next(line for line in out.splitlines() if "resnet-repro train -m" in line)
    tokens = shlex.split(command)
    for expected in (
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "data.root=/d",
        "optim.weight_decay=1e-4,5e-5,2e-4",
        "stabilizer.max_norm=null,1,2,5",
    ):
        assert expected in tokens, command


def test_make_sweep_seeds_adds_a_seed_axis_to_the_grid():
    tokens = shlex.split(make_dry_run("sweep", "EXPERIMENT=demo", "SEEDS=3"))
    assert "trainer.seed=0,1,2" in tokens
    one_seed = shlex.split(make_dry_run("sweep", "EXPERIMENT=demo"))
    assert not any(t.startswith("trainer.seed=") for t in one_seed)


@pytest.mark.parametrize("seeds", ["0", "0,1,2", "abc", "1.5", "-2"])
@pytest.mark.parametrize("target", ["sweep", "sweep-slurm"])
def test_make_sweep_refuses_a_seed_count_that_is_not_a_whole_number_before_any_job(target, seeds):
    proc = subprocess.run(
        ["make", "-s", target, "EXPERIMENT=demo", f"SEEDS={seeds}"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        env=clean_env(),
    )
    assert proc.returncode == 2 and "resnet-repro" not in proc.stdout
    said = "expected a whole number of seeds >= 1 (SEEDS=3: seeds 0, 1, 2)"
    assert proc.stdout.strip() == f"error: SEEDS={seeds}: {said}"


def test_make_sweep_keeps_a_value_with_spaces_one_override_and_slurm_takes_gpus_per_job():
    command = make_dry_run("sweep-slurm", "GPUS=4", "DATA=/data/image net", "WD=1e-4, 5e-5", "PARTITION=gpu")
    tokens = shlex.split(next(line for line in command.splitlines() if "resnet-repro train -m" in line))
    assert "data.root=/data/image net" in tokens and "optim.weight_decay=1e-4, 5e-5" in tokens
    assert "hydra.launcher.tasks_per_node=4" in tokens and "hydra.launcher.gpus_per_node=4" in tokens
    assert not any("tasks_per_node" in t for t in shlex.split(make_dry_run("sweep-slurm", "EXPERIMENT=demo")))


def test_make_sweep_slurm_on_the_demo_needs_no_data_folder():
    out = make_dry_run("sweep-slurm", "EXPERIMENT=demo")
    command = next(line for line in out.splitlines() if "resnet-repro train -m" in line)
    assert "experiment=demo" in shlex.split(command)
    assert not any(t.startswith("data.root=") for t in shlex.split(command))


def test_submitit_jobs_are_named_after_the_experiment():
    # resolved against the job's config when the launcher submits (squeue shows "demo": see
    # tests/test_slurm_cluster.py); submitit's default would be the script's name, "cli"
    proc = run_cli(
        "train", "hydra/launcher=slurm", "experiment=demo", "--cfg", "hydra", "-p", "hydra.launcher"
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["name"] == "${name}"


def test_make_sweep_runs_the_same_grid_one_job_after_another():
    out = make_dry_run("sweep", "EXPERIMENT=demo", "WD=1e-4", "MAX_NORM=null,1")
    command = next(line for line in out.splitlines() if "resnet-repro train -m" in line)
    tokens = shlex.split(command)
    assert not any(t.startswith("hydra/launcher=") for t in tokens)  # Hydra's basic launcher: in sequence
    for expected in (
        "experiment=demo",
        "optim.weight_decay=1e-4",
        "stabilizer.max_norm=null,1",
    ):
        assert expected in tokens, command
    assert not any(t.startswith("data.root=") for t in tokens)  # no DATA: the demo's own root


# ----------------------------------------------------------------------------- slow: real runs
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_local_multirun_of_two_ddp_jobs_leaves_one_complete_run_directory_per_sweep_point(
    demo_root: Path, tmp_path: Path
):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        "train",
        "-m",
        "hydra/launcher=local",
        f"data.root={demo_root}",
        "trainer.nproc=2",
        "trainer.batch_size=16",
        "trainer.epochs=1",
        "trainer.max_steps_per_epoch=2",
        "stabilizer.warmup_epochs=0",  # the demo's 1-epoch warm-up must be shorter than the run
        "logging.progress=false",
        "optim.weight_decay=1e-4,5e-4",
        f"hydra.sweep.dir={sweep_dir}",
        env=clean_env(OMP_NUM_THREADS="1"),  # 2 jobs x 2 ranks on a small machine
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    job_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(job_dirs) == 2, [p.name for p in sweep_dir.iterdir()]
    # Hydra's override_dirname: the job's overrides sorted, with 1e-4 written as 0.0001; run-control
    # keys (config.RUN_CONTROL_KEYS: trainer.nproc, data.root, the step cap, the progress bar) are
    # excluded from the name
    for job_dir, wd_text, wd in zip(
        job_dirs, ("optim.weight_decay=0.0001", "optim.weight_decay=0.0005"), (1e-4, 5e-4), strict=True
    ):
        assert job_dir.name == f"{wd_text},stabilizer.warmup_epochs=0,trainer.batch_size=16,trainer.epochs=1"

        for name in ("config.yaml", "run.json", "metrics.jsonl", "final.json", "checkpoints/last.pt"):
            assert (job_dir / name).is_file(), f"{job_dir.name}: {name} missing"
        assert list((job_dir / "tb").glob("events.out.tfevents.*")), f"{job_dir.name}: no tb events"

        config = yaml.safe_load((job_dir / "config.yaml").read_text())
        assert config["optim"]["weight_decay"] == pytest.approx(wd)
        assert config["trainer"]["nproc"] == 2

        run = json.loads((job_dir / "run.json").read_text())
        assert run["derived"]["world_size"] == 2
        assert run["derived"]["global_batch"] == 32
        assert run["derived"]["steps_per_epoch"] == 2

        rows = read_jsonl(job_dir / "metrics.jsonl")
        assert [(r["epoch"], r["split"]) for r in rows] == [(1, "train"), (1, "val")]
        assert rows[1]["num_samples"] == 360  # the whole val split, across both ranks

        final = json.loads((job_dir / "final.json").read_text())
        assert final["epochs"] == 1 and 0.0 <= final["top1"] <= 1.0

        state = checkpoint.load(job_dir / "checkpoints" / "last.pt")
        assert (state["epoch"], state["step"], state["epoch_step"]) == (1, 2, 0)
        assert state["config"]["optim"]["weight_decay"] == pytest.approx(wd)


def handler_installed(pid: int, signum: int) -> bool | None:
    """Whether process `pid` catches `signum` (Linux /proc SigCgt); None where /proc can't tell."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return None


def run_and_preempt(
    args: list[str], env: dict[str, str], run_dir: Path, out_path: Path, delay_s: float
) -> int:
    """Start a training run, send it SIGUSR1 `delay_s` after its signal handlers are in, wait for it.

    Returns the exit code; the run's output goes to `out_path`.
    """
    with open(out_path, "w") as out:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not (run_dir / "run.json").exists():
                assert proc.poll() is None, out_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "training did not start within 300 s"
                time.sleep(0.1)
            # run.json is written just before the signal handlers go in: wait for them, then a bit
            while handler_installed(proc.pid, signal.SIGUSR1) is False and time.monotonic() < deadline:
                assert proc.poll() is None, out_path.read_text()[-3000:]
                time.sleep(0.05)
            time.sleep(delay_s)
            assert proc.poll() is None, "training finished before the signal: " + out_path.read_text()[-3000:]
            proc.send_signal(signal.SIGUSR1)
            return proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def preempt_args(demo_root: Path, run_dir: Path, max_steps: int) -> list[str]:
    return [
        PYTHON,
        "-m",
        "resnet_repro",
        "train",
        f"data.root={demo_root}",
        "trainer.epochs=3",
        "trainer.batch_size=32",
        f"trainer.max_steps_per_epoch={max_steps}",
        "logging.progress=false",
        "trainer.preempt_check_steps=1",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.slow
def test_sigusr1_saves_a_checkpoint_requeues_the_slurm_job_once_and_the_rerun_resumes(
    demo_root: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    bin_dir = tmp_path / "bin"
    write_fake_tools(bin_dir, tmp_path)
    scontrol_log = tmp_path / "scontrol.log"
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    steps_per_epoch = 15
    args = preempt_args(demo_root, run_dir, steps_per_epoch)

    # --- first run: a single process in SLURM job 999 (no SLURM_NTASKS), preempted by USR1
    first_out = tmp_path / "first.out"
    env = clean_env(PATH=path, SLURM_JOB_ID="999", OMP_NUM_THREADS="1")
    rc = run_and_preempt(args, env, run_dir, first_out, delay_s=1.5)
    first_text = first_out.read_text()
    assert rc == 0, first_text[-3000:]

    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert state["epoch_step"] > 0 or state["epoch"] >= 1, {k: state[k] for k in ("epoch", "epoch_step")}
    assert state["epoch"] < 3  # stopped before the end
    assert state["step"] == state["epoch"] * steps_per_epoch + state["epoch_step"]
    preempted = json.loads((run_dir / "preempted.json").read_text())
    assert preempted["requeued"] is True
    assert preempted["signal"] == "SIGUSR1"
    # the epoch in progress counted from 1, as the log line counts it; the checkpoint counts epochs done
    assert preempted["epochs_from"] == 1
    assert (preempted["epoch"], preempted["epoch_step"]) == (state["epoch"] + 1, state["epoch_step"])
    assert f"epoch {preempted['epoch']}, step {preempted['epoch_step']} of the epoch" == preempted["where"]
    # the job's state is asked first (a cancel must not requeue); the fake knows no job: requeue
    assert [line for line in log_lines(scontrol_log) if "requeue" in line] == ["requeue 999"]
    assert not (run_dir / "final.json").exists()
    assert '"preempted"' in first_text  # the CLI's one-line JSON reports the preemption

    # --- second run: the same command in the same run directory resumes and finishes
    second = subprocess.run(
        args,
        cwd=REPO_ROOT,
        env=clean_env(PATH=path, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    second_text = second.stdout + second.stderr
    assert second.returncode == 0, second_text[-3000:]
    assert "resumed from" in second_text
    assert (run_dir / "final.json").is_file()
    final = json.loads((run_dir / "final.json").read_text())
    assert final["epochs"] == 3
    assert not (run_dir / "preempted.json").exists()  # a finished run no longer reports a preemption
    # but its history keeps the stop
    (stop,) = read_jsonl(run_dir / "stops.jsonl")
    assert stop == preempted
    # the unsignalled rerun requeued nothing
    assert [line for line in log_lines(scontrol_log) if "requeue" in line] == ["requeue 999"]

    finished = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert (finished["epoch"], finished["step"], finished["epoch_step"]) == (3, 3 * steps_per_epoch, 0)
    val_epochs = [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "val"]
    assert val_epochs == [1, 2, 3]


@pytest.mark.slow
def test_preemption_on_the_last_step_of_an_epoch_resumes_and_finishes(demo_root: Path, tmp_path: Path):
    # With one step per epoch every preemption lands on an epoch's last step, acted on before the
    # epoch's evaluation (the rerun evaluates it), or during an evaluation (the rerun starts the
    # next epoch): either way every epoch is evaluated exactly once
    run_dir = tmp_path / "run"
    args = preempt_args(demo_root, run_dir, max_steps=1)
    env = clean_env(OMP_NUM_THREADS="1")
    rc = run_and_preempt(args, env, run_dir, tmp_path / "first.out", delay_s=0.2)
    first_text = (tmp_path / "first.out").read_text()
    # not requeued (no SLURM job): a non-zero exit and the exact command that resumes the run
    assert rc == EXIT_NOT_REQUEUED, first_text[-3000:]
    assert f"to resume: resnet-repro train data.root={demo_root} " in first_text
    assert f"hydra.run.dir={run_dir}" in first_text.splitlines()[-1]
    preempted = json.loads((run_dir / "preempted.json").read_text())
    assert preempted["requeued"] is False and preempted["why"] == "not a SLURM job"
    assert preempted["resume"].endswith(f"hydra.run.dir={run_dir}")
    # the epoch counted from 1; none where the stop came after the last epoch, before the final evaluation
    position = (preempted["epoch"], preempted["epoch_step"])
    assert position in {(1, 1), (2, 1), (3, 1), (2, 0), (3, 0), (None, None)}, position

    second = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    second_text = second.stdout + second.stderr
    assert second.returncode == 0, second_text[-3000:]
    assert "resumed from" in second_text
    assert json.loads((run_dir / "final.json").read_text())["epochs"] == 3
    finished = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert (finished["epoch"], finished["step"], finished["epoch_step"]) == (3, 3, 0)
    val_epochs = [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "val"]
    assert val_epochs == [1, 2, 3]


TINY_POINT = (
    "trainer.epochs=1",
    "stabilizer.warmup_epochs=0",
    "trainer.batch_size=16",
    "trainer.max_steps_per_epoch=2",
    "data.max_eval_images=40",
    "schedule.milestones=[]",
    "logging.progress=false",
    "logging.tensorboard=false",
)


def run_tiny_sweep(demo_root: Path, sweep_dir: Path, grid: str) -> subprocess.CompletedProcess:
    """`train -m` over `grid` on the digits, each point a couple of steps, into `sweep_dir`."""
    return run_cli("train", "-m", f"data.root={demo_root}", grid, *TINY_POINT, f"hydra.sweep.dir={sweep_dir}")


def test_a_point_that_fails_as_it_runs_does_not_stop_the_sweep_and_the_sweep_exits_2(
    demo_root: Path, tmp_path: Path
):
    # 11 classes of the demo's 10: valid settings, refused once the data is listed (in the job)
    sweep_dir = tmp_path / "sweep"
    proc = run_tiny_sweep(demo_root, sweep_dir, "data.subset.classes=11,2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    (failed,) = [p.parent for p in sweep_dir.glob("*/error.txt")]
    assert failed.name.startswith("data.subset.classes=11,")
    (finished,) = [p.parent for p in sweep_dir.glob("*/final.json")]  # the point after it trained
    assert finished.name.startswith("data.subset.classes=2,")
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"resnet-repro: error: 1 of 2 sweep points failed: {failed} (data.subset.classes=11 "
    )
    assert f"`resnet-repro report {sweep_dir}` lists them" in last


@pytest.mark.slow
def test_a_point_trained_after_another_in_one_sweep_process_equals_the_same_point_run_alone(
    demo_root: Path, tmp_path: Path
):
    """Hydra's basic launcher trains a local sweep's points one after another in one process: what
    one point leaves in the process (seeds, caches, handlers, the loaders' state) must not reach the
    next one's numbers. The oracle is the same point trained alone in a fresh process."""
    sweep_dir, alone = tmp_path / "sweep", tmp_path / "alone"
    proc = run_tiny_sweep(demo_root, sweep_dir, "optim.weight_decay=5e-4,1e-4")  # in this order
    assert proc.returncode == 0, proc.stderr[-3000:]
    (second,) = [p.parent for p in sweep_dir.glob("optim.weight_decay=0.0001,*/final.json")]
    single = run_cli(
        "train", f"data.root={demo_root}", "optim.weight_decay=1e-4", *TINY_POINT, f"hydra.run.dir={alone}"
    )
    assert single.returncode == 0, single.stderr[-3000:]

    swept, ref = (checkpoint.load(d / "checkpoints" / "last.pt") for d in (second, alone))
    assert swept["step"] == ref["step"] == 2
    differ = [name for name, tensor in ref["model"].items() if not torch.equal(swept["model"][name], tensor)]
    assert not differ, f"weights unlike the point's trained alone: {differ[:5]}"
    final, ref_final = (json.loads((d / "final.json").read_text()) for d in (second, alone))
    assert (final["top1"], final["top5"]) == (ref_final["top1"], ref_final["top5"])


@pytest.mark.slow
def test_a_submitit_point_killed_mid_run_is_counted_at_the_end_and_the_other_point_finishes(
    demo_root: Path, tmp_path: Path
):
    # hydra-submitit-launcher alone raised submitit's UncompletedJobError at the killed point: a
    # traceback, and no count (the SLURM launcher's cancel is tests/test_slurm_cluster.py's)
    sweep_dir = tmp_path / "sweep"
    args = [PYTHON, "-m", "resnet_repro", "train", "-m", "hydra/launcher=local", f"data.root={demo_root}",
            "trainer.epochs=1,400", *TINY_POINT[1:], f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    with open(tmp_path / "stderr", "w") as err:
        sweep = subprocess.Popen(args, cwd=REPO_ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        long_job = None
        while long_job is None and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            logs = sweep_dir.glob(".submitit/*/*_log.out")
            long_job = next((p.parent.name for p in logs if "trainer.epochs=400" in p.read_text()), None)
        assert long_job is not None, "the 400-epoch point never started"
        # the local job id is the pid of submitit's controller; the job runs in its child
        for child in Path(f"/proc/{long_job}/task/{long_job}/children").read_text().split():
            os.kill(int(child), signal.SIGKILL)
        sweep.wait(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    err = (tmp_path / "stderr").read_text()
    assert sweep.returncode == 2, err[-3000:]
    (killed,) = [p.parent for p in sweep_dir.glob("*/error.txt")]
    assert "trainer.epochs=400" in killed.name
    (finished,) = [p.parent for p in sweep_dir.glob("*/final.json")]
    assert finished.name.endswith("trainer.epochs=1")
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"resnet-repro: error: 1 of 2 sweep points failed: {killed} (its job {long_job} ")
    assert "ended without a result" in last and "Traceback" not in err


def test_a_point_stopped_by_a_non_finite_loss_is_a_result_the_sweep_exits_0_and_counts_it(
    demo_root: Path, tmp_path: Path
):
    sweep_dir = tmp_path / "sweep"
    proc = run_tiny_sweep(demo_root, sweep_dir, "optim.lr_per_256=0.1,1e12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (diverged,) = [p.parent for p in sweep_dir.glob("*/nonfinite_report.json")]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"resnet-repro: warning: 1 of 2 sweep points stopped on a non-finite loss: {diverged}; "
        f"`resnet-repro report {sweep_dir}` counts them as diverged"
    )


@pytest.mark.parametrize(
    ("points", "named", "reason"),
    [
        ("optim.weight_decay=1e-4,-1", "sweep point 2 of 2 (optim.weight_decay=-1)", "must be >= 0"),
        ("optim.weight_decay=1e-4,abc", "sweep point 2 of 2 (optim.weight_decay=abc)", "abc"),
        (
            "trainer.epochs=3,1",  # the preset's warm-up of 1 epoch fits the first point only
            "sweep point 2 of 2 (trainer.epochs=1)",
            "must be shorter than trainer.epochs=1",
        ),
    ],
    ids=["out-of-range", "wrong-type", "cross-field"],
)
def test_a_bad_value_in_a_later_sweep_point_is_refused_before_the_first_point_starts(
    demo_root: Path, tmp_path: Path, points: str, named: str, reason: str
):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("train", "-m", f"data.root={demo_root}", points, f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"resnet-repro: error: {named}: ") and line.endswith("; no point was started")
    assert reason in line
    assert not sweep_dir.exists()  # nothing trained, nothing written


def test_a_slurm_sweep_point_whose_batch_the_launchers_tasks_cannot_split_is_refused_before_submission(
    tmp_path: Path,
):
    # submitit's launcher gives each job nodes x tasks_per_node ranks: 4 do not split a batch of 258
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        "train", "-m", "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=4",
        "trainer.global_batch=256,258", "trainer.batch_size=null", f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("resnet-repro: error: sweep point 2 of 2 (trainer.global_batch=258): ")
    assert "trainer.global_batch=258 is not divisible by the world size 4" in line
    assert not sweep_dir.exists()  # no job was submitted


def test_a_sweep_without_its_data_root_is_refused_before_the_first_point_starts(tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(
        "train", "-m", "experiment=imagenet_paper", "optim.weight_decay=1e-4,5e-5",
        f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    # a value every point shares (here, none) is named as every point's, not as the first one's
    assert line.startswith("resnet-repro: error: every sweep point (2): data.root is")
    assert not sweep_dir.exists()


def test_an_interpolation_only_the_cluster_can_resolve_does_not_refuse_a_slurm_sweep(monkeypatch):
    # ${oc.env:...} of a variable the compute node sets: the job resolves it, not the login node
    from resnet_repro.commands import hydra_app
    from resnet_repro.commands.train import _check_sweep_point
    from resnet_repro.config import register_configs

    register_configs()
    monkeypatch.delenv("NODE_LOCAL_SCRATCH", raising=False)
    root = "data.root=${oc.env:NODE_LOCAL_SCRATCH}/imagenet"
    jobs = [["hydra/launcher=slurm", root, f"optim.weight_decay={wd}"] for wd in ("1e-4", "5e-5")]
    hydra_app._check_every_point(jobs, _check_sweep_point)  # no refusal
    local = [[root, f"optim.weight_decay={wd}"] for wd in ("1e-4", "5e-5")]  # this process runs them
    with pytest.raises(UserError, match=r"^every sweep point \(2\): data.root: .*NODE_LOCAL_SCRATCH"):
        hydra_app._check_every_point(local, _check_sweep_point)


@pytest.mark.parametrize(
    ("points", "named"),
    [
        (["-1", "1e-4", "-2"], "sweep point 1 of 3 (optim.weight_decay=-1): optim.weight_decay=-1.0 must"),
        (["-1", "-2", "1e-4"], "sweep point 1 of 3 (optim.weight_decay=-1): optim.weight_decay=-1.0 must"),
        (["1e-4", "1e-4", "-2"], "sweep point 3 of 3 (optim.weight_decay=-2): optim.weight_decay=-2.0 must"),
    ],
    ids=["first-then-good", "first-two-differ", "last"],
)
def test_a_refused_sweep_point_is_named_by_its_own_value(points: list[str], named: str):
    from resnet_repro.commands import hydra_app
    from resnet_repro.commands.train import _check_sweep_point
    from resnet_repro.config import register_configs

    register_configs()
    jobs = [["data.root=/nonexistent", f"optim.weight_decay={wd}"] for wd in points]
    with pytest.raises(UserError) as refused:
        hydra_app._check_every_point(jobs, _check_sweep_point)
    assert str(refused.value).startswith(named) and str(refused.value).endswith("; no point was started")


def test_a_value_every_sweep_point_shares_is_refused_as_every_points():
    # the shared trainer.epochs=1 is shorter than each point's warm-up (point 1 must not take the blame)
    from resnet_repro.commands import hydra_app
    from resnet_repro.commands.train import _check_sweep_point
    from resnet_repro.config import register_configs

    register_configs()
    shared = ["data.root=/nonexistent", "stabilizer=warmup_clip", "trainer.epochs=1"]
    jobs = [[*shared, f"optim.weight_decay={wd}"] for wd in ("1e-4", "5e-5", "2e-4")]
    with pytest.raises(UserError, match=r"^every sweep point \(3\): stabilizer.warmup_epochs=1.0 must be"):
        hydra_app._check_every_point(jobs, _check_sweep_point)


def test_a_point_of_each_experiment_that_fails_is_counted_in_the_experiments_own_sweep_folder(
    demo_root: Path, tmp_path: Path
):
    # the default sweep folder is multiruns/${name}/<time>: a sweep over name= (or experiment=)
    # writes one folder per name, and the count must look in each
    proc = subprocess.run(
        [PYTHON, "-m", "resnet_repro", "train", "-m", f"data.root={demo_root}", "name=first,second",
         "data.subset.classes=11", *TINY_POINT],
        capture_output=True, text=True, cwd=tmp_path, env=clean_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    failed = sorted(p.parent for p in tmp_path.glob("multiruns/*/*/*/error.txt"))
    assert [p.parts[-3] for p in failed] == ["first", "second"]
    last = proc.stderr.strip().splitlines()[-1]
    first = failed[0].relative_to(tmp_path)  # as Hydra names it, from the folder the sweep started in
    assert last.startswith(f"resnet-repro: error: 2 of 2 sweep points failed: e.g. {first} (data.subset")
    sweeps = " ".join(str(p.parent.relative_to(tmp_path)) for p in failed)
    assert last.endswith(f"`resnet-repro report` on each of {sweeps} lists them")


def outcome_of(job_dir: Path) -> str | None:
    from resnet_repro.commands.sweep_outcome import outcome

    return outcome(job_dir)


def write_job(job_dir: Path, *files: str) -> None:
    """`files` written one after another, each at least a millisecond after the one before."""
    job_dir.mkdir(parents=True, exist_ok=True)
    for name in files:
        path = job_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n" if name.endswith(".json") else "a reason\n")
        time.sleep(0.01)


def test_only_a_reason_written_after_the_points_launch_counts_in_a_reused_sweep_folder(tmp_path: Path):
    launch = ".hydra/overrides.yaml"  # Hydra writes it when the point starts (this launch)
    # failed before, finished now: the old reason stays in the folder but does not count
    write_job(tmp_path / "a", "error.txt", launch, "final.json")
    assert outcome_of(tmp_path / "a") is None
    # failed now
    write_job(tmp_path / "b", launch, "error.txt")
    assert outcome_of(tmp_path / "b") == "failed"
    # diverged now
    write_job(tmp_path / "c", launch, "nonfinite_report.json", "error.txt")
    assert outcome_of(tmp_path / "c") == "diverged"
    # diverged in an earlier sweep, failed on something else now: failed, not diverged
    write_job(tmp_path / "d", "nonfinite_report.json", launch, "error.txt")
    assert outcome_of(tmp_path / "d") == "failed"
    # a refused resume keeps the run's own (older) Hydra files; its reason is newer: counted
    write_job(tmp_path / "e", launch, "final.json", "error.txt")
    assert outcome_of(tmp_path / "e") == "failed"


def sweep_folders(*overrides: str):
    """sweep_outcome.job_dirs for the master config Hydra composes for `train -m <overrides>`."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from resnet_repro.commands.sweep_outcome import job_dirs
    from resnet_repro.config import CONF_DIR, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            loader = GlobalHydra.instance().config_loader()
            master = loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)
            return job_dirs(master)
    finally:
        GlobalHydra.instance().clear()


def test_the_count_finds_each_points_folder_under_either_launcher_and_gives_up_on_a_slurm_job_id():
    grid = ("name=a,b", "optim.weight_decay=1e-4,-1", "hydra.sweep.dir=/s/${name}")
    expected = [
        (Path(f"/s/{name}"), Path(f"/s/{name}/name={name},optim.weight_decay={wd}"))
        for name in "ab"
        for wd in ("0.0001", "-1")
    ]
    assert sweep_folders(*grid) == expected  # the basic launcher's folders (a real sweep: tests above)
    assert sweep_folders("hydra/launcher=slurm", *grid) == expected
    # a subdir named after the job number is the launch order; after SLURM's job id, known in the job only
    assert [d.name for _, d in sweep_folders(*grid, "hydra.sweep.subdir=${hydra.job.num}")] == list("0123")
    assert sweep_folders("hydra/launcher=slurm", *grid, "hydra.sweep.subdir=${hydra.job.id}") is None
