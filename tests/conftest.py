"""Shared helpers and fixtures.

`make_image_folder` and `compose` are plain functions: `from conftest import make_image_folder, compose`
works because pytest puts this folder on sys.path (rootdir-relative tests/ without __init__.py).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"

# (width, height): square, landscape, portrait, very wide, very tall, small, odd sizes
DEFAULT_SIZES: tuple[tuple[int, int], ...] = (
    (48, 48),
    (64, 40),
    (36, 60),
    (96, 24),
    (20, 80),
    (17, 23),
    (75, 51),
)


def drop_checkpoints(folder: Path) -> None:
    """Delete the checkpoints (`*.pt`) under `folder`: the bulk of a finished run's disk, kept
    alive by a module's fixture until the session ends otherwise."""
    for path in Path(folder).rglob("*.pt"):
        path.unlink(missing_ok=True)


def make_image_folder(
    root: str | Path,
    split: str,
    classes: dict[str, int],
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    grayscale_every: int = 0,
    seed: int = 0,
) -> list[Path]:
    """Write `root/split/<class>/<i>.JPEG` for each class, `classes[name]` images per class.

    Image k (counting over all classes in sorted order) has size `sizes[k % len(sizes)]` (width, height)
    and random content from a fixed RNG; with `grayscale_every=n > 0`, every n-th image is a mode "L" JPEG.
    Returns the written paths in sorted-class, sorted-name order (the order `list_split` yields).
    """
    rng = np.random.default_rng(seed)
    written: list[Path] = []
    k = 0
    for name in sorted(classes):
        folder = Path(root) / split / name
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(classes[name]):
            w, h = sizes[k % len(sizes)]
            gray = grayscale_every > 0 and k % grayscale_every == grayscale_every - 1
            if gray:
                pixels = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
                img = Image.fromarray(pixels, mode="L")
            else:
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                img = Image.fromarray(pixels, mode="RGB")
            path = folder / f"{i}.JPEG"
            img.save(path, format="JPEG", quality=90)
            paths.append(path)
            k += 1
        written.extend(sorted(paths, key=lambda p: p.name))
    return written


def _loggers() -> list[logging.Logger]:
    manager = logging.root.manager
    return [logging.root, *(lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger))]


@pytest.fixture(autouse=True)
def _log_files_go_with_their_test():
    """The log files a test opens are closed and detached at its end. An in-process CLI run leaves
    Hydra's job log (<run dir>/cli.log) on the root logger, which a process that ends never
    notices; once the test's folder is gone, a later logging.config.dictConfig (submitit runs one
    when it is imported) closes it, and the next log line anywhere fails to reopen it. Likewise the
    console handlers a run under hydra.main attaches: they write to the test's captured output,
    which is closed after it ("--- Logging error ---" in the next test's output). pytest's own
    handlers are its to remove."""
    before = {id(h) for logger in _loggers() for h in logger.handlers}
    yield
    for logger in _loggers():
        for handler in list(logger.handlers):
            ours = isinstance(handler, logging.StreamHandler) and not type(handler).__module__.startswith(
                "_pytest"
            )
            if ours and id(handler) not in before:
                logger.removeHandler(handler)
                handler.close()


# The signals the tool handles: preemption, time-limit warnings, cancels, Ctrl-C, a resume after SUSPEND
_HANDLED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGCONT", "SIGHUP")
)


@pytest.fixture(autouse=True)
def _signal_handlers_are_given_back():
    """A test after which a signal's handler is not what it was fails (and the handler is put back).
    Hydra's basic launcher runs a sweep's points in one process: a run that leaves its preemption
    watch installed changes what the next point does with its signals; and a later test in the same
    worker would see a handler it never set."""
    before = {sig: signal.getsignal(sig) for sig in _HANDLED_SIGNALS}
    yield
    changed = {
        sig.name: signal.getsignal(sig) for sig in _HANDLED_SIGNALS if signal.getsignal(sig) != before[sig]
    }
    for sig, handler in before.items():
        signal.signal(sig, handler)
    if changed:
        pytest.fail(f"the test left other signal handlers installed than it found: {changed}")


@pytest.fixture
def image_folder_factory(tmp_path):
    """`image_folder_factory(split, classes, **kw)` writes under a per-test tmp folder; returns the root."""

    def factory(split: str, classes: dict[str, int], **kwargs) -> Path:
        make_image_folder(tmp_path, split, classes, **kwargs)
        return tmp_path

    return factory


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False):
    """Compose conf/config.yaml with `overrides` as Hydra would at start-up; returns the DictConfig
    (with its `hydra` node, e.g. hydra.job.override_dirname, when return_hydra_config)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from resnet_repro.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return hydra_compose(
                config_name="config", overrides=list(overrides or []), return_hydra_config=return_hydra_config
            )
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="session", autouse=True)
def _commands_write_outside_the_checkout(tmp_path_factory):
    """The tests run in a folder of their own: a command run without hydra.run.dir (eval and stats
    write runs/eval/<time>, runs/stats/<time>; a refused train its runs/<name>/<id>/.hydra) must not
    leave its files in the checkout's runs/, beside a developer's own runs. A test that needs the
    checkout (make, a script's relative path) names it as its subprocess's cwd."""
    import os

    here = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(here)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The demo dataset, built once per test session into a tmp folder."""
    from resnet_repro.data.demo import build_demo_dataset

    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "digits")


