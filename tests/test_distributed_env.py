"""Who-am-I detection (single / torchrun / SLURM), SLURM node lists, run ids and the preemption flag.

Fast unit tests: no process group is joined; the run-id tests fork one child each (a second
process started in the same second), nothing else starts a process.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time

import pytest

from resnet_repro.checkpoint import PreemptionWatch
from resnet_repro.cluster.distributed import DistEnv, detect, local_launch_check, local_workers, pick_device
from resnet_repro.commands.hydra_app import run_id
from resnet_repro.config import UserError

TORCHRUN_ENV = {
    "RANK": "5",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "8",
    "MASTER_ADDR": "10.0.0.7",
    "MASTER_PORT": "29411",
}

SRUN_ENV = {
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "3",
    "SLURM_NTASKS": "8",
    "SLURM_STEP_NUM_TASKS": "8",  # set by srun for the tasks of a step, not in the batch shell
    "SLURM_JOB_NODELIST": "gpu[003-004]",
    "SLURM_JOB_ID": "1234",
}


# ------------------------------------------------------------------------------------------ detect
def test_no_launcher_variables_give_a_single_main_process():
    env = detect({})
    assert env == DistEnv()
    assert (env.rank, env.local_rank, env.world_size) == (0, 0, 1)
    assert env.source == "single"
    assert env.is_main
    assert not env.distributed


def test_torchrun_variables_give_rank_world_and_rendezvous_address():
    env = detect(TORCHRUN_ENV)
    assert env.source == "torchrun"
    assert (env.rank, env.local_rank, env.world_size) == (5, 1, 8)
    assert (env.master_addr, env.master_port) == ("10.0.0.7", 29411)
    assert not env.is_main
    assert env.distributed


def test_torchrun_rank_zero_is_the_main_process():
    env = detect({**TORCHRUN_ENV, "RANK": "0", "LOCAL_RANK": "0"})
    assert env.is_main and env.source == "torchrun"


def test_torchrun_wins_over_slurm_variables_inside_an_allocation():
    env = detect({**SRUN_ENV, **TORCHRUN_ENV})
    assert env.source == "torchrun"
    assert (env.rank, env.world_size) == (5, 8)


def test_rank_without_world_size_is_a_user_error_naming_the_missing_variables():
    with pytest.raises(UserError) as excinfo:
        detect({"RANK": "0"})
    message = str(excinfo.value)
    for name in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        assert name in message


def test_missing_only_world_size_names_just_that_variable_as_missing():
    partial = {k: v for k, v in TORCHRUN_ENV.items() if k != "WORLD_SIZE"}
    with pytest.raises(UserError, match="WORLD_SIZE missing"):
        detect(partial)


def test_master_addr_and_port_alone_are_a_single_process_not_an_error():
    env = detect({"MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29411"})
    assert env.source == "single"
    assert env.world_size == 1 and env.is_main


def test_srun_task_reads_rank_from_slurm_and_derives_address_and_port():
    env = detect(SRUN_ENV)
    assert env.source == "slurm"
    assert (env.rank, env.local_rank, env.world_size) == (3, 3, 8)
    assert env.master_addr == "gpu003"
    step = int(SRUN_ENV.get("SLURM_STEP_ID", "0"))
    assert env.master_port == 20000 + (1234 * 97 + step) % 12000  # job and step: one port per step
    assert not env.is_main


def test_srun_port_stays_below_linuxs_ephemeral_range_for_every_job_and_step():
    """Linux hands out 32768-60999 to outgoing connections (ip_local_port_range): a rendezvous port
    there may already be taken on rank 0's node, and its store would fail to bind."""
    for job in ("98765", "4294967290", *(str(j) for j in range(1000, 1400))):
        for step in ("0", "1", "7"):
            env = detect({**SRUN_ENV, "SLURM_JOB_ID": job, "SLURM_STEP_ID": step})
            assert 20000 <= env.master_port < 32768


def test_srun_master_addr_and_port_variables_override_the_derived_ones():
    env = detect({**SRUN_ENV, "MASTER_ADDR": "head", "MASTER_PORT": "31000"})
    assert (env.master_addr, env.master_port) == ("head", 31000)


