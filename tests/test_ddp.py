"""Distributed behaviour on CPU with gloo: exact evaluation, DDP equivalence, resume, failures."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import ddp_workers
import numpy as np
import pytest
import torch
from conftest import tensorboard_scalars
from PIL import Image

from resnet_repro import checkpoint
from resnet_repro.cluster import distributed
from resnet_repro.config import UserError

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def write_split(root: Path, split: str, counts: list[int]) -> None:
    rng = np.random.default_rng(len(counts) * 1000 + sum(counts))
    for c, n in enumerate(counts):
        folder = root / split / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = rng.integers(16, 40, size=2)
            base = np.array([80 * c % 256, 40, 200 - 50 * c], dtype=np.float64)
            img = (base + rng.normal(0, 40, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:03d}.JPEG", quality=90)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    write_split(root, "train", [40, 40, 40])
    write_split(root, "val", [35, 34, 34])  # 103 images: not divisible by 2 x 16
    return root


def test_two_ranks_evaluate_every_image_once_and_match_one_rank(generated: Path, tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    distributed.launch_local(1, ddp_workers.eval_worker, str(generated), str(one), 16)
    distributed.launch_local(2, ddp_workers.eval_worker, str(generated), str(two), 16)
    single = json.loads((one / "rank0.json").read_text())
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert single["num_samples"] == 103
    assert sum(r["local_count"] for r in ranks) == 103  # each image once, no padding duplicates
    for r in ranks:
        assert r["num_samples"] == 103
        assert r["top1"] == single["top1"]
        assert r["top5"] == single["top5"]
        assert r["loss"] == pytest.approx(single["loss"], rel=1e-6)  # float32 per-batch sums


def test_multiscale_evaluation_on_two_ranks_equals_one_rank_with_every_image_counted_once(
    generated: Path, tmp_path: Path
):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    scales = [12, 20, 28]  # the generated images are 16 to 40 px on a side, of many aspect ratios
    distributed.launch_local(
        1, ddp_workers.protocol_eval_worker, str(generated), str(one), "multiscale", scales
    )
    distributed.launch_local(
        2, ddp_workers.protocol_eval_worker, str(generated), str(two), "multiscale", scales
    )
    single = json.loads((one / "rank0.json").read_text())
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert single["num_samples"] == single["local_count"] == 103
    assert [r["local_count"] for r in ranks] == [52, 51]  # each image once, no padding duplicates
    for r in ranks:
        assert r["protocol"] == "multiscale" and r["num_samples"] == 103
        assert (r["top1"], r["top5"]) == (single["top1"], single["top5"])
        assert r["loss"] == pytest.approx(single["loss"], rel=1e-12)  # float64 sums in another order


def test_two_ranks_of_batch_b_train_like_one_rank_of_batch_2b(generated: Path, tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    distributed.launch_local(1, ddp_workers.train_worker, str(generated), str(one), 16, 5)
    distributed.launch_local(2, ddp_workers.train_worker, str(generated), str(two), 8, 5)
    a, b = torch.load(one / "out.pt"), torch.load(two / "out.pt")
    assert a["steps"] == b["steps"] == 5
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for name, wa in a["weights"].items():
        torch.testing.assert_close(b["weights"][name], wa, rtol=1e-5, atol=1e-6)
    init = ddp_workers.tiny_net(3).state_dict()
    assert not torch.equal(init["4.weight"], a["weights"]["4.weight"])  # it did train


def test_under_ddp_every_rank_restores_its_batchnorm_statistics_after_a_skipped_step(tmp_path: Path):
    """An inf pixel on rank 0 (whose buffers DDP broadcasts at the next forward) and one on rank 1
    at the epoch's last step: both steps are skipped everywhere and no rank keeps NaN statistics."""
    distributed.launch_local(2, ddp_workers.nonfinite_bn_worker, str(tmp_path))
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out["skipped"] == 2
        assert out["buffers"] and all(torch.isfinite(v).all() for v in out["buffers"].values()), rank


def test_two_ranks_resumed_mid_epoch_report_the_whole_epochs_train_metrics(tmp_path: Path):
    """The oracle is the same two-rank epoch uninterrupted: a launch killed after step 3 of 8 (its
    last.pt from a periodic checkpoint both ranks reached together) and the launch resuming it
    report the epoch's loss, top-1, steps and gradient norms over all 8 steps and both ranks."""
    for phase in ("whole", "first", "second"):
        distributed.launch_local(2, ddp_workers.resumed_epoch_worker, str(tmp_path), phase)
    whole, resumed = (json.loads((tmp_path / f"{p}.json").read_text()) for p in ("whole", "second"))
    assert resumed["steps"] == whole["steps"] == 8
    for key in ("loss", "top1", "grad_norm_p50", "grad_norm_max"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-5), key


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "resnet_repro", *args]