# A small evaluation/training transform shared by the DALI and torchvision backend tests
S = 16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def small_transform(train: bool, **kw):
    from resnet_repro.data.dali import Transform

    args = dict(train=train, image_size=S, crop_ratio=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    args.update(kw)
    return Transform(**args)


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`resnet-repro <args>` in a subprocess of this interpreter, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "resnet_repro", *args], capture_output=True, text=True, timeout=timeout
    )


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_SUITE_START: list[float] = []

# The most the suite's temporary folders hold at once (a passing test's tmp_path goes at its end, a
# SLURM version's checkpoints after its tests): 2.3 GiB measured, while one SLURM version's 21
# scenarios hold their runs' checkpoints; with room for the runs' own free-space checks
SUITE_DISK_GIB = 3.0


class DiskWatch:
    """The free space of the file system under `path`, at the start and the least seen since,
    sampled every few seconds by a daemon thread (the suite's folders come and go between checks).
    It reads os.statvfs, bound at the start: tests patch shutil.disk_usage to fake a full disk."""

    def __init__(self, path: Path, every_s: float = 5.0) -> None:
        import os
        import threading

        self.path = path
        self._statvfs = os.statvfs
        self.start_gib = self._free_gib()
        self.least_gib = self.start_gib
        self._stop = threading.Event()
        self._every_s = every_s
        self._thread = threading.Thread(target=self._watch, name="disk-watch", daemon=True)
        self._thread.start()

    def _free_gib(self) -> float:
        st = self._statvfs(self.path)
        return st.f_bavail * st.f_frsize / 2**30

    def _watch(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.least_gib = min(self.least_gib, self._free_gib())
            except OSError:
                return

    def stop(self) -> str:
        self._stop.set()
        self._thread.join(timeout=10)
        start, least = f"{self.start_gib:.1f}", f"{self.least_gib:.1f}"
        return f"{start} GiB free under {self.path} at the start, {least} at the least"


_DISK: list[DiskWatch] = []


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def pytest_configure(config):
    """Torch's threads per process when pytest-xdist runs workers side by side: the CPUs shared out
    over them as the local launch shares them over its workers (OMP_NUM_THREADS, set here in the
    controller before xdist starts the workers, so they and every process a test starts inherit
    it), unless the variable is set already. Each process would otherwise start a thread per CPU:
    two workers' trainings on 2 cores oversubscribed them (the session took 937 s, 801 s with one
    thread each)."""
    import os

    from resnet_repro.cluster.distributed import worker_threads

    workers = getattr(config.option, "numprocesses", None)
    if isinstance(workers, int) and workers >= 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(worker_threads(workers))


def pytest_sessionstart(session):
    import tempfile
    import time

    _SUITE_START.append(time.monotonic())
    watch = DiskWatch(_existing(Path(session.config.option.basetemp or tempfile.gettempdir()).resolve()))
    _DISK.append(watch)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if watch.start_gib < SUITE_DISK_GIB and reporter is not None:
        reporter.write_line(
            f"suite: warning: {watch.start_gib:.1f} GiB free under {watch.path}; the suite needs about "
            f"{SUITE_DISK_GIB:g} GiB there: tests that train will fail with 'free some space'"
        )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Every suite ends with the machine it ran on and its wall time, so each CI log tells both
    (machines differ up to 9x in speed between sessions; compare times on one machine only)."""
    import os
    import time

    import torch

    elapsed = f"{time.monotonic() - _SUITE_START[0]:.0f} s" if _SUITE_START else "unknown time"
    capability = torch.backends.cpu.get_cpu_capability()
    requested = os.environ.get("ATEN_CPU_CAPABILITY")
    note = f" (ATEN_CPU_CAPABILITY={requested})" if requested else ""
    threads = os.environ.get("OMP_NUM_THREADS")
    per_process = f", OMP_NUM_THREADS={threads}" if threads else ""
    machine = f"{cpu_model()}, {os.cpu_count()} cores, ATen capability {capability}{note}{per_process}"
    terminalreporter.write_line(f"suite: {elapsed} of tests on {machine}")
    if _DISK:
        terminalreporter.write_line(f"suite: {_DISK[0].stop()}")


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of run_dir/tb as TensorBoard's own reader gives it: (step, value) per event,
    after its purge of events a resumed writer superseded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


_READ_TEXT = Path.read_text  # the real one, whatever a test has patched since


def deny_reading(monkeypatch, denied) -> None:
    """Path.read_text raises PermissionError (EACCES) for each path `denied(path)` is true of: a file
    this user may not read, which running as root cannot make with chmod."""

    def read_text(self, *args, **kwargs):
        if denied(self):
            raise PermissionError(13, "Permission denied", str(self))
        return _READ_TEXT(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