def test_plain_sbatch_shell_with_one_task_is_a_single_process():
    env = detect({**SRUN_ENV, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_TASKS": "1"})
    assert env == DistEnv()


def test_batch_shell_of_an_8_task_job_is_a_single_process_not_rank_0_of_8():
    # sbatch --ntasks-per-node=8: the batch shell carries SLURM_PROCID=0 and SLURM_NTASKS=8 but is
    # no srun step; `make train-imagenet GPUS=8` there must launch its own workers
    shell = {k: v for k, v in SRUN_ENV.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert detect({**shell, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}) == DistEnv()


def test_slurm_procid_without_ntasks_is_a_single_process():
    env = detect({"SLURM_PROCID": "0", "SLURM_JOB_ID": "1234"})
    assert env.source == "single"


def test_srun_without_slurm_localid_is_a_user_error_naming_it():
    partial = {k: v for k, v in SRUN_ENV.items() if k != "SLURM_LOCALID"}
    with pytest.raises(UserError, match="SLURM_LOCALID"):
        detect(partial)


def test_detect_reads_os_environ_by_default(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    assert detect().source == "torchrun"
    assert detect().rank == 5


# ------------------------------------------------------------------------------ rendezvous host
@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("node7", "node7"),
        ("a[1-3,7]", "a1"),
        ("gpu[003-004,010],cpu1", "gpu003"),
        ("gpu[010]", "gpu010"),
        ("cpu1,cpu2", "cpu1"),
    ],
)
def test_srun_rendezvous_host_is_the_first_host_of_the_node_list(nodelist, first):
    assert detect({**SRUN_ENV, "SLURM_JOB_NODELIST": nodelist}).master_addr == first


# ---------------------------------------------------------------------------------------- run_id
RUN_ID_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_STEP_ID",
    "TORCHELASTIC_RUN_ID",
)


@pytest.fixture
def clean_run_id_env(monkeypatch):
    for name in RUN_ID_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_run_id_of_a_slurm_job_is_its_job_id(clean_run_id_env):
    clean_run_id_env.setenv("SLURM_JOB_ID", "42")
    assert run_id() == "slurm-42"


def test_run_id_of_a_slurm_array_task_names_array_and_task(clean_run_id_env):
    clean_run_id_env.setenv("SLURM_ARRAY_JOB_ID", "7")
    clean_run_id_env.setenv("SLURM_ARRAY_TASK_ID", "2")
    clean_run_id_env.setenv("SLURM_JOB_ID", "9")  # SLURM sets a distinct job id per array task too
    assert run_id() == "slurm-7_2"


def test_run_id_tells_later_srun_steps_of_one_allocation_apart(clean_run_id_env):
    # a seed loop of `srun` steps in one sbatch script: step 0 keeps the job's name, later steps
    # get their own directories (the numbering repeats after a requeue: still the same directories)
    clean_run_id_env.setenv("SLURM_JOB_ID", "42")
    clean_run_id_env.setenv("SLURM_STEP_ID", "0")
    assert run_id() == "slurm-42"
    clean_run_id_env.setenv("SLURM_STEP_ID", "2")
    assert run_id() == "slurm-42.2"
    clean_run_id_env.setenv("SLURM_ARRAY_JOB_ID", "7")
    clean_run_id_env.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert run_id() == "slurm-7_1.2"


def test_run_id_of_the_batch_script_itself_has_no_step(clean_run_id_env):
    clean_run_id_env.setenv("SLURM_JOB_ID", "42")
    clean_run_id_env.setenv("SLURM_STEP_ID", str(0xFFFFFFFE))  # SLURM's number for the batch step
    assert run_id() == "slurm-42"


def test_run_id_under_torchrun_is_the_rendezvous_id(clean_run_id_env):
    clean_run_id_env.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert run_id() == "torchrun-abc"


def test_run_id_slurm_wins_over_torchrun_inside_an_allocation(clean_run_id_env):
    clean_run_id_env.setenv("TORCHELASTIC_RUN_ID", "abc")
    clean_run_id_env.setenv("SLURM_JOB_ID", "42")
    assert run_id() == "slurm-42"


def test_run_id_without_a_launcher_is_the_start_time_and_the_process(clean_run_id_env):
    value = run_id()
    assert re.fullmatch(rf"\d{{4}}-\d{{2}}-\d{{2}}_\d{{2}}-\d{{2}}-\d{{2}}-{os.getpid()}", value), value
    started = value.rsplit("-", 1)[0]
    assert abs(time.mktime(time.strptime(started, "%Y-%m-%d_%H-%M-%S")) - time.time()) < 120


def _run_id_in_a_child() -> str:
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(run_id)


def test_two_commands_started_in_the_same_second_get_two_run_directories(clean_run_id_env):
    # `eval`, `stats`, `rehearse` or `train trainer.resume=never` twice at once from a shell loop:
    # one directory would mix their cli.log and let the second's .hydra/ overwrite the first's
    clean_run_id_env.setattr(time, "strftime", lambda fmt, *a: "2026-12-08_05-10-03")
    assert run_id() != _run_id_in_a_child()


def test_ranks_of_a_torchrun_without_a_rendezvous_id_agree_on_the_start_time(clean_run_id_env):
    # a static rendezvous (torchrun without --rdzv-id or --standalone) names no run: every rank
    # resolves the directory itself and must land in the same one
    clean_run_id_env.setenv("TORCHELASTIC_RUN_ID", "none")
    clean_run_id_env.setattr(time, "strftime", lambda fmt, *a: "2026-12-08_05-10-03")
    assert run_id() == _run_id_in_a_child() == "2026-12-08_05-10-03"


# ------------------------------------------------------------------------------- PreemptionWatch
def test_preemption_watch_records_the_signal_and_restore_puts_back_the_previous_handler():
    seen: list[int] = []

    def previous(signum, frame):
        seen.append(signum)

    original = signal.signal(signal.SIGUSR1, previous)
    try:
        watch = PreemptionWatch(["SIGUSR1"])
        assert watch.received is None
        assert signal.getsignal(signal.SIGUSR1) != previous
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while watch.received is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.received == "SIGUSR1"
        assert seen == []  # the previous handler was not called while watching

        watch.restore()
        assert signal.getsignal(signal.SIGUSR1) is previous
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, original)


