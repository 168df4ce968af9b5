"""Checkpoints: atomic writes, loads that refuse code, and exact RNG state round trips."""

from __future__ import annotations

import os
import pickle
import random
import shlex

import numpy as np
import pytest
import torch

from resnet_repro import checkpoint
from resnet_repro.config import UserError


def _sample_state() -> dict:
    return {
        "model": {
            "conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
            "bn.n": torch.tensor(7),
        },
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3, dtype=torch.float64)}}, "lr": 0.1},
        "epoch": 12,
        "step": 3456,
        "name": "imagenet_paper",
        "milestones": [30, 60],
        "shape": (224, 224),
        "best": None,
        "finished": False,
    }


class _RunsAShellCommand:
    """Unpickling this would run a shell command (here: create a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def test_save_atomic_then_load_round_trips_tensors_and_plain_data(tmp_path):
    state = _sample_state()
    path = tmp_path / "sub" / "last.pt"  # the folder is created
    checkpoint.save_atomic(state, path)

    loaded = checkpoint.load(path)

    assert loaded.keys() == state.keys()
    torch.testing.assert_close(loaded["model"]["conv.weight"], state["model"]["conv.weight"])
    assert loaded["model"]["bn.n"].item() == 7
    got_buf = loaded["optimizer"]["state"][0]["momentum_buffer"]
    assert got_buf.dtype == torch.float64
    torch.testing.assert_close(got_buf, torch.ones(3, dtype=torch.float64))
    for key in ("epoch", "step", "name", "milestones", "shape", "best", "finished"):
        assert loaded[key] == state[key], key
    assert loaded["optimizer"]["lr"] == 0.1


def test_save_atomic_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic(_sample_state(), path)
    checkpoint.save_atomic({"epoch": 13}, path)  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert checkpoint.load(path) == {"epoch": 13}


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch, error):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1, "w": torch.ones(4)}, path)
    before = path.read_bytes()
    calls = []

    def save_then_fail(obj, f, *args, **kwargs):
        calls.append(obj)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise error

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fail)
    with pytest.raises(type(error)):
        checkpoint.save_atomic({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()

    assert calls, "the patched torch.save was not used"
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    state = checkpoint.load(path)
    assert state["epoch"] == 1
    torch.testing.assert_close(state["w"], torch.ones(4))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "payload": _RunsAShellCommand(marker)}, path)

    with pytest.raises(UserError, match="refused") as info:
        checkpoint.load(path)

    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"epoch": 1, "payload": _RunsAShellCommand(marker)}, f)

    with pytest.raises(UserError) as info:
        checkpoint.load(path)

    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"hello\n", b"\xff\xd8\xff\xe0 a JPEG", b""])
def test_a_file_that_is_no_checkpoint_at_all_is_named_as_such_not_as_holding_code(tmp_path, content):
    """A text file, an image or an empty file given as checkpoint= is not a checkpoint that holds
    code: the message says what torch.save writes instead of blaming objects the file does not hold."""
    path = tmp_path / "notes.pt"
    path.write_bytes(content)

    with pytest.raises(UserError) as info:
        checkpoint.load(path)

    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "is not a PyTorch checkpoint" in message and "objects other than" not in message


def test_payload_really_would_run_when_unpickled_unsafely(tmp_path):
    """Guards the two tests above: the marker is what an unsafe load creates."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_RunsAShellCommand(marker)))
    assert marker.exists()