def demo_args(demo_root: Path, run_dir: Path) -> list[str]:
    return [
        "train",
        f"data.root={demo_root}",
        f"hydra.run.dir={run_dir}",
        "trainer.epochs=3",
        "trainer.batch_size=32",
        "trainer.max_steps_per_epoch=6",
        "schedule.milestones=[2]",
        "logging.progress=false",
    ]


@pytest.fixture(scope="module")
def uninterrupted(demo_root: Path, tmp_path_factory) -> Path:
    """The oracle of the kill tests: the demo run without a kill, every step logged."""
    ref_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    args = [*demo_args(demo_root, ref_dir), "logging.log_every_steps=1"]
    subprocess.run(cli(*args), check=True, capture_output=True, cwd=REPO, timeout=600)
    return ref_dir


def _kill_somewhere_and_resume(args: list[str], run_dir: Path, ref_dir: Path) -> None:
    """Start the run, SIGKILL it at a random moment once its first last.pt exists (inside epoch 2
    with checkpoints at epoch ends), then run the same command, which resumes."""
    proc = subprocess.Popen(cli(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    # at most an epoch's training time in the reference run, so the kill lands before the run ends
    # however fast the machine is (a fixed 2 s outlasted the run on a quiet one)
    ref_rows = [json.loads(line) for line in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    epoch2_s = next(r["epoch_time_s"] for r in ref_rows if r["split"] == "train" and r["epoch"] == 2)
    time.sleep(random.uniform(0.0, 0.9 * epoch2_s))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run_dir / "final.json").exists()

    resumed = subprocess.run(cli(*args), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr


def _assert_outputs_as_without_the_kill(run_dir: Path, ref_dir: Path) -> None:
    """metrics.jsonl: one row per epoch and split, each with the LR its epoch began with;
    TensorBoard (its own reader): each step's LR and gradient norm once, the LRs the oracle's."""
    rows, ref_rows = (
        [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (run_dir, ref_dir)
    )
    assert [(r["epoch"], r["split"]) for r in rows] == [(r["epoch"], r["split"]) for r in ref_rows]
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref_rows]
    scalars, ref_scalars = tensorboard_scalars(run_dir), tensorboard_scalars(ref_dir)
    for tag, events in scalars.items():
        steps = [step for step, _ in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice: {steps}"
    for tag in ("train/step_lr", "train/grad_norm"):
        assert [step for step, _ in scalars[tag]] == list(range(1, 19)), tag
    assert scalars["train/step_lr"] == ref_scalars["train/step_lr"]


def test_run_killed_at_a_random_step_resumes_to_identical_weights_and_metrics(
    demo_root: Path, tmp_path: Path, uninterrupted: Path
):
    killed_dir = tmp_path / "killed"
    _kill_somewhere_and_resume(
        [*demo_args(demo_root, killed_dir), "logging.log_every_steps=1"], killed_dir, uninterrupted
    )

    ref = checkpoint.load(uninterrupted / "checkpoints" / "last.pt")
    got = checkpoint.load(killed_dir / "checkpoints" / "last.pt")
    assert got["step"] == ref["step"] == 18
    for name, tensor in ref["model"].items():
        assert torch.equal(got["model"][name], tensor), name
    final, ref_final = (json.loads((d / "final.json").read_text()) for d in (killed_dir, uninterrupted))
    assert final["top1"] == ref_final["top1"] and final["top5"] == ref_final["top5"]
    # the same weights on the same images; the float32 loss sum may round differently in its last bits
    assert final["loss"] == pytest.approx(ref_final["loss"], rel=1e-6)
    _assert_outputs_as_without_the_kill(killed_dir, uninterrupted)


def test_run_killed_between_mid_epoch_checkpoints_resumes_with_each_epoch_and_step_logged_once(
    demo_root: Path, tmp_path: Path, uninterrupted: Path
):
    """last.pt after every step: the kill lands mid-epoch, after rows and events of steps the
    resumed launch trains again (a mid-epoch resume draws fresh augmentation, so the weights are
    not the oracle's; the LRs, the rows and the steps logged are)."""
    killed_dir = tmp_path / "killed"
    args = [
        *demo_args(demo_root, killed_dir),
        "logging.log_every_steps=1",
        "trainer.checkpoint_every_minutes=0.0001",
    ]
    _kill_somewhere_and_resume(args, killed_dir, uninterrupted)
    assert checkpoint.load(killed_dir / "checkpoints" / "last.pt")["step"] == 18
    _assert_outputs_as_without_the_kill(killed_dir, uninterrupted)


def test_a_rerun_after_a_launch_that_failed_before_its_first_checkpoint_logs_each_step_once(
    demo_root: Path, tmp_path: Path
):
    """The first launch trains epoch 1, then its evaluation meets a cut JPEG (an error, exit 2,
    no last.pt); with the file mended the same command starts afresh in the same directory. The
    first launch's rows and events are not the run's: metrics.jsonl has one row per epoch and
    split, TensorBoard (its own reader) one value per step."""
    import shutil

    root = tmp_path / "data"
    root.mkdir()
    (root / "train").symlink_to(demo_root / "train")
    shutil.copytree(demo_root / "val", root / "val")
    shutil.copy(demo_root / ".complete", root)  # the demo's own data, as make-demo-data leaves it
    victim = sorted((root / "val").rglob("*.JPEG"))[0]
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 3])
    run_dir = tmp_path / "run"
    args = [
        *demo_args(root, run_dir),
        "trainer.epochs=1",
        "stabilizer.warmup_epochs=0",
        "data.backend=torchvision",
        "data.num_threads=1",
        "logging.log_every_steps=1",
    ]
    failed = subprocess.run(cli(*args), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    assert [step for step, _ in tensorboard_scalars(run_dir)["train/step_lr"]] == list(range(1, 7))

    victim.write_bytes(whole)
    again = subprocess.run(cli(*args), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in rows] == [(1, "train"), (1, "val")]
    for tag, events in tensorboard_scalars(run_dir).items():
        steps = [step for step, _ in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice: {steps}"


def test_a_disk_that_fills_during_the_run_is_one_error_line_and_last_pt_stays_whole(
    demo_root: Path, tmp_path: Path
):
    """A real file system that fills up: a 300 MB tmpfs, filled once the first last.pt is
    written. The run ends with one line naming the device and how to go on, exit 2; the
    checkpoint it had is still whole and loads."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        run_dir = mnt / "run"
        args = [
            *demo_args(demo_root, run_dir),
            "trainer.epochs=4",
            "stabilizer.warmup_epochs=0",
            "data.max_eval_images=32",
        ]
        proc = subprocess.Popen(
            cli(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        last = run_dir / "checkpoints" / "last.pt"
        deadline = time.monotonic() + 300
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(mnt / "filler", "wb") as filler:  # every byte left
            try:
                while True:
                    filler.write(b"\0" * 2**20)
                    filler.flush()
            except OSError:
                pass
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-3000:]
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert lines[-1].startswith("resnet-repro: error: no space left on the device of "), err[-3000:]
        assert "run the same command again" in lines[-1]
        assert "Traceback" not in out + err and "Error executing job" not in out + err
        assert checkpoint.load(last)["step"] >= 6
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_warning_every_rank_meets_is_printed_once_by_two_local_workers(demo_root: Path, tmp_path: Path):
    """Each rank lists the data and meets the same unmatched exclude-list entry; only rank 0 speaks,
    as under torchrun and srun (where Hydra silences the other ranks)."""
    listing = tmp_path / "exclude.txt"
    listing.write_text("train/0/not-there.JPEG\n")
    args = demo_args(demo_root, tmp_path / "run") + [
        "trainer.nproc=2",
        "trainer.epochs=1",
        "stabilizer.warmup_epochs=0",
        "trainer.max_steps_per_epoch=1",
        "data.max_eval_images=20",
        f"data.exclude_files={listing}",
    ]
    proc = subprocess.run(cli(*args), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert said.count("they exclude nothing") == 1, said[-3000:]


def test_killing_one_rank_fails_the_whole_job_within_bounded_time(demo_root: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    args = demo_args(demo_root, run_dir) + [
        "trainer.nproc=2",
        "trainer.dist_timeout_s=60",
        "trainer.max_steps_per_epoch=null",
        "trainer.epochs=5",
    ]
    proc = subprocess.Popen(
        cli(*args),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)
        workers = _worker_pids(proc.pid)
        assert len(workers) >= 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert time.monotonic() - killed_at < 90
        assert "worker failed" in err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _worker_pids(parent: int) -> list[int]:
    """Descendant processes running the training function (the spawned workers)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    cmd: dict[int, str] = {}
    for line in out.splitlines():
        pid, ppid, *rest = line.split(None, 2)
        children.setdefault(int(ppid), []).append(int(pid))
        cmd[int(pid)] = rest[0] if rest else ""
    found, stack = [], [parent]
    while stack:
        p = stack.pop()
        for c in children.get(p, []):
            stack.append(c)
            if "spawn_main" in cmd[c]:
                found.append(c)
    return sorted(found)


def test_checkpoint_holding_code_is_refused(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(Exception, match="refused"):
        checkpoint.load(path)
    assert not (tmp_path / "pwned").exists()


def test_two_rank_stats_equal_the_one_rank_result_exactly(generated: Path, tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    distributed.launch_local(1, ddp_workers.stats_worker, str(generated), str(one))
    distributed.launch_local(2, ddp_workers.stats_worker, str(generated), str(two))
    single = json.loads((one / "rank0.json").read_text())
    for rank in (0, 1):
        assert json.loads((two / f"rank{rank}.json").read_text()) == single


def test_two_rank_mean_image_equals_the_one_rank_result_exactly(generated: Path, tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    distributed.launch_local(1, ddp_workers.pixel_mean_worker, str(generated), str(one))
    distributed.launch_local(2, ddp_workers.pixel_mean_worker, str(generated), str(two))
    single = json.loads((one / "rank0.json").read_text())
    assert [g["detail"] for g in single] == ["computed now", "loaded"]
    for rank in (0, 1):
        assert json.loads((two / f"rank{rank}.json").read_text()) == single


def test_a_user_error_on_one_rank_reaches_every_rank_instead_of_a_hang(tmp_path: Path):
    distributed.launch_local(2, ddp_workers.failing_on_one_rank_worker, str(tmp_path), 1)
    rank0 = (tmp_path / "rank0.txt").read_text()
    rank1 = (tmp_path / "rank1.txt").read_text()
    assert rank1 == "data.root=/nope does not exist"
    assert rank0 == "(rank 1) data.root=/nope does not exist"


@pytest.mark.parametrize("exit_code", [0, 3], ids=["finished", "failed"])
def test_a_local_launch_leaves_no_torchelastic_folder_nor_its_agents_signal_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_code: int
):
    """torch's agent sets its own handler (which raises SignalException) for SIGTERM, SIGINT, SIGHUP
    and SIGQUIT and keeps it there. A local sweep runs its points in one process: a later point
    with one process took it for a launcher's handler, and Ctrl-C no longer raised KeyboardInterrupt."""
    watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
    before = {sig.name: signal.getsignal(sig) for sig in watched}
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    if exit_code:
        # Both ranks exit with 3; which one the agent reports first is a race.
        with pytest.raises(UserError, match=r"rank [01] exit code 3"):
            distributed.launch_local(2, ddp_workers.exit_worker, exit_code)
    else:
        distributed.launch_local(2, ddp_workers.exit_worker, exit_code)
    agents = ("torchelastic_", "resnet-repro-agent-")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(agents)) == []
    assert {sig.name: signal.getsignal(sig) for sig in watched} == before


def test_local_workers_share_the_cpus_out_instead_of_each_running_a_thread_per_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Each worker's torch would start a thread for every CPU the launcher may use: nproc workers on
    as many cores then oversubscribe them (a 3-epoch demo run of trainer.nproc=2 on 2 cores took 1.8x
    as long). torchrun sets one thread per worker; the local launch shares the CPUs out, and a
    user's OMP_NUM_THREADS is kept."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    distributed.launch_local(2, ddp_workers.threads_worker, str(tmp_path))
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text())["OMP_NUM_THREADS"] == "4"
    assert "OMP_NUM_THREADS" not in os.environ  # the launcher's own environment is left as it was

    # the variable is what torch's pool follows (torch caps it at the cores there are: 1 is safe)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    distributed.launch_local(2, ddp_workers.threads_worker, str(tmp_path))
    assert json.loads((tmp_path / "rank1.json").read_text()) == {"OMP_NUM_THREADS": "1", "torch": 1}


def test_a_stop_signal_to_the_local_launcher_leaves_no_rendezvous_heartbeat_thread_behind(tmp_path: Path):
    """torch's agent keeps its rendezvous open when a signal stops it; its heartbeat thread then ran
    on until the handler was collected, and where that happened on the thread itself, the process
    printed a traceback (RuntimeError: cannot join current thread) in a correct stop's log."""
    import threading

    def stop_once_started() -> None:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("rank*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_once_started, daemon=True)
    stopper.start()
    with pytest.raises(distributed.WorkersSignalled) as stopped:
        distributed.launch_local(2, ddp_workers.waiting_worker, str(tmp_path))
    stopper.join()
    assert stopped.value.signal_name == "SIGTERM"
    heartbeats = [t.name for t in threading.enumerate() if t.name.startswith("RendezvousKeepAliveTimer")]
    assert heartbeats == []