def test_preemption_watch_restores_several_signals_to_their_previous_handlers():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        watch = PreemptionWatch(["SIGUSR1", "SIGUSR2"])
        os.kill(os.getpid(), signal.SIGUSR2)
        deadline = time.monotonic() + 5
        while watch.received is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.received == "SIGUSR2"
        watch.restore()
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize(
    ("environ", "nproc", "parent", "warned"),
    [
        ({"SLURM_JOB_ID": "7"}, 2, "bash", True),  # the batch script ran it without exec
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "4294967291"}, 2, "bash", True),  # SLURM's batch step id
        ({"SLURM_JOB_ID": "7"}, 2, "slurmstepd", False),  # exec: the launcher is the batch shell
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"}, 2, "slurmstepd", False),  # one srun task per node
        ({"SLURM_JOB_ID": "7"}, 1, "bash", False),  # no workers to lose
        ({}, 2, "bash", False),  # outside SLURM
    ],
)
def test_workers_started_by_a_batch_shell_are_warned_that_the_b_signal_would_kill_them(
    environ, nproc, parent, warned
):
    from resnet_repro.cluster.slurm import batch_launcher_warning

    warning = batch_launcher_warning(environ, nproc, parent)
    assert (warning is not None) == warned
    if warned:
        assert "exec resnet-repro train" in warning and parent in warning