def test_load_of_a_missing_file_is_a_user_error_naming_it(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(UserError, match="nope.pt"):
        checkpoint.load(path)


CORRUPT_CONTENTS = {
    "empty": b"",
    "zeros": bytes(1024),
    "html-error-page": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
    "plain-text": b"this is not a checkpoint" * 10,
    "random-bytes": np.random.default_rng(0).bytes(4096),
}


@pytest.mark.parametrize("content", CORRUPT_CONTENTS.values(), ids=CORRUPT_CONTENTS.keys())
def test_load_of_a_corrupt_file_is_a_user_error_naming_it(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="junk.pt"):
        checkpoint.load(path)


def test_load_of_a_truncated_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "cut.pt"
    checkpoint.save_atomic(_sample_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pt"):
        checkpoint.load(path)


def test_load_of_a_non_dict_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(UserError, match="Tensor"):
        checkpoint.load(path)


def _draw() -> tuple:
    return (
        [random.random() for _ in range(5)],
        np.random.rand(5).tolist(),
        np.random.randint(0, 1000, 5).tolist(),
        torch.rand(5).tolist(),
        torch.randn(3).tolist(),
    )


def test_rng_state_round_trip_reproduces_python_numpy_and_torch_draws():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draw()  # move away from the seeded start
    state = checkpoint.rng_state()
    first = _draw()
    _draw()
    checkpoint.set_rng_state(state)
    assert _draw() == first


def test_rng_state_survives_a_safe_checkpoint_save_and_load(tmp_path):
    random.seed(4)
    np.random.seed(5)
    torch.manual_seed(6)
    _draw()
    path = tmp_path / "rng.pt"
    checkpoint.save_atomic({"rng": checkpoint.rng_state()}, path)
    first = _draw()

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    checkpoint.set_rng_state(checkpoint.load(path)["rng"])

    assert _draw() == first


def test_checkpoints_and_run_files_get_the_permissions_of_a_plain_file(tmp_path):
    import os
    import stat

    from resnet_repro import checkpoint

    old = os.umask(0o022)
    try:
        checkpoint.save_atomic({"x": torch.zeros(1)}, tmp_path / "last.pt")
        checkpoint.write_text_atomic(tmp_path / "final.json", "{}\n")
    finally:
        os.umask(old)
    for name in ("last.pt", "final.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644  # group can read, as with open()
    assert (tmp_path / "final.json").read_text() == "{}\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_refuses_changed_optimizer_or_schedule_settings_and_names_them():
    import dataclasses

    from resnet_repro.config import OptimConfig, RootConfig, ScheduleConfig, StabilizerConfig, TrainerConfig
    from resnet_repro.training.resume import resume_config_changes

    run = RootConfig(
        optim=OptimConfig(lr_per_256=0.1),
        schedule=ScheduleConfig(name="cosine"),
        trainer=TrainerConfig(epochs=10),
    )
    saved = dataclasses.asdict(run)
    assert resume_config_changes(saved, run) == []
    changed = dataclasses.replace(
        run,
        optim=OptimConfig(lr_per_256=0.05),
        trainer=TrainerConfig(epochs=20),
        stabilizer=StabilizerConfig(warmup_epochs=2.0, max_norm=1.0),
    )
    assert resume_config_changes(saved, changed) == [
        "optim.lr_per_256 0.1 -> 0.05",
        "stabilizer.warmup_epochs 0.0 -> 2.0",
        "trainer.epochs 10 -> 20",  # the cosine length is in the scheduler's state
    ]  # the max norm is read every step: changing it on resume is allowed
    step_run = dataclasses.replace(run, schedule=ScheduleConfig(name="step"))
    longer = dataclasses.replace(step_run, trainer=TrainerConfig(epochs=20))
    assert resume_config_changes(dataclasses.asdict(step_run), longer) == []  # milestones are absolute
    inert = dataclasses.replace(step_run, schedule=ScheduleConfig(name="step", patience=2))
    assert resume_config_changes(dataclasses.asdict(step_run), inert) == []  # plateau-only field
    moved = dataclasses.replace(step_run, schedule=ScheduleConfig(name="step", milestones=[5, 8]))
    assert resume_config_changes(dataclasses.asdict(step_run), moved) == [
        "schedule.milestones [30, 60] -> [5, 8]"
    ]
    plateau_run = dataclasses.replace(run, schedule=ScheduleConfig(name="plateau"))
    on_error = dataclasses.replace(run, schedule=ScheduleConfig(name="plateau", metric="top1"))
    assert resume_config_changes(dataclasses.asdict(plateau_run), on_error) == [
        "schedule.metric loss -> top1"  # the best value in the checkpoint is a loss
    ]
    older = dataclasses.asdict(plateau_run)
    del older["schedule"]["metric"], older["schedule"]["min_delta"]  # saved before these keys existed
    assert resume_config_changes(older, plateau_run) == []


def test_a_plateau_state_saved_by_torchs_reduce_lr_on_plateau_resumes_its_best_and_count():
    import torch

    from resnet_repro.config import ScheduleConfig
    from resnet_repro.training.schedule import Plateau

    optim = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    old = torch.optim.lr_scheduler.ReduceLROnPlateau(optim, patience=5)
    for loss in (1.0, 0.8, 0.9, 0.85):
        old.step(loss)
    plateau = Plateau(ScheduleConfig(name="plateau", patience=3))
    plateau.load_state_dict(old.state_dict())
    assert (plateau.rule.best, plateau.rule.bad_evals, plateau.patience) == (0.8, 2, 3)
    fresh = Plateau(ScheduleConfig(name="plateau"))
    fresh.load_state_dict(torch.optim.lr_scheduler.ReduceLROnPlateau(optim).state_dict())
    assert fresh.rule.best is None  # torch's "nothing seen yet" (inf) is ours


def test_a_launchers_own_signal_handler_runs_after_our_checkpoint_not_instead(tmp_path):
    """submitit handles SIGUSR2 (its time-limit warning) by requeueing the job: the watch catches the
    signal first (so the run checkpoints at a step boundary), then hands it over."""
    import os
    import signal

    from resnet_repro.checkpoint import PreemptionWatch

    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    # SIGUSR1 at its default, whatever an earlier test in this process left there
    previous_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        watch = PreemptionWatch(["SIGUSR2", "SIGUSR1"])
        os.kill(os.getpid(), signal.SIGUSR2)
        assert watch.received == "SIGUSR2" and calls == []  # only flagged: the loop saves first
        assert watch.launcher_handler() is not None
        watch.hand_over()
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is not watch._handle  # restored to the launcher's

        plain = PreemptionWatch(["SIGUSR1"])  # SIGUSR1's previous handler is the default
        os.kill(os.getpid(), signal.SIGUSR1)
        assert plain.received == "SIGUSR1" and plain.launcher_handler() is None
        plain.restore()
    finally:
        signal.signal(signal.SIGUSR2, previous)
        signal.signal(signal.SIGUSR1, previous_usr1)


def test_the_first_signal_decides_when_a_second_follows():
    # submitit's USR2, then the SIGTERM of the requeue it triggers: USR2 must still be handed over
    import os
    import signal

    from resnet_repro.checkpoint import PreemptionWatch

    watch = PreemptionWatch(["SIGUSR1", "SIGUSR2"])
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watch.received == "SIGUSR2"
    finally:
        watch.restore()


def test_a_launcher_handler_that_only_logs_the_signal_is_not_a_requeue():
    # submitit's handler for SIGTERM is `bypass` (it logs); only its USR2 handler requeues
    import signal

    from resnet_repro.checkpoint import PreemptionWatch

    class Launcher:
        def bypass(self, signum, frame):
            pass

        def checkpoint_and_try_requeue(self, signum, frame):
            pass

    launcher = Launcher()
    old_term = signal.signal(signal.SIGTERM, launcher.bypass)
    old_usr2 = signal.signal(signal.SIGUSR2, launcher.checkpoint_and_try_requeue)
    try:
        watch = PreemptionWatch(["SIGTERM", "SIGUSR2"])
        watch.received = "SIGTERM"
        assert watch.launcher_handler() is not None and not watch.launcher_requeues()
        watch.received = "SIGUSR2"
        assert watch.launcher_requeues()
        watch.restore()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGUSR2, old_usr2)


def test_a_handler_left_by_another_watch_is_not_a_launchers_but_the_one_it_found_is():
    # an earlier run in this process that never restored its watch: its handler only sets a flag on
    # an object nobody reads, so handing the signal to it would requeue nothing
    import signal

    from resnet_repro.checkpoint import PreemptionWatch

    def checkpoint_and_try_requeue(signum, frame):  # a launcher's own, found by the leaked watch
        pass

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.signal(signal.SIGUSR2, checkpoint_and_try_requeue)
        PreemptionWatch(["SIGUSR1", "SIGUSR2"])  # left installed
        watch = PreemptionWatch(["SIGUSR1", "SIGUSR2"])
        watch.received = "SIGUSR1"
        assert watch.launcher_handler() is None and not watch.launcher_requeues()
        watch.received = "SIGUSR2"  # the launcher's handler under the leaked watch's
        assert watch.launcher_handler() is checkpoint_and_try_requeue and watch.launcher_requeues()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_only_submitits_requeueing_handler_counts_as_a_launchers_requeue():
    # another library's handler (torch's elastic agent leaves one that raises SignalException) is
    # not called after our checkpoint: the run decides its requeue itself
    import signal

    from resnet_repro.checkpoint import PreemptionWatch

    def _terminate_process_handler(signum, frame):
        raise RuntimeError("not to be called")

    old_term = signal.signal(signal.SIGTERM, _terminate_process_handler)
    try:
        watch = PreemptionWatch(["SIGTERM"])
        watch.received = "SIGTERM"
        assert watch.launcher_handler() is _terminate_process_handler and not watch.launcher_requeues()
        watch.restore()
    finally:
        signal.signal(signal.SIGTERM, old_term)


def test_resume_refuses_a_checkpoint_of_another_experiment_and_names_the_keys(tmp_path):
    # two `srun` steps of a seed loop used to share a run directory: the second "resumed" the first
    import dataclasses

    from resnet_repro.config import DataConfig, ModelConfig, RootConfig, TrainerConfig
    from resnet_repro.training.resume import check_resumable, resume_config_changes
    from resnet_repro.training.summary import Derived

    run = RootConfig(data=DataConfig(name="demo", root="/a"), trainer=TrainerConfig(seed=0))
    saved = dataclasses.asdict(run)
    moved = dataclasses.replace(run, data=DataConfig(name="demo", root="/b", num_threads=8))
    assert resume_config_changes(saved, moved) == []  # where the data lives and how fast it loads
    fast = dataclasses.replace(run, model=ModelConfig(channels_last=True))
    assert resume_config_changes(saved, fast) == []
    other = dataclasses.replace(
        run, trainer=TrainerConfig(seed=1, precision="bf16"), model=ModelConfig(name="resnet18")
    )
    assert resume_config_changes(saved, other) == [
        "model.name resnet50 -> resnet18",
        "trainer.precision fp32 -> bf16",
        "trainer.seed 0 -> 1",
    ]

    derived = Derived(1, 16, 0.1, 5, 80, 20, 10, "cpu")
    state = {
        k: 0 for k in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "epoch_step", "rng")
    }
    state.update(config=saved, normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    with pytest.raises(UserError, match=r"trainer\.seed 0 -> 1.*trainer\.resume_with_changes=true"):
        check_resumable(
            state, tmp_path / "last.pt", derived, dataclasses.replace(run, trainer=TrainerConfig(seed=1))
        )
    with pytest.raises(UserError, match=r"normalization mean \[0\.5, 0\.5, 0\.5\] -> \[0\.4"):
        check_resumable(state, tmp_path / "last.pt", derived, run, ([0.4] * 3, [0.25] * 3))
    assert check_resumable(state, tmp_path / "last.pt", derived, run, ([0.5] * 3, [0.25] * 3)) == []
    anyway = dataclasses.replace(run, trainer=TrainerConfig(seed=1, resume_with_changes=True))
    assert check_resumable(state, tmp_path / "last.pt", derived, anyway) == ["trainer.seed 0 -> 1"]


def test_a_single_process_reads_its_own_signal_flag_without_an_all_reduce(monkeypatch):
    """One process: the flag is read after every step (not only every preempt_check_steps), and no
    device tensor is made and reduced (on CUDA that poll cost two host syncs)."""
    import os
    import signal

    from resnet_repro.cluster import distributed
    from resnet_repro.cluster.distributed import DistEnv
    from resnet_repro.cluster.preemption import Interrupts
    from resnet_repro.config import RootConfig, TrainerConfig

    def no_reduce(*args):
        raise AssertionError("a single process must not all-reduce its preemption flag")

    monkeypatch.setattr(distributed, "all_reduce_sum", no_reduce)
    cfg = RootConfig(trainer=TrainerConfig(preempt_signals=["SIGUSR1"], preempt_check_steps=10))
    interrupts = Interrupts(cfg, DistEnv(), torch.device("cpu"))
    try:
        assert not interrupts.stop_requested(10) and not interrupts.stop_requested(3, force_check=True)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert interrupts.stop_requested(3) and interrupts.stopped_by == "SIGUSR1"
    finally:
        interrupts.close()


@pytest.mark.parametrize(
    ("here", "elsewhere", "agreed"),
    [
        (None, "SIGUSR1", "SIGUSR1"),  # the time-limit warning reached another rank only
        ("SIGTERM", "SIGUSR1", "SIGUSR1"),  # the warning wins over the SIGTERM that ends the same event
        (None, "SIGTERM", "SIGTERM"),
        ("SIGUSR2", None, "SIGUSR2"),
    ],
)
def test_multi_rank_stop_is_decided_on_the_signal_all_ranks_agree_on(monkeypatch, here, elsewhere, agreed):
    import signal

    from resnet_repro.cluster import distributed, slurm
    from resnet_repro.cluster.distributed import DistEnv
    from resnet_repro.cluster.preemption import Interrupts
    from resnet_repro.config import RootConfig, TrainerConfig

    signals = ["SIGUSR1", "SIGUSR2", "SIGTERM"]
    other_rank = torch.tensor([*(float(elsewhere == n) for n in signals), 0.0])  # + "save due"
    monkeypatch.setattr(
        distributed, "all_reduce_sum", lambda env, flags: flags + other_rank
    )  # rank 1's flags
    monkeypatch.setattr(slurm, "restart_count", lambda job: 0)
    cfg = RootConfig(trainer=TrainerConfig(preempt_signals=signals, preempt_check_steps=1))
    interrupts = Interrupts(cfg, DistEnv(rank=0, world_size=2), torch.device("cpu"))
    try:
        if here is not None:
            os.kill(os.getpid(), getattr(signal, here))
        assert interrupts.stop_requested(1)
        assert interrupts.stopped_by == agreed and interrupts.watch.received == agreed
        # rank 0 decides on the agreed signal: a warning anywhere requeues (SLURM shows no preemption)
        decision = slurm.decide_stop(
            interrupts.stopped_by, "42", 0, True, query=lambda job: (slurm.JobView(("RUNNING",)), "")
        )
        assert decision.action == ("requeue" if agreed in ("SIGUSR1", "SIGUSR2") else "stop")
    finally:
        interrupts.close()


def test_resume_refuses_a_checkpoint_trained_on_other_class_names(tmp_path):
    # data.root may move between launches, but the model's outputs are the classes it was trained on
    import dataclasses

    from resnet_repro.config import DataConfig, RootConfig, TrainerConfig
    from resnet_repro.training.resume import check_resumable
    from resnet_repro.training.summary import Derived

    run = RootConfig(data=DataConfig(name="demo", root="/a"), trainer=TrainerConfig(seed=0))
    derived = Derived(1, 16, 0.1, 5, 80, 20, 10, "cpu")
    state = {
        k: 0 for k in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "epoch_step", "rng")
    }
    state.update(config=dataclasses.asdict(run), classes=["cat", "dog", "emu"])
    path = tmp_path / "last.pt"
    assert check_resumable(state, path, derived, run, classes=("cat", "dog", "emu")) == []
    with pytest.raises(UserError, match=r"classes \['cat', 'dog', 'emu'\] -> \['cat', 'dog', 'owl'\]"):
        check_resumable(state, path, derived, run, classes=("cat", "dog", "owl"))
    anyway = dataclasses.replace(run, trainer=TrainerConfig(seed=0, resume_with_changes=True))
    changes = check_resumable(state, path, derived, anyway, classes=("cat", "dog", "owl"))
    assert changes == ["classes ['cat', 'dog', 'emu'] -> ['cat', 'dog', 'owl'] (output 2: 'emu' -> 'owl')"]
    # another count is another output layer: never a change a resume can accept
    with pytest.raises(UserError, match=r"trained on 3 classes.*4 classes.*another output layer"):
        check_resumable(state, path, derived, anyway, classes=("cat", "dog", "emu", "owl"))
    state.pop("classes")  # a checkpoint of an earlier version: nothing to compare
    assert check_resumable(state, path, derived, run, classes=("cat", "dog", "owl")) == []


def test_a_checkpoint_path_that_is_a_run_folder_points_at_its_last_pt(tmp_path):
    from resnet_repro import checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match=r"is a folder; expected a checkpoint file, e\.g\. <run dir>"):
        checkpoint.load(run)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(UserError, match=f"is a folder; .*e\\.g\\. {run / 'checkpoints' / 'last.pt'}$"):
        checkpoint.load(run)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_periodic_checkpoint_is_due_on_every_rank_at_the_same_step(monkeypatch, rank):
    """Rank 0's clock decides, and the signal check's all-reduce tells the others: every rank then
    reaches the checkpoint together (it sums the epoch's metrics over the ranks: a rank that
    stayed out would hang the others)."""
    from resnet_repro.cluster import distributed, slurm
    from resnet_repro.cluster.distributed import DistEnv
    from resnet_repro.cluster.preemption import Interrupts
    from resnet_repro.config import RootConfig, TrainerConfig

    monkeypatch.setattr(slurm, "restart_count", lambda job: 0)
    cfg = RootConfig(trainer=TrainerConfig(preempt_signals=["SIGUSR1"], preempt_check_steps=5))
    interrupts = Interrupts(cfg, DistEnv(rank=rank, world_size=2), torch.device("cpu"))
    try:
        interrupts.save_interval_s = 0.0  # due at once on this rank's own clock
        sent = []

        def all_reduce(env, flags):  # the other rank's flags: no signal; rank 0's clock says due
            sent.append(flags.tolist())
            return flags + torch.tensor([0.0, 0.0 if rank == 0 else 1.0])

        monkeypatch.setattr(distributed, "all_reduce_sum", all_reduce)
        assert not interrupts.stop_requested(3)  # not a check step: nothing exchanged
        assert not interrupts.save_due() and sent == []
        assert not interrupts.stop_requested(5)
        assert sent == [[0.0, 1.0 if rank == 0 else 0.0]]  # only rank 0's clock is sent
        assert interrupts.save_due() and not interrupts.save_due()  # once per agreement
        assert not interrupts.stop_requested(7, force_check=True)  # an epoch's last step saves anyway
        assert not interrupts.save_due()
    finally:
        interrupts.close()
