"""A stop acted on before the epoch's evaluation, the resume guard's keys and job shape, the run
directory lock, and a refused directory fsync: in-process, on the demo data."""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import logging
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose, deny_reading

from resnet_repro import checkpoint
from resnet_repro.cluster import slurm
from resnet_repro.cluster.preemption import Interrupts
from resnet_repro.config import DataConfig, ProgressiveConfig, RootConfig, UserError, to_dataclass
from resnet_repro.data import sharding
from resnet_repro.training.resume import (
    LOCK_NAME,
    acquire_run_lock,
    check_job_shape,
    check_resumable,
    release_run_lock,
)
from resnet_repro.training.run_state import TRAINING_KEYS, job_shape
from resnet_repro.training.summary import Derived


def demo_cfg(demo_root: Path, *overrides: str):
    return to_dataclass(
        compose(
            [
                "experiment=demo",
                f"data.root={demo_root}",
                "trainer.epochs=2",
                "trainer.batch_size=16",
                "trainer.max_steps_per_epoch=2",
                "data.max_eval_images=32",
                "logging.progress=false",
                "logging.tensorboard=false",
                "stabilizer.warmup_epochs=0",
                "trainer.preempt_check_steps=1",
                *overrides,
            ]
        )
    )


def rows(run_dir: Path) -> list[tuple[int, str]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["epoch"], r["split"]) for r in map(json.loads, lines)]


@pytest.mark.slow
def test_a_stop_on_the_epochs_last_step_comes_before_its_evaluation_which_the_resume_runs(
    demo_root: Path, tmp_path: Path, monkeypatch
):
    from resnet_repro.training.train import train

    cfg = demo_cfg(demo_root)
    forced: list[int] = []

    def stop_on_first_forced_check(self, step: int, force_check: bool = False) -> bool:
        if force_check:
            forced.append(step)
            self.stopped_by = "SIGTERM"
        return force_check and len(forced) == 1

    with monkeypatch.context() as m:
        m.setattr(Interrupts, "stop_requested", stop_on_first_forced_check)
        stopped = train(cfg, tmp_path)
    assert stopped["preempted"] and stopped["requeued"] is False
    assert forced == [2]  # the epoch's last step, before any evaluation
    assert rows(tmp_path) == []  # the evaluation of epoch 1 was not run before stopping
    resumed = train(cfg, tmp_path)
    assert resumed["epochs_run"] == 2
    assert rows(tmp_path) == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]


@pytest.fixture
def default_sigusr1():
    """SIGUSR1's default action during the test, whatever the process had: a run hands a stop to
    the handler it finds when that is a launcher's own (submitit's), so the outcome depends on it."""
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGUSR1, previous)


def signal_during_last_evaluation(monkeypatch, epochs: int) -> None:
    """SIGUSR1 to this process while the last epoch's evaluation runs (a time-limit warning then)."""
    from resnet_repro.training.run_eval import EvalSets

    real_run, calls = EvalSets.run, []

    def run_and_signal(self, net):
        calls.append(1)
        if len(calls) == epochs:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_run(self, net)

    monkeypatch.setattr(EvalSets, "run", run_and_signal)


@pytest.mark.slow
def test_a_signal_in_the_last_epoch_stops_before_a_long_final_evaluation_which_the_resume_runs(
    demo_root: Path, tmp_path: Path, monkeypatch, default_sigusr1
):
    from resnet_repro.training.train import train

    cfg = demo_cfg(demo_root, "eval.protocol=ten_crop")
    with monkeypatch.context() as m:
        signal_during_last_evaluation(m, epochs=2)
        stopped = train(cfg, tmp_path)
    assert stopped["preempted"] and stopped["requeued"] is False, stopped
    assert json.loads((tmp_path / "preempted.json").read_text())["signal"] == "SIGUSR1"
    assert not (tmp_path / "final.json").exists()
    resumed = train(cfg, tmp_path)
    assert resumed["epochs_run"] == 2 and resumed["protocol"] == "ten_crop", resumed
    assert json.loads((tmp_path / "final.json").read_text())["protocol"] == "ten_crop"


@pytest.mark.slow
def test_after_a_run_that_failed_in_this_process_a_signal_still_stops_the_next_run_unrequeued(
    demo_root: Path, tmp_path: Path, monkeypatch, default_sigusr1
):
    """A local sweep runs its points in one process and goes on after a failed one. The failed run's
    preemption watch, left installed, read as a launcher's own handler to the next run's watch: the
    next run handed the signal to it and said "requeued by the launcher", and nothing requeued."""
    from resnet_repro.training import disk_space
    from resnet_repro.training.train import train

    cfg = demo_cfg(demo_root, "eval.protocol=ten_crop")

    def no_room(run_dir, needed):
        raise UserError(f"{run_dir}: not enough free space for the checkpoints")

    with monkeypatch.context() as m:
        m.setattr(disk_space, "check_free_space", no_room)  # fails once set up, before its epochs
        with pytest.raises(UserError, match="not enough free space"):
            train(cfg, tmp_path / "first")
    with monkeypatch.context() as m:
        signal_during_last_evaluation(m, epochs=2)
        stopped = train(cfg, tmp_path / "next")
    assert stopped["preempted"] and stopped["requeued"] is False, stopped
    assert json.loads((tmp_path / "next" / "preempted.json").read_text())["requeued"] is False