@pytest.mark.parametrize(
    ("epoch", "epoch_step", "recorded", "words"),
    [
        (1, 7, (2, 7), "epoch 2, step 7 of the epoch"),
        (3, 0, (None, None), "the end of the last epoch, before the final evaluation"),
    ],
)
def test_a_stop_records_the_epoch_counted_from_1_and_every_stop_stays_in_the_history(
    tmp_path, monkeypatch, epoch, epoch_step, recorded, words
):
    """A 3-epoch run stopped in its second epoch, or after its last (before the final evaluation):
    preempted.json names the epoch as the log does, never an epoch 4 of 3; stops.jsonl keeps each stop."""
    import json

    import torch

    from resnet_repro.cluster.preemption import Interrupts, after_preemption
    from resnet_repro.config import RootConfig, TrainerConfig

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    cfg = RootConfig(trainer=TrainerConfig(epochs=3))
    interrupts = Interrupts(cfg, DistEnv(), torch.device("cpu"))
    interrupts.stopped_by = "SIGTERM"
    try:
        for _ in range(2):
            after_preemption(cfg, DistEnv(), tmp_path, interrupts, epoch, epoch_step)
    finally:
        interrupts.close()
    saved = json.loads((tmp_path / "preempted.json").read_text())
    assert (saved["epoch"], saved["epoch_step"], saved["where"]) == (*recorded, words)
    assert saved["epochs_from"] == 1 and saved["requeued"] is False
    history = [json.loads(line) for line in (tmp_path / "stops.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[-1] == saved


# ------------------------------------------------------------------- processes against the machine
def test_more_local_processes_than_visible_gpus_is_refused_before_any_starts():
    # two ranks on one GPU: NCCL refuses them deep inside the first collective
    with pytest.raises(UserError, match=r"trainer.nproc=8 .* 4 visible GPUs"):
        local_launch_check(8, "auto", gpus=4, cores=64)
    with pytest.raises(UserError, match=r"trainer.nproc=2 .* 1 visible GPU\b"):
        local_launch_check(2, "cuda", gpus=1, cores=64)
    assert local_launch_check(4, "auto", gpus=4, cores=2) is None


def test_more_cpu_processes_than_cores_is_a_warning_naming_both():
    warning = local_launch_check(64, "auto", gpus=0, cores=2)
    assert warning is not None and "trainer.nproc=64" in warning and "2 CPU cores" in warning
    assert local_launch_check(64, "cpu", gpus=8, cores=2) is not None  # the GPUs are not used
    assert local_launch_check(2, "auto", gpus=0, cores=2) is None


def test_torchrun_workers_beyond_the_visible_gpus_are_refused_by_name(monkeypatch):
    env = detect({**TORCHRUN_ENV, "LOCAL_WORLD_SIZE": "8"})
    assert env.local_world_size == 8
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    monkeypatch.setattr("torch.cuda.set_device", lambda index: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(UserError, match=r"8 processes on this node .* 4 visible GPUs"):
        pick_device("auto", env)
    # a wrapper that binds each rank to its own GPU (CUDA_VISIBLE_DEVICES=$LOCAL_RANK): one each
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert str(pick_device("auto", env)) == "cuda:0"
    assert detect(TORCHRUN_ENV).local_world_size is None  # an older torchrun: not known, not refused


@pytest.mark.parametrize("environ", [SRUN_ENV, TORCHRUN_ENV], ids=["srun", "torchrun"])
def test_trainer_nproc_under_a_launcher_that_started_the_processes_is_refused(environ):
    """Two nodes with one srun task each and trainer.nproc=4 trained 2 ranks with 4 times the batch
    each: the launcher's processes are the world, and nproc was silently ignored."""
    env = detect(environ)
    with pytest.raises(UserError, match=rf"trainer.nproc=4 .*{env.source}.* {env.world_size} processes"):
        local_workers(4, env)
    assert local_workers(1, env) is False
    assert local_workers(2, DistEnv()) is True and local_workers(1, DistEnv()) is False


@pytest.mark.parametrize(
    ("environ", "warned"),
    [
        ({"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURMD_NODENAME": "gpu01"}, True),
        ({"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1"}, False),
        ({"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_STEP_ID": "0"}, False),  # srun -N1: chosen
        ({"SLURM_JOB_NUM_NODES": "2"}, False),
    ],
)
def test_a_batch_script_that_trains_on_one_node_of_several_is_warned(environ, warned):
    from resnet_repro.cluster.slurm import one_node_of_several_warning

    warning = one_node_of_several_warning(environ)
    assert (warning is not None) == warned
    if warned:
        assert "2 nodes" in warning and "gpu01" in warning and "srun" in warning


def stopped_by_submitits_usr2(run_dir, launcher_handler) -> dict:
    """A run stopped by USR2 with `launcher_handler` (submitit's) installed before ours: the outcome
    of after_preemption, once the handler has run after our checkpoint."""
    import torch

    from resnet_repro.cluster.preemption import Interrupts, after_preemption
    from resnet_repro.config import RootConfig, TrainerConfig

    previous = signal.signal(signal.SIGUSR2, launcher_handler)
    cfg = RootConfig(trainer=TrainerConfig(epochs=3, preempt_signals=["SIGUSR2"]))
    interrupts = Interrupts(cfg, DistEnv(), torch.device("cpu"))
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert interrupts.stop_requested(1)
        return after_preemption(cfg, DistEnv(), run_dir, interrupts, 1, 4)
    finally:
        interrupts.close()
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.parametrize("failure", ["exit 1", "timeout"])
def test_a_launcher_requeue_that_fails_is_a_stop_with_its_reason_not_a_traceback(
    tmp_path, monkeypatch, failure
):
    """submitit's USR2 handler runs `scontrol requeue`, which fails where the job may not requeue
    (JobRequeue=0, --no-requeue): the run says so and stops as a run that was not requeued."""
    import json
    import subprocess

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)

    def checkpoint_and_try_requeue(signum, frame):  # submitit's handler, as its requeue fails
        if failure == "timeout":  # submitit waits 60 s for scontrol
            raise subprocess.TimeoutExpired(["scontrol", "requeue", "42"], 60)
        raise subprocess.CalledProcessError(1, ["scontrol", "requeue", "42"])

    outcome = stopped_by_submitits_usr2(tmp_path, checkpoint_and_try_requeue)
    assert outcome["requeued"] is False and "scontrol" in outcome["why"] and "42" in outcome["why"], outcome
    saved = json.loads((tmp_path / "preempted.json").read_text())
    assert saved["requeued"] is False and saved["why"] == outcome["why"]
    assert [json.loads(line) for line in (tmp_path / "stops.jsonl").read_text().splitlines()] == [saved]


@pytest.mark.parametrize(("restarts", "requeued"), [(1, "by the launcher"), (0, False)])
def test_a_launcher_requeue_ended_by_the_requeues_own_sigterm_counts_where_the_controller_shows_it(
    tmp_path, monkeypatch, restarts, requeued
):
    """submitit's `scontrol requeue` runs inside the job, whose processes the requeue ends with
    SIGTERM: it can die before it exits (-15) after the controller requeued the job. The controller
    decides: Restarts up is the launcher's requeue; no change is a stop that says why."""
    import json
    import subprocess

    from resnet_repro.cluster import slurm

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setattr(slurm, "restart_count", lambda job: 0)
    shown = slurm.JobView(("COMPLETING",), restarts=restarts)
    monkeypatch.setattr(slurm, "query_job", lambda job, *args, **kwargs: (shown, "scontrol show job"))

    def checkpoint_and_try_requeue(signum, frame):  # submitit's handler, its scontrol killed
        raise subprocess.CalledProcessError(-15, ["scontrol", "requeue", "42"])

    outcome = stopped_by_submitits_usr2(tmp_path, checkpoint_and_try_requeue)
    assert outcome["requeued"] == requeued, outcome
    saved = json.loads((tmp_path / "preempted.json").read_text())
    assert saved["requeued"] == requeued and saved["why"] == outcome["why"]
    assert "ended by SIGTERM before it answered" in saved["why"]
    assert [json.loads(line) for line in (tmp_path / "stops.jsonl").read_text().splitlines()] == [saved]


@pytest.mark.parametrize(("stopped_by", "attempts", "timeout_s"), [("SIGUSR1", 2, 10.0), ("SIGTERM", 1, 5.0)])
def test_our_requeue_asks_again_only_after_a_warning_and_fits_a_sigterms_kill_wait(
    tmp_path, monkeypatch, stopped_by, attempts, timeout_s
):
    """After USR1 (120 s before the end in the shipped scripts) a lost requeue may be asked again;
    after a SIGTERM (KillWait: 30 s by default) once, its calls at half the usual timeout."""
    import torch

    from resnet_repro.cluster import slurm
    from resnet_repro.cluster.preemption import Interrupts, after_preemption
    from resnet_repro.config import RootConfig, TrainerConfig

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setattr(slurm, "restart_count", lambda job: 0)
    monkeypatch.setattr(
        slurm, "decide_stop", lambda *args, **kwargs: slurm.StopDecision("requeue", "a time limit")
    )
    asked = []

    def requeue_job(job, restarts_before, attempts=1, timeout_s=slurm.QUERY_TIMEOUT_S):
        asked.append((job, restarts_before, attempts, timeout_s))
        return True, ""

    monkeypatch.setattr(slurm, "requeue_job", requeue_job)
    cfg = RootConfig(trainer=TrainerConfig(epochs=3))
    interrupts = Interrupts(cfg, DistEnv(), torch.device("cpu"))
    interrupts.stopped_by = stopped_by
    try:
        outcome = after_preemption(cfg, DistEnv(), tmp_path, interrupts, 1, 4)
    finally:
        interrupts.close()
    assert outcome["requeued"] is True and asked == [("42", 0, attempts, timeout_s)]


def test_a_stop_slurm_was_to_requeue_but_did_not_end_is_recorded_as_not_requeued(tmp_path, monkeypatch):
    """A GraceTime longer than the wait: the run exits 75 with the resume line, so preempted.json and
    stops.jsonl must not keep saying "requeued by SLURM" (report read it as a requeue)."""
    import json

    import torch

    from resnet_repro.cluster import slurm
    from resnet_repro.cluster.preemption import Interrupts, after_preemption
    from resnet_repro.config import RootConfig, TrainerConfig

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setattr(slurm, "restart_count", lambda job: 0)
    waiting = slurm.StopDecision("requeued", "PreemptMode=REQUEUE: SLURM requeues the job", wait_s=0.01)
    monkeypatch.setattr(slurm, "decide_stop", lambda *args, **kwargs: waiting)
    cfg = RootConfig(trainer=TrainerConfig(epochs=3))
    interrupts = Interrupts(cfg, DistEnv(), torch.device("cpu"))
    interrupts.stopped_by = "SIGTERM"
    try:
        outcome = after_preemption(cfg, DistEnv(), tmp_path, interrupts, 1, 4)
    finally:
        interrupts.close()
    assert outcome["requeued"] is False and "did not end the job" in outcome["why"]
    saved = json.loads((tmp_path / "preempted.json").read_text())
    assert saved["requeued"] is False and saved["why"] == outcome["why"]
    assert [json.loads(line) for line in (tmp_path / "stops.jsonl").read_text().splitlines()] == [saved]


def test_stats_under_srun_with_trainer_nproc_is_refused_as_train_is(tmp_path, monkeypatch, capsys):
    """`stats` shares the pass over trainer.nproc processes as `train` does: under srun the same
    refusal, not trainer.nproc silently ignored."""
    import logging

    from resnet_repro.cli import main

    for key, value in SRUN_ENV.items():
        monkeypatch.setenv(key, value)
    # a rank other than 0 runs with Hydra's logging 'disabled' (disable_existing_loggers): this
    # process's loggers, those made during the call too, are the next tests' as they were
    loggers = logging.root.manager.loggerDict
    before = {name: logger.disabled for name, logger in loggers.items() if isinstance(logger, logging.Logger)}
    try:
        with pytest.raises(SystemExit) as e:
            main(["stats", "data.root=/nonexistent", "trainer.nproc=4", f"hydra.run.dir={tmp_path}"])
    finally:
        for name, logger in list(loggers.items()):
            if isinstance(logger, logging.Logger):
                logger.disabled = before.get(name, False)
    assert e.value.code == 2
    assert "trainer.nproc=4 under slurm, which started 8 processes itself" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "name", "value"),
    [
        ({**TORCHRUN_ENV, "MASTER_PORT": "abc"}, "MASTER_PORT", "abc"),
        ({**TORCHRUN_ENV, "RANK": "1.5"}, "RANK", "1.5"),
        ({**SRUN_ENV, "MASTER_PORT": "29x"}, "MASTER_PORT", "29x"),
        ({**SRUN_ENV, "SLURM_STEP_NUM_TASKS": "abc"}, "SLURM_STEP_NUM_TASKS", "abc"),
    ],
)
def test_a_launcher_variable_that_is_not_a_number_is_one_line_naming_it(env, name, value):
    said = rf"^{name}='{re.escape(value)}' in the environment is not a whole number"
    with pytest.raises(UserError, match=said):
        detect(env)


def test_a_rank_other_than_0_shows_its_job_config_with_cfg_job(tmp_path, monkeypatch, capsys):
    """Rank 3 of an srun step adds its own Hydra overrides (no .hydra/, no log file): beside the
    user's, not after --cfg job, where Hydra's parser refused them."""
    import logging

    from resnet_repro.cli import main

    for key, value in SRUN_ENV.items():
        monkeypatch.setenv(key, value)
    loggers = logging.root.manager.loggerDict
    before = {name: logger.disabled for name, logger in loggers.items() if isinstance(logger, logging.Logger)}
    try:
        main(["train", "--cfg", "job", "trainer.epochs=2", f"hydra.run.dir={tmp_path}"])
    finally:
        for name, logger in list(loggers.items()):
            if isinstance(logger, logging.Logger):
                logger.disabled = before.get(name, False)
    assert "epochs: 2" in capsys.readouterr().out
