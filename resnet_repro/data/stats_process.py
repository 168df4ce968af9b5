"""The statistics passes' DALI decoding in a process of its own, so that a crash in DALI's decoder
is a one-line error naming the file rather than the silent death of the run.

DALI 2.4's CPU decoder can kill its process (SIGSEGV in a decoder worker thread) when one image of
a batch cannot be decoded: the error raised for the bad sample races with the decoding of the
batch's other samples. Reproduced here with one broken JPEG with 40 good ones in a batch of 64: the
per-channel pass died in 3 of 4 runs, the evaluation loader the mean-image pass uses in 3 of 5,
the training loader in 5 of 5 (exit 139, no error line); a run that computes its statistics at its
start died there without saying why.

So the per-channel pass (channel_sums.stream) and the mean-image pass (pixel_mean.crop_sums) run in
a child (a fresh interpreter running this module, without the working directory on its path). The
child reports the first file of each batch before running it; when it dies by a signal, the parent
decodes with PIL the batches DALI may have had in flight (that one and the prefetched ones) and
names the undecodable file, or, when they all decode, where it died. The child ignores the signals
a training run watches for preemption (the parent decides what they mean, as it did when the pass
ran in the run's process) and dies with its parent. The training loader decodes in the run's
process (its batches feed the GPU there); the default normalization reads every training image in
the statistics pass first, and `resnet-repro verify-data` checks every file for the others.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resnet_repro.config import UserError
from resnet_repro.data import channel_sums, sharding

MODULE = "resnet_repro.data.stats_process"
# `python -c` with the working directory taken off the path (as a console script has it: a numpy.py
# or a resnet_repro/ there must not be imported), the parent's package dir appended if missing
CHILD_START = (
    "import runpy, sys; sys.path.pop(0); "
    "sys.argv[2] in sys.path or sys.path.append(sys.argv[2]); "
    f"runpy.run_module({MODULE!r}, run_name='__main__')"
)
# the parent's business: SLURM's time-limit warning and preemption, a requeue, a cancel, Ctrl-C
PARENTS_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGHUP")
PR_SET_PDEATHSIG = 1
PROGRESS_EVERY_S = 60.0

log = logging.getLogger("resnet_repro")


def compute_stats(
    files: Sequence[str],
    *,
    resize_shorter: int | None,
    num_threads: int,
    batch_size: int,
    device: Any,
    shard_id: int = 0,
    num_shards: int = 1,
    reduce_in: str = "auto",
    decoder: str = "dali",
) -> channel_sums.PartialSums:
    """Exact per-channel sums over this shard's images (contiguous chunks, every image in exactly
    one shard: resnet_repro.data.sharding.eval_indices). Merge the shards with `merge` or `+`, or
    all-reduce `to_arrays()`; then `finalize` (resnet_repro.data.channel_sums).

    Every pixel of every image counts, at the image's own resolution, unless `resize_shorter` is
    set (then after resizing the shorter side to it, like the evaluation transform before its crop).
    `device`: "cpu" / "cuda" / "cuda:1" or a torch.device; on CUDA decoding is "mixed" (nvJPEG).
    `decoder`: "dali" (in a child process: `stream`), or torchvision's "pil" / "decode_jpeg" (on
    the CPU, without DALI, in this process).
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id={shard_id} is not in [0, num_shards={num_shards})")
    shard = [str(files[i]) for i in sharding.eval_indices(len(files), rank=shard_id, world_size=num_shards)]
    if decoder != "dali":
        sums, _ = channel_sums.stream_torchvision(
            shard,
            decoder=decoder,
            resize_shorter=resize_shorter,
            num_threads=num_threads,
            batch_size=batch_size,
        )
        return sums
    sums, _ = stream(
        shard,
        resize_shorter=resize_shorter,
        num_threads=num_threads,
        batch_size=batch_size,
        device=device,
        reduce_in=reduce_in,
    )
    return sums


def stream(
    files: Sequence[str],
    *,
    resize_shorter: int | None,
    num_threads: int,
    batch_size: int,
    device: Any,
    reduce_in: str = "auto",
    prefetch: int = 2,
    on_batch: Callable[[int], object] | None = None,
) -> tuple[channel_sums.PartialSums, int]:
    """channel_sums.stream over `files` in a child process: (sums, images processed).
    `on_batch(i)`: called here as the child starts the batch whose first file is `files[i]`."""
    files = [str(f) for f in files]
    if not files:
        return channel_sums.PartialSums(), 0
    return run(
        "resnet_repro.data.channel_sums:stream",
        files,
        in_flight=batch_size * (prefetch + 1),
        on_batch=on_batch,
        resize_shorter=resize_shorter,
        num_threads=num_threads,
        batch_size=batch_size,
        device=str(device),
        reduce_in=reduce_in,
        prefetch=prefetch,
    )


def run(
    target: str,
    files: list[str],
    *,
    in_flight: int,
    on_batch: Callable[[int], object] | None = None,
    **kwargs,
) -> Any:
    """`module:function` called in a child process as function(files, on_batch=..., **kwargs),
    its result (or its UserError) brought back. The function calls on_batch(i) before each batch,
    i the index in `files` of the batch's first file; `in_flight`: how many files from there DALI
    may be decoding at once (the batch and the prefetched ones)."""
    request = {"target": target, "files": files, "kwargs": kwargs, "parent": os.getpid()}
    progress = _Progress(len(files), on_batch)
    at, (kind, payload), code = _run_child(request, progress.batch)
    if kind == "done":
        progress.finished()
        return payload
    if kind == "user_error":
        raise UserError(payload)
    if kind == "error":
        raise RuntimeError(f"the statistics pass failed in its process:\n{payload}")
    raise _death(code, files, at, in_flight)