@pytest.mark.slow
def test_a_signal_in_the_last_epoch_of_a_centre_crop_run_lets_it_finish_and_says_so(
    demo_root: Path, tmp_path: Path, monkeypatch, caplog, default_sigusr1
):
    from resnet_repro.training.train import train

    cfg = demo_cfg(demo_root)
    with monkeypatch.context() as m, caplog.at_level("WARNING"):
        signal_during_last_evaluation(m, epochs=2)
        final = train(cfg, tmp_path)
    assert final["epochs_run"] == 2 and (tmp_path / "final.json").exists()
    assert not (tmp_path / "preempted.json").exists()
    assert "SIGUSR1 arrived after the last epoch's training; the run finished first" in caplog.text


# ---------------------------------------------------------------------------------- resume guard


def derived(world_size: int, global_batch: int = 256, steps: int = 10) -> Derived:
    return Derived(world_size, global_batch, 0.1, steps, global_batch * steps, 100, 10, "cpu")


@pytest.mark.parametrize(
    ("section", "change", "key"),
    [
        (
            "data",
            {"progressive": ProgressiveConfig(start_size=128, end_size=192)},
            "data.progressive.start_size",
        ),
        ("data", {"max_eval_images": 500}, "data.max_eval_images"),
        ("trainer", {"select_on_test": True}, "trainer.select_on_test"),
    ],
)
def test_resume_refuses_a_change_of_what_drives_the_plateau_and_early_stopping(
    section, change, key, tmp_path
):
    run = RootConfig(data=DataConfig(name="demo", root="/a"))
    state = {
        **dict.fromkeys(TRAINING_KEYS, 0),
        "config": dataclasses.asdict(run),
        "job": job_shape(derived(1)),
    }
    changed = dataclasses.replace(run, **{section: dataclasses.replace(getattr(run, section), **change)})
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        check_resumable(state, tmp_path / "last.pt", derived(1), changed)
    anyway = dataclasses.replace(
        changed, trainer=dataclasses.replace(changed.trainer, resume_with_changes=True)
    )
    assert any(
        c.startswith(key + " ") for c in check_resumable(state, tmp_path / "last.pt", derived(1), anyway)
    )


def test_a_world_size_change_with_the_same_global_batch_resumes_with_a_line_saying_so(tmp_path):
    saved = {"job": job_shape(derived(8))}
    line = check_job_shape(saved, tmp_path / "last.pt", derived(4))
    assert line is not None and "world size 8 -> 4" in line and "32 -> 64" in line
    assert check_job_shape(saved, tmp_path / "last.pt", derived(8)) is None
    with pytest.raises(UserError, match="global_batch 256 -> 512"):
        check_job_shape(saved, tmp_path / "last.pt", derived(8, 512, 5))


