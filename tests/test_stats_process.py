"""The DALI statistics pass runs in a process of its own: its sums cross the process boundary
exactly, a decoder crash is a one-line error naming the file, and the signals a training run
watches for preemption are left to the run."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_repro.config import DataConfig, StatsConfig, UserError
from resnet_repro.data import channel_sums, pixel_mean, stats_process

OPTIONS = dict(resize_shorter=None, num_threads=1, device="cpu")


def _jpegs(folder: Path, n: int, size: tuple[int, int] = (40, 30)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.JPEG"
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _broken(path: Path) -> str:
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"not a JPEG body" * 20)
    return str(path)


class _Children:
    """subprocess.Popen as stats_process calls it, keeping the children it starts."""

    def __init__(self, monkeypatch) -> None:
        self.started: list[subprocess.Popen] = []
        real = subprocess.Popen

        def popen(*args, **kwargs):
            self.started.append(real(*args, **kwargs))
            return self.started[-1]

        monkeypatch.setattr(stats_process.subprocess, "Popen", popen)


def test_sums_from_the_child_process_equal_the_in_process_pass(tmp_path):
    files = _jpegs(tmp_path, 9)
    in_process, n = channel_sums.stream(files, batch_size=4, **OPTIONS)
    isolated, m = stats_process.stream(files, batch_size=4, **OPTIONS)
    assert (m, n) == (9, 9)
    assert isolated == in_process and isolated.num_images == 9


def test_a_broken_jpeg_that_crashes_dalis_decoder_is_a_one_line_error_naming_it(tmp_path):
    """One broken JPEG with 40 good ones in one batch of 64: DALI 2.4's CPU decoder kills its process in
    most runs (SIGSEGV, exit 139 when it ran in the training process), else raises."""
    files = [_broken(tmp_path / "bad.JPEG"), *_jpegs(tmp_path / "good", 40)]
    for _ in range(2):
        with pytest.raises(UserError, match=r"the statistics pass cannot decode .*bad\.JPEG \("):
            stats_process.stream(files, batch_size=64, **OPTIONS)


@pytest.fixture
def targets(monkeypatch) -> str:
    """The child imports tests/stats_targets.py: targets that stand still until signalled."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    return "stats_targets"


def test_a_child_that_dies_by_a_signal_names_the_undecodable_file_of_its_batches(
    tmp_path, monkeypatch, targets
):
    children = _Children(monkeypatch)
    files = [*_jpegs(tmp_path, 23), _broken(tmp_path / "bad.JPEG")]

    def segfault(at: int) -> None:
        assert children.started[-1].poll() is None
        children.started[-1].send_signal(signal.SIGSEGV)

    def died_at(at: list[int], in_flight: int) -> None:
        last = lambda i: i == at[-1] and segfault(i)  # noqa: E731
        stats_process.run(f"{targets}:stall", files, in_flight=in_flight, on_batch=last, at=at)

    # from the last batch started: 12 files in flight, none broken: the death and the files are named
    with pytest.raises(UserError, match=r"died by SIGSEGV while decoding .*004\.JPEG .. .*015\.JPEG"):
        died_at([0, 4], in_flight=12)
    # the broken file (index 23) in flight: it is named
    with pytest.raises(UserError, match=r"the statistics pass cannot decode .*bad\.JPEG"):
        died_at([16], in_flight=12)
    # in flight past the end: DALI reads on into the next pass
    with pytest.raises(UserError, match=r"died by SIGSEGV while decoding .*020\.JPEG .. .*003\.JPEG"):
        stats_process.run(f"{targets}:stall", files[:23], in_flight=7, on_batch=segfault, at=[20])


def test_a_child_killed_by_the_kernel_is_reported_as_maybe_out_of_memory(tmp_path, monkeypatch, targets):
    children = _Children(monkeypatch)
    files = _jpegs(tmp_path, 4)
    with pytest.raises(UserError, match=r"died by SIGKILL \(out of memory\?\)"):
        stats_process.run(
            f"{targets}:stall", files, in_flight=4, on_batch=lambda at: children.started[-1].kill(), at=[0]
        )


def test_a_child_that_exits_without_a_result_says_so_without_blaming_a_file(tmp_path, targets):
    files = [_broken(tmp_path / "bad.JPEG")]
    with pytest.raises(UserError, match=r"process exited with status 3 before reporting a result"):
        stats_process.run(f"{targets}:exit_with", files, in_flight=1, status=3)


def test_the_signals_a_run_watches_do_not_stop_the_childs_pass(tmp_path, monkeypatch, targets):
    children = _Children(monkeypatch)
    files = _jpegs(tmp_path, 2)

    def signal_it(at: int) -> None:
        assert children.started[-1].poll() is None
        for name in stats_process.PARENTS_SIGNALS:
            children.started[-1].send_signal(getattr(signal, name))

    woke = stats_process.run(f"{targets}:stall", files, in_flight=2, on_batch=signal_it, at=[0], seconds=1.0)
    assert woke == "woke after 2 files"


def test_a_working_directory_module_does_not_shadow_the_childs(tmp_path, monkeypatch):
    """A console script's path does not hold the working directory; `python -m` would put it first."""
    (tmp_path / "numpy.py").write_text("raise ImportError('the working directory was imported')\n")
    files = _jpegs(tmp_path / "images", 3)
    monkeypatch.chdir(tmp_path)
    assert stats_process.stream(files, batch_size=2, **OPTIONS)[1] == 3


def test_a_broken_jpeg_in_the_mean_image_pass_is_a_one_line_error_naming_it(tmp_path):
    """The mean-image pass reads through DALI's evaluation loader, which crashes the same way."""
    files = [_broken(tmp_path / "bad.JPEG"), *_jpegs(tmp_path / "good", 40)]
    cfg = DataConfig(
        name="folder", root=str(tmp_path), image_size=16, num_threads=1, stats=StatsConfig(batch_size=64)
    )
    for _ in range(2):
        with pytest.raises(UserError, match=r"cannot decode .*bad\.JPEG \("):
            pixel_mean.shard_sums(cfg, files, "dali", torch.device("cpu"))


def test_the_mean_image_pass_in_its_process_sums_as_in_this_one(tmp_path):
    files = _jpegs(tmp_path, 9)
    cfg = DataConfig(
        name="folder", root=str(tmp_path), image_size=16, num_threads=1, stats=StatsConfig(batch_size=4)
    )
    cpu = torch.device("cpu")
    isolated = pixel_mean.shard_sums(cfg, files, "dali", cpu)
    here = pixel_mean.crop_sums(files, cfg=cfg, decoder="dali", device=cpu)
    assert isolated.channels == here.channels and isolated.channels.num_images == 9
    assert np.array_equal(isolated.pixels, here.pixels)


def test_a_pass_logs_its_start_its_progress_and_its_end(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(stats_process, "PROGRESS_EVERY_S", 0.0)
    files = _jpegs(tmp_path, 12)
    with caplog.at_level("INFO", logger="resnet_repro"):
        stats_process.stream(files, batch_size=4, **OPTIONS)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("statistics pass")]
    assert lines[0].startswith("statistics pass: 12 images (this process's share)")
    assert [ln.split(" images/s")[0].split(", ")[0] for ln in lines[1:-1]] == [
        "statistics pass: 4 of 12 images (33%)",
        "statistics pass: 8 of 12 images (67%)",
    ]
    assert lines[-1].startswith("statistics pass: 12 images in ")
