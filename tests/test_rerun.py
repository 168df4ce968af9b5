"""Outside SLURM the same `resnet-repro train` command run again continues its run: after a stop
(SIGTERM), after a crash (SIGKILL), or after a reboot (the same thing to the run directory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resnet_repro.cluster.preemption import EXIT_NOT_REQUEUED
from resnet_repro.config import compose

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def train_command(demo_root: Path, *extra: str) -> list[str]:
    """A tiny demo run with no hydra.run.dir: its directory is runs/demo/<its own id>."""
    return [
        sys.executable,
        "-m",
        "resnet_repro",
        "train",
        f"data.root={demo_root}",
        "trainer.epochs=3",
        "trainer.batch_size=16",
        "trainer.max_steps_per_epoch=2",
        "data.max_eval_images=40",
        "schedule.milestones=[2]",
        "logging.progress=false",
        "logging.tensorboard=false",
        *extra,
    ]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def start_and_interrupt(command: list[str], cwd: Path, sig: signal.Signals) -> subprocess.CompletedProcess:
    """Start `command`, send `sig` once the first epoch's checkpoint exists, wait for the end."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log = cwd / f"{sig.name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not list(cwd.glob("runs/demo/*/checkpoints/last.pt")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=600)
    return subprocess.CompletedProcess(command, proc.returncode, log.read_text(), "")


def the_run_directory(cwd: Path) -> Path:
    (run_dir,) = (cwd / "runs" / "demo").iterdir()  # one directory: the rerun found the first
    return run_dir


@pytest.mark.parametrize(
    ("sig", "workers"),
    [(signal.SIGTERM, 1), (signal.SIGKILL, 1), (signal.SIGTERM, 2)],
    ids=["stopped", "crashed", "stopped-launcher-of-2-workers"],
)
def test_the_same_command_after_a_stop_or_a_crash_resumes_the_same_run(
    demo_root: Path, tmp_path: Path, sig, workers
):
    # with trainer.nproc=2 the signal reaches the launcher only (as in an sbatch script's batch
    # step): torch's agent passes it on, the workers save, and the launcher says how to resume
    command = train_command(demo_root, *([f"trainer.nproc={workers}"] if workers > 1 else []))
    first = start_and_interrupt(command, tmp_path, sig)
    run_dir = the_run_directory(tmp_path)
    assert not (run_dir / "final.json").exists()
    if sig == signal.SIGTERM:  # not requeued: a non-zero exit and the command that continues the run
        assert first.returncode == EXIT_NOT_REQUEUED, first.stdout[-3000:]
        assert f"hydra.run.dir={run_dir}" in first.stdout and "Traceback" not in first.stdout, first.stdout[
            -3000:
        ]

    again = run(command, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {run_dir}/checkpoints/last.pt" in again.stdout + again.stderr
    assert the_run_directory(tmp_path) == run_dir
    final = json.loads((run_dir / "final.json").read_text())
    assert final["epochs_run"] == 3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["epoch"] for r in rows if r["split"] == "train"} == {1, 2, 3}

    if (
        sig == signal.SIGTERM and workers == 1
    ):  # trainer.resume=never starts afresh, in a directory of its own
        never = ["trainer.resume=never", "trainer.epochs=2", "trainer.max_steps_per_epoch=1"]
        fresh = run([*command, *never], tmp_path)
        assert fresh.returncode == 0, fresh.stderr[-3000:]
        assert "resumed from" not in fresh.stdout + fresh.stderr
        assert len(list((tmp_path / "runs" / "demo").iterdir())) == 2


def test_a_rerun_id_follows_the_runs_identity_not_its_run_control():
    from resnet_repro.training.resume import rerun_id

    def rid(*overrides: str) -> str:
        return rerun_id(compose(["data.root=/data/demo", *overrides]))

    same = rid()
    assert same.startswith("cfg-") and rid("logging.progress=false", "data.num_threads=1") == same
    assert rid("data.root=/elsewhere", "trainer.epochs=12") == same  # a moved data set, a longer run
    assert len({same, rid("trainer.seed=1"), rid("optim.lr_per_256=0.3"), rid("experiment=he2016")}) == 4


def test_runs_with_another_max_norm_or_early_stop_do_not_share_a_directory():
    """`train` then `train stabilizer.max_norm=2` are two runs (README's results table compares
    them): the second used to resume the finished first one, report its unclipped numbers as the
    clipped run's and overwrite its config.yaml. Both settings may still change on an explicit
    resume (hydra.run.dir=...); a run without them keeps the directory name it always had."""
    from resnet_repro.training.resume import rerun_id, resume_identity

    def rid(*overrides: str) -> str:
        return rerun_id(compose(["data.root=/data/demo", *overrides]))

    ids = {
        rid(),
        rid("stabilizer.max_norm=2"),
        rid("stabilizer.max_norm=5"),
        rid("stabilizer.early_stop.patience=3", "data.holdout.size=100"),
        rid("data.holdout.size=100"),
    }
    assert len(ids) == 5
    plain = resume_identity(compose(["data.root=/data/demo"]))
    assert "max_norm" not in plain and "early_stop" not in plain


def test_a_smoke_run_capped_in_steps_does_not_share_the_full_runs_directory():
    """`train ... trainer.max_steps_per_epoch=10` then the same command without the cap: the cap
    changes the steps per epoch, which a resume refuses, so the capped run used to block the full
    one ("belongs to a different job (steps_per_epoch 10 -> 5005)"). Each cap has its own directory;
    an uncapped run's name is what it always was, so runs started before this still resume."""
    from resnet_repro.training.resume import rerun_id, resume_identity

    def rid(*overrides: str) -> str:
        return rerun_id(compose(["data.root=/data/demo", *overrides]))

    assert len({rid(), rid("trainer.max_steps_per_epoch=10"), rid("trainer.max_steps_per_epoch=20")}) == 3
    assert rid("trainer.max_steps_per_epoch=10") == rid("trainer.max_steps_per_epoch=10", "trainer.epochs=3")
    assert "max_steps_per_epoch" not in resume_identity(compose(["data.root=/data/demo"]))


def test_a_checkpoint_is_the_run_directorys_own_through_a_link_to_scratch_storage(tmp_path: Path):
    """checkpoints/ as a link to scratch storage is the run's own folder (its rows and events are
    the run's history); another run's checkpoint, or a path that is gone, is not."""
    from resnet_repro.training.train import own_checkpoint

    scratch, run, other = tmp_path / "scratch" / "ck", tmp_path / "run", tmp_path / "other"
    scratch.mkdir(parents=True)
    run.mkdir()
    (run / "checkpoints").symlink_to(scratch)
    (other / "checkpoints").mkdir(parents=True)
    assert own_checkpoint(run / "checkpoints" / "last.pt", run)
    assert own_checkpoint(scratch / "epoch_0003.pt", run)
    assert own_checkpoint(Path(os.path.relpath(run, Path.cwd())) / "checkpoints" / "last.pt", run)
    assert not own_checkpoint(other / "checkpoints" / "last.pt", run)
    assert not own_checkpoint(tmp_path / "gone" / "last.pt", run)