@pytest.mark.parametrize("skip_steps", [0, 3])
def test_every_global_batch_holds_the_same_images_on_any_world_size(skip_steps: int):
    global_batch, num_images = 24, 250

    def steps(world_size: int) -> list[set[int]]:
        per_rank = [
            sharding.train_indices(
                num_images,
                epoch=5,
                seed=7,
                batch_size=global_batch // world_size,
                rank=r,
                world_size=world_size,
            )[skip_steps * (global_batch // world_size) :].reshape(-1, global_batch // world_size)
            for r in range(world_size)
        ]
        return [set(np.concatenate([rank[s] for rank in per_rank]).tolist()) for s in range(len(per_rank[0]))]

    one = steps(1)
    assert len(one) == num_images // global_batch - skip_steps
    assert steps(2) == one and steps(3) == one and steps(8) == one


def test_checkpoint_fingerprint_tells_apart_another_position_or_other_weights():
    model = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    state = {"model": model, "epoch": 1, "step": 40, "epoch_step": 0}
    assert checkpoint.fingerprint(state) == checkpoint.fingerprint({**state, "model": dict(model)})
    assert checkpoint.fingerprint({**state, "step": 41}) != checkpoint.fingerprint(state)
    other = {**model, "w": model["w"] + 1e-6}
    assert checkpoint.fingerprint({**state, "model": other}) != checkpoint.fingerprint(state)


def test_a_refused_directory_fsync_after_the_rename_warns_once_and_keeps_the_file(
    tmp_path, monkeypatch, caplog
):
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    with caplog.at_level(logging.WARNING, logger="resnet_repro"):
        checkpoint.write_text_atomic(tmp_path / "a.json", "1\n")
        checkpoint.write_text_atomic(tmp_path / "a.json", "2\n")
    assert (tmp_path / "a.json").read_text() == "2\n"
    warnings = [r.message for r in caplog.records if "refused to fsync" in r.message]
    assert len(warnings) == 1 and str(tmp_path) in warnings[0]


# ---------------------------------------------------------------------------------------- lock


def write_lock(run_dir: Path, **holder) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps(holder))


def no_query(job: str):
    raise AssertionError("SLURM was asked")


def test_a_run_directory_held_by_a_live_process_refuses_a_second_writer(tmp_path):
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            write_lock(tmp_path, job=None, host=socket.gethostname(), pid=other.pid)
            with pytest.raises(UserError, match=rf"held by another run \(job None, host .*pid {other.pid}"):
                acquire_run_lock(tmp_path, environ={}, query=no_query)
        finally:
            other.kill()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_and_released_at_the_end(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_lock(tmp_path, job="5", host=socket.gethostname(), pid=dead.pid)
    path = acquire_run_lock(tmp_path, environ={"SLURM_JOB_ID": "6"}, query=no_query)
    assert json.loads(path.read_text()) == {
        "job": "6",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "restarts": 0,
    }
    release_run_lock(path)
    assert not path.exists()


@pytest.mark.parametrize(
    ("states", "answer", "taken"),
    [
        (("RUNNING",), "", False),
        (("COMPLETING",), "", False),
        (("CANCELLED",), "", True),
        (("PENDING",), "", True),  # requeued and waiting: it resumes from last.pt, as this run would
        (None, "`scontrol show job -o` did not answer within 10 s", False),
    ],
)
def test_a_lock_of_a_job_on_another_host_is_stale_only_when_slurm_says_it_no_longer_runs(
    tmp_path, states, answer, taken
):
    write_lock(tmp_path, job="77", host="elsewhere", pid=1)

    def query(job: str):
        assert job == "77"
        return (slurm.JobView(states=states) if states else None), answer

    if taken:
        assert acquire_run_lock(tmp_path, environ={"SLURM_JOB_ID": "78"}, query=query).is_file()
    else:
        with pytest.raises(UserError, match="held by another run"):
            acquire_run_lock(tmp_path, environ={"SLURM_JOB_ID": "78"}, query=query)


def test_the_same_slurm_job_after_a_requeue_takes_its_own_lock_over(tmp_path):
    write_lock(tmp_path, job="77", host="node-before-requeue", pid=1)
    assert acquire_run_lock(tmp_path, environ={"SLURM_JOB_ID": "77"}, query=no_query).is_file()


def test_a_requeued_job_takes_its_lock_over_though_its_old_pid_is_now_a_live_process_here(tmp_path):
    # the requeue lands on the same node, and the pid the job had before now belongs to `sleep`
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            write_lock(tmp_path, job="77", host=socket.gethostname(), pid=other.pid, restarts=0)
            environ = {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"}
            path = acquire_run_lock(tmp_path, environ=environ, query=no_query)
            assert json.loads(path.read_text())["restarts"] == 1
        finally:
            other.kill()


def test_a_second_process_of_the_same_job_start_is_refused_while_the_first_lives(tmp_path):
    # two srun steps of one allocation pointed at one run directory: same job id, same start
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            write_lock(tmp_path, job="77", host=socket.gethostname(), pid=other.pid, restarts=0)
            with pytest.raises(UserError, match="held by another run"):
                acquire_run_lock(tmp_path, environ={"SLURM_JOB_ID": "77"}, query=no_query)
        finally:
            other.kill()


def captured(version: str, *calls: tuple[str, str | None]) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of scontrol calls as captured from a real SLURM
    (tests/assets/slurm/VERSION: NAME.meta.json holds the exit code and stderr, STDOUT the output)."""
    folder = Path(__file__).parent / "assets" / "slurm" / version
    answers = []
    for meta_name, stdout in calls:
        meta = json.loads((folder / f"{meta_name}.meta.json").read_text())
        answers.append((meta["returncode"], (folder / stdout).read_text() if stdout else "", meta["stderr"]))
    return answers


PURGED = {  # what scontrol says of a job the controller has forgotten (MinJobAge), as captured
    "22.05": captured("22.05", ("scontrol_json_unsupported", None), ("purged.txt", "purged.txt")),
    "25.11": captured("25.11", ("purged", "purged.json")),
}


@pytest.mark.parametrize("version", sorted(PURGED))
def test_a_lock_of_a_job_slurm_has_purged_is_taken_over(tmp_path, version):
    answers = iter(PURGED[version])

    def run(args, **kwargs):
        rc, out, err = next(answers)
        return subprocess.CompletedProcess(args, rc, out, err)

    write_lock(tmp_path, job="77", host="elsewhere", pid=1)
    query = functools.partial(slurm.query_job, run=run)
    assert acquire_run_lock(tmp_path, environ={"SLURM_JOB_ID": "78"}, query=query).is_file()


def test_a_lock_from_another_host_without_a_job_is_refused_naming_the_file_to_delete(tmp_path):
    write_lock(tmp_path, job=None, host="elsewhere", pid=1)
    with pytest.raises(UserError, match=f"delete {tmp_path / LOCK_NAME}"):
        acquire_run_lock(tmp_path, environ={}, query=no_query)


@pytest.mark.parametrize("text", ["12345\n", "[1]\n", '"x"\n', "", "{half"])
def test_a_lock_that_is_not_this_tools_record_is_taken_over_as_unreadable_not_a_traceback(tmp_path, text):
    """A bare pid (as many scripts write one), other JSON, an empty or cut file: no holder to check."""
    (tmp_path / LOCK_NAME).write_text(text)
    path = acquire_run_lock(tmp_path, environ={}, query=no_query)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release_run_lock(path)
    assert not path.exists()


def test_a_lock_that_cannot_be_read_is_refused_as_possibly_live(tmp_path, monkeypatch):
    """Its holder may be a live run (a lock this user may not read): taking it over would let two
    runs write one directory."""
    write_lock(tmp_path, job=None, host=socket.gethostname(), pid=os.getpid())
    deny_reading(monkeypatch, lambda path: path.name == LOCK_NAME)
    refused = rf"cannot read the lock {tmp_path / LOCK_NAME} \(Permission denied\)"
    with pytest.raises(UserError, match=refused):
        acquire_run_lock(tmp_path, environ={}, query=no_query)
    assert (tmp_path / LOCK_NAME).exists()


def test_a_lock_that_is_a_folder_is_named_and_a_dangling_link_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()
    with pytest.raises(UserError, match=rf"{tmp_path / LOCK_NAME} is not a file"):
        acquire_run_lock(tmp_path, environ={}, query=no_query)
    (tmp_path / LOCK_NAME).rmdir()
    (tmp_path / LOCK_NAME).symlink_to(tmp_path / "gone")
    path = acquire_run_lock(tmp_path, environ={}, query=no_query)
    assert path.is_file() and not path.is_symlink()


def test_other_ranks_wait_for_rank_0s_resume_line_before_their_non_zero_exit(tmp_path):
    import threading

    from resnet_repro.cluster.preemption import wait_for_resume_line

    path = tmp_path / "preempted.json"
    path.write_text(json.dumps({"signal": "SIGTERM", "requeued": False}))  # after_preemption's first write
    later = threading.Timer(0.3, lambda: path.write_text(json.dumps({"resume": "resnet-repro train ..."})))
    later.start()
    try:
        assert wait_for_resume_line(path, timeout_s=10, poll_s=0.02)
    finally:
        later.cancel()
    path.write_text("{}")
    assert not wait_for_resume_line(path, timeout_s=0.2, poll_s=0.02)  # bounded: a dead rank 0 ends the wait


def test_a_last_pt_link_whose_target_is_gone_is_refused_not_a_fresh_start(tmp_path):
    """checkpoints/ on scratch storage that is unmounted or purged: starting afresh would set the
    run's rows aside and replace the link with a new file; the user is told instead."""
    from resnet_repro.training.resume import resume_path

    cfg = RootConfig()
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.pt"
    last.symlink_to("/nonexistent/scratch/last.pt")
    gone = r"last.pt is a link to /nonexistent/scratch/last.pt, which does not exist"
    with pytest.raises(UserError, match=gone):
        resume_path(cfg, tmp_path)
    last.unlink()
    last.mkdir()
    with pytest.raises(UserError, match=rf"{last} is not a file"):
        resume_path(cfg, tmp_path)
    last.rmdir()
    (tmp_path / "checkpoints").rmdir()
    (tmp_path / "checkpoints").symlink_to("/nonexistent/scratch/run")  # the whole folder linked
    with pytest.raises(UserError, match=r"checkpoints is a link to /nonexistent/scratch/run, which does not"):
        resume_path(cfg, tmp_path)


def test_a_checkpoint_that_cannot_be_read_or_whose_job_record_is_damaged_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    torch.save({"model": {}}, path)
    real_open = open

    def denied(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(UserError, match=rf"checkpoint {path} cannot be read \(Permission denied\)"):
        checkpoint.load(path)
    monkeypatch.setattr("builtins.open", real_open)
    with pytest.raises(UserError, match=r"its job record .* is not readable"):
        check_job_shape({"job": "x"}, path, derived(1))
