"""Run outputs: TensorBoard scalars, metrics.jsonl and the console. Ranks != 0 get a no-op logger."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

from resnet_repro import __version__
from resnet_repro.checkpoint import write_text_atomic
from resnet_repro.config import LoggingConfig, RootConfig

REPO_DIR = Path(__file__).resolve().parents[2]


class MetricsLogger:
    """Writes `<run_dir>/metrics.jsonl` (one JSON object a line) and `<run_dir>/tb` events; both
    files are opened on first use, after `continue_from` when a launch resumes."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").touch()
        self._jsonl: Any = None
        self._tensorboard = cfg.tensorboard
        self._tb: Any = None
        self._purge_step: int | None = None
        self._events_kept: set[tuple[Any, int]] = set()  # (split, step) of rows whose events stay

    def continue_from(self, epochs_done: int, step: int, final_splits: Collection[str] = ()) -> None:
        """A launch resumed from this directory's checkpoint of `epochs_done` epochs and `step`
        steps takes over the outputs from there. What a launch wrote after that checkpoint, this
        one writes again, so: metrics.jsonl rows the checkpoint does not cover (an epoch whose rows
        were written but not its checkpoint, the final evaluation's rows `final_splits`, a line cut
        by a kill) move to metrics.superseded.jsonl; TensorBoard hides the events of steps after
        `step` (SummaryWriter's purge_step, which its reader applies); and a row written again at
        a step the checkpoint holds adds no second event (the one there is the same evaluation of
        the same weights)."""
        superseded = self._set_aside(lambda row: _covered(row, epochs_done, step, final_splits))
        self._events_kept = {
            (row.get("split"), row["step"])
            for row in superseded
            if isinstance(row.get("step"), int) and row["step"] <= step
        }
        self._purge_step = step + 1

    def start_afresh(self) -> None:
        """A launch that starts from nothing (no checkpoint of this directory: a first launch, one
        after a launch that ended before its first checkpoint, trainer.resume=never, or another
        run's checkpoint): every earlier row moves to metrics.superseded.jsonl and TensorBoard
        hides every earlier event."""
        self._set_aside(lambda row: False)
        self._purge_step = 0

    def _set_aside(self, covered: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Move the metrics.jsonl lines that are not rows `covered` keeps (cut lines included) to
        metrics.superseded.jsonl; the rows moved."""
        if self._jsonl is not None or self._tb is not None:
            raise RuntimeError("outputs are continued before the first row or event")
        path = self.run_dir / "metrics.jsonl"
        kept: list[str] = []
        moved: list[str] = []
        rows: list[dict[str, Any]] = []
        for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and covered(row):
                kept.append(line)
                continue
            moved.append(line)
            if isinstance(row, dict):
                rows.append(row)
        if moved:
            with open(self.run_dir / "metrics.superseded.jsonl", "a") as out:
                out.write("".join(line + "\n" for line in moved))
            write_text_atomic(path, "".join(line + "\n" for line in kept))
        return rows

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._tensorboard and math.isfinite(value):
            self._writer().add_scalar(tag, value, step)

    def text(self, tag: str, text: str) -> None:
        if self._tensorboard:
            self._writer().add_text(tag, text)

    def record(self, row: dict[str, Any], step: int) -> None:
        """One metrics.jsonl line; numeric fields also go to TensorBoard as <split>/<key>, flushed
        first: a row in metrics.jsonl has its events on disk."""
        split = row.get("split", "misc")
        if (split, step) in self._events_kept:  # written before, at a step the checkpoint holds
            self._events_kept.discard((split, step))
        else:
            for key, value in row.items():
                if key not in ("epoch", "split", "step") and isinstance(value, (int, float)):
                    self.scalar(f"{split}/{key}", float(value), step)
            self.flush()
        if self._jsonl is None:
            self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._jsonl.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        """TensorBoard's queued events to disk (metrics.jsonl is written line by line): before each
        checkpoint, so that a launch killed after it leaves every step up to it in tb/."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Close both files. On the way out of an error (a full disk) the TensorBoard writer may
        fail again: that is a warning here, the error that ended the run is the one reported."""
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            try:
                self._tb.close()
            except OSError as e:
                logging.getLogger("resnet_repro").warning(f"TensorBoard events in {self.run_dir / 'tb'}: {e}")

    def _writer(self) -> Any:
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_writer_thread_errors()
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self._purge_step)
        return self._tb


def _quiet_writer_thread_errors() -> None:
    """TensorBoard writes events in a thread of its own; an OSError there (a full disk) would print
    a thread traceback, then reach this process at its next event or flush, where the run reports
    it in one line. The thread's error is a one-line warning instead; every other thread's is
    printed as before."""
    global _writer_hook_installed
    if _writer_hook_installed:
        return
    previous = threading.excepthook

    def hook(args: Any) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            print(
                f"resnet-repro: warning: TensorBoard could not write its events: {args.exc_value}",
                file=sys.stderr,
            )
            return
        previous(args)

    threading.excepthook = hook
    _writer_hook_installed = True


_writer_hook_installed = False


def _covered(row: dict[str, Any], epochs_done: int, step: int, final_splits: Collection[str]) -> bool:
    """Whether a checkpoint of `epochs_done` epochs and `step` steps covers a metrics.jsonl row."""
    epoch, row_step = row.get("epoch"), row.get("step")
    if isinstance(epoch, int) and epoch > epochs_done:  # epochs count from 1 in the rows
        return False
    if isinstance(row_step, int) and row_step > step:
        return False
    return row.get("split") not in final_splits


class NullLogger:
    """Same interface; does nothing (ranks other than 0)."""

    def continue_from(self, epochs_done: int, step: int, final_splits: Collection[str] = ()) -> None:
        pass

    def start_afresh(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def text(self, tag: str, text: str) -> None:
        pass

    def record(self, row: dict[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def make_logger(is_main: bool, run_dir: Path, cfg: LoggingConfig) -> MetricsLogger | NullLogger:
    return MetricsLogger(run_dir, cfg) if is_main else NullLogger()


def git_info() -> dict[str, Any]:
    """The commit of the code that ran, and whether tracked files had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


# Where `train` has Hydra write its files (config, overrides) as a launch starts: they become the
# run's .hydra/ once the run goes on in its directory (write_run_files), not before; a resume refused
# for other settings must not leave them as the run's (report reads a job's settings there)
LAUNCH_HYDRA_DIR = ".hydra.launch"


def adopt_launch_files(run_dir: Path) -> None:
    """This launch's Hydra files as the run's .hydra/ (the run goes on here, fresh or resumed)."""
    staged = run_dir / LAUNCH_HYDRA_DIR
    if staged.is_dir():
        shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
        os.replace(staged, run_dir / ".hydra")


def settle_launch_files(run_dir: Path) -> None:
    """At a launch's end: Hydra files it never adopted go where an earlier launch's exist (it was
    refused, or failed before deciding), and become .hydra/ where none do (a failed sweep point's
    report row still needs its overrides)."""
    staged = run_dir / LAUNCH_HYDRA_DIR
    if not staged.is_dir():
        return
    if (run_dir / ".hydra").is_dir():
        shutil.rmtree(staged, ignore_errors=True)
    else:
        os.replace(staged, run_dir / ".hydra")


def write_run_files(
    run_dir: Path, cfg: RootConfig, derived: Any, extra: dict[str, Any], notes: list[str] | None = None
) -> None:
    """config.yaml (resolved; `notes` as comment lines at its end, so it still loads as a config),
    run.json (version, git, command line, derived values, `extra`), and this launch's Hydra files
    as .hydra/: the run goes on in this directory."""
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    adopt_launch_files(run_dir)
    comments = "".join(f"# {line}\n" for line in notes or [])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)) + comments)
    info = {
        "version": __version__,
        "git": git_info(),
        "command": sys.argv,
        "derived": asdict(derived),
        **extra,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")


class StepTimer:
    """Wraps the batch iterator: time blocked waiting for the next batch vs. the whole step.

    A step is the time between two batches arriving, so wait + compute = step. On CUDA the
    per-step host sync of the non-finite guard keeps host time honest; with the guard off,
    GPU work may overlap the next wait.
    """

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.steps: list[float] = []

    def wrap(self, batches):
        it = iter(batches)
        last = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            now = time.perf_counter()
            self.waits.append(now - t0)
            if len(self.waits) > 1:
                self.steps.append(now - last)
            last = now
            yield item

    def summary(self) -> dict[str, float]:
        if not self.waits:
            return {}
        # the first wait (pipeline start-up) has no step of its own: reported apart
        startup = {"startup_wait_s": self.waits[0]}
        if not self.steps:
            return startup
        steps = sorted(self.steps)
        total = sum(self.steps)
        return {
            **startup,
            "data_wait_fraction": sum(self.waits[1:]) / total if total > 0 else 0.0,
            "step_time_p50_s": steps[len(steps) // 2],
            "step_time_p90_s": steps[min(len(steps) - 1, int(0.9 * len(steps)))],
        }


def peak_memory_mb(device_type: str) -> float:
    """Peak GPU memory allocated by torch on CUDA; the process's peak RSS elsewhere."""
    if device_type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