class _Progress:
    """A log line when a pass starts, every PROGRESS_EVERY_S while it runs, and when it ends: on
    ImageNet a pass takes minutes, which would otherwise pass without a word."""

    def __init__(self, total: int, then: Callable[[int], object] | None) -> None:
        self.total, self.then = total, then
        self.start = self.last = time.monotonic()
        log.info(f"statistics pass: {total:,} images (this process's share), decoded in a process of its own")

    def batch(self, at: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S and 0 < at < self.total:
            self.last = now
            rate = at / (now - self.start)
            log.info(
                f"statistics pass: {at:,} of {self.total:,} images ({100 * at / self.total:.0f}%), "
                f"{rate:,.0f} images/s, about {(self.total - at) / rate:,.0f} s left"
            )
        if self.then is not None:
            self.then(at)

    def finished(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.total / elapsed
        log.info(f"statistics pass: {self.total:,} images in {elapsed:,.1f} s ({rate:,.0f} images/s)")


def _run_child(request: dict, on_batch: Callable[[int], object] | None) -> tuple[int, tuple[str, Any], int]:
    """Start the child, send it `request`, follow its messages: (the last batch it started, its
    final message or ("died", None), its exit code)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    read_fd, write_fd = os.pipe()
    child: subprocess.Popen | None = None
    at, final = 0, ("died", None)
    try:
        with os.fdopen(read_fd, "rb") as messages:
            # the child starts with the parent's signals blocked (a mask survives exec) and unblocks
            # them once it ignores them: a SLURM warning arriving while it starts cannot kill it
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _parents_signals())
            try:
                child = subprocess.Popen(
                    [sys.executable, "-c", CHILD_START, str(write_fd), package_parent],
                    stdin=subprocess.PIPE,
                    pass_fds=(write_fd,),
                )
            finally:
                os.close(write_fd)
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            assert child.stdin is not None
            try:
                with child.stdin:
                    pickle.dump(request, child.stdin)
            except BrokenPipeError:  # it died before reading it all: its exit code says how
                pass
            while True:
                try:
                    kind, payload = pickle.load(messages)
                except (EOFError, pickle.UnpicklingError):  # the end, or a message cut by its death
                    break
                if kind == "at":
                    at = payload
                    if on_batch is not None:
                        on_batch(at)
                else:
                    final = (kind, payload)
        code = child.wait()
    finally:
        if child is not None and child.poll() is None:  # the parent is leaving (an exception,
            child.kill()  # Ctrl-C): the child goes too
            child.wait()
    return at, final, code


def _death(code: int, files: list[str], at: int, in_flight: int) -> UserError:
    """The error for a child that ended without a result, having started the batch at `at`."""
    if code >= 0:  # it exited (an import error, a broken request): its traceback is on stderr
        return UserError(
            f"the statistics pass's process exited with status {code} before reporting a result "
            "(its error is printed above)"
        )
    from resnet_repro.data.dali import reading_window, undecodable

    how = f"by {signal.Signals(-code).name}"
    at %= len(files)  # past the end: DALI reads on into the next pass
    window = reading_window(files, at, in_flight)
    bad = undecodable(window)
    if bad:
        return channel_sums.undecodable_error(bad)
    hint = " (out of memory?)" if code == -signal.SIGKILL else ""
    return UserError(
        f"the statistics pass's DALI process died {how}{hint} while decoding {window[0]} .. {window[-1]} "
        f"(images {at}.. of {len(files)}), which PIL decodes; `resnet-repro verify-data data.root=...` "
        "checks every file, and data.backend=torchvision computes the statistics without DALI"
    )


# --------------------------------------------------------------------------------------- the child


def _parents_signals() -> list[signal.Signals]:
    return [getattr(signal, name) for name in PARENTS_SIGNALS]


def leave_signals_to_parent(parent: int) -> None:
    """In a child process: ignore the signals its parent acts on (the parent decides what they
    mean, and ends the child) and die when the parent does."""
    for sig in _parents_signals():
        signal.signal(sig, signal.SIG_IGN)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent exits (a parent killed by SIGKILL cannot
    clean up); where prctl is missing, the parent's `finally` is the only guard."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request above
        os._exit(1)


def _child(fd: int) -> int:
    for sig in _parents_signals():
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _parents_signals())  # any that came meanwhile are dropped
    request = pickle.load(sys.stdin.buffer)
    _die_with_parent(request["parent"])
    with os.fdopen(fd, "wb") as out:

        def send(kind: str, payload: Any) -> None:
            pickle.dump((kind, payload), out)
            out.flush()

        module, name = request["target"].split(":")
        try:
            function = getattr(importlib.import_module(module), name)
            result = function(request["files"], on_batch=lambda i: send("at", i), **request["kwargs"])
            done = pickle.dumps(("done", result))
        except UserError as e:
            send("user_error", str(e))
            return 0
        except Exception:
            send("error", traceback.format_exc())
            return 1
        out.write(done)
    return 0


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1])))
