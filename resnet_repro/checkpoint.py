"""Checkpoints: atomic writes, safe loads, and the RNG state that makes a resume exact."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnet_repro.config import UserError


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask sets it, for a
    moment, for every thread of the process)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename over `path`.

    A crash at any moment leaves either the old complete file or the new complete file.
    """
    _write_atomic(path, lambda f: torch.save(state, f))


def folder_problem(path: str | os.PathLike, what: str) -> str | None:
    """Why folder `path` (`what`: how the user named it, e.g. "--out") cannot be made or written:
    a part of its path is a file, or its nearest existing folder is read-only or not ours; None
    when it can. Checked before any work, so that nothing fails half-way in a traceback."""
    path = Path(path).expanduser()
    for part in [path, *path.parents]:
        if not part.exists():
            continue
        if not part.is_dir():
            return f"{what} {path} cannot be made: {part} is a file, not a folder"
        if not os.access(part, os.W_OK | os.X_OK):
            try:
                read_only = bool(os.statvfs(part).f_flag & os.ST_RDONLY)
            except OSError:
                read_only = False
            why = "a read-only file system" if read_only else "not writable by this user"
            return f"{what} {path} cannot be written: {part} is {why}"
        return None
    return None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`save_atomic` for a small text file (final.json, preempted.json): never half written."""
    _write_atomic(path, lambda f: f.write(text.encode()))


def _write_atomic(path: str | os.PathLike, write: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would (group members
        # on a shared cluster can read the checkpoints)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


_refused_dir_fsync: set[str] = set()


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable. Some file systems (FUSE, CIFS mounts) refuse to fsync a directory:
    the rename has succeeded, so the file is there; warn once per folder and go on."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        if str(folder) not in _refused_dir_fsync:
            _refused_dir_fsync.add(str(folder))
            logging.getLogger("resnet_repro").warning(
                f"the file system refused to fsync the folder {folder} ({e.strerror or e}): the files are "
                "written and renamed, but a power loss right after a save could lose the rename"
            )


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint can hold tensors and plain data, never code."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = next((c for c in ("checkpoints/last.pt", "last.pt") if (path / c).is_file()), None)
        hint = f"e.g. {path / inside}" if inside else "e.g. <run dir>/checkpoints/last.pt"
        raise UserError(f"checkpoint {path} is a folder; expected a checkpoint file, {hint}")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UserError(f"checkpoint {path} cannot be read ({e.strerror or e})") from e
    # torch.save writes a zip archive (since PyTorch 1.6) or, in the legacy format, a pickle (its
    # protocol byte 0x80 first); anything else is no checkpoint, whatever unpickling it would say
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):
        shown = "an empty file" if not head else f"its first bytes are {head!r}"
        raise UserError(
            f"checkpoint {path} is not a PyTorch checkpoint ({shown}; torch.save writes a zip archive)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data ({first})"
        ) from e
    except Exception as e:  # torch's loader raises many types on a file that is not a checkpoint
        raise UserError(
            f"checkpoint {path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def fingerprint(state: dict[str, Any]) -> str:
    """The position and a SHA-256 of the model weights of a loaded checkpoint: two ranks that read
    last.pt through different (e.g. stale network file system) views disagree here."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.get("model", {}).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    position = "/".join(str(state.get(k)) for k in ("epoch", "step", "epoch_step"))
    return f"{position}/{digest.hexdigest()[:16]}"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and the current CUDA device) generator states, in
    weights_only-loadable types."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only: the resuming
        # process may see a different number of GPUs (torchrun vs srun --gpus-per-task=1)
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy(), state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, torch.Tensor) and torch.cuda.is_available():  # older files held a list: skipped
        torch.cuda.set_rng_state(cuda)


class PreemptionWatch:
    """Remembers that one of `signals` arrived; the training loop polls it between steps.

    The handler only sets a flag: saving happens in the loop, at a step boundary, on every rank.
    """

    def __init__(self, signals: list[str]) -> None:
        import signal

        self.received: str | None = None
        self.names = list(signals)  # in the configured order
        self._previous = {}
        for name in signals:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        import signal

        if self.received is None:  # the first one decides (a requeue's SIGTERM may follow a USR2)
            self.received = signal.Signals(signum).name

    def agree(self, name: str) -> None:
        """Take the signal all ranks agreed on as the one received here (it may have reached another
        rank only), so that this rank's launcher handler is the agreed signal's."""
        self.received = name

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def launcher_handler(self) -> Callable[[int, Any], Any] | None:
        """The handler that was installed for the received signal before ours, when it is Python
        code (e.g. submitit's, which requeues its job on SIGUSR2); None for the default handler.
        Another watch's handler (an earlier run in this process that never restored its own) would
        only set a flag nobody reads: the handler that watch found installed counts instead."""
        import signal

        if self.received is None:
            return None
        sig = getattr(signal, self.received)
        previous = self._previous.get(sig)
        while isinstance(getattr(previous, "__self__", None), PreemptionWatch):
            previous = previous.__self__._previous.get(sig)  # the one that watch found installed
        return previous if callable(previous) else None

    def launcher_requeues(self) -> bool:
        """Whether the launcher's own handler for the received signal requeues the job: submitit's
        for its USR2 (checkpoint_and_try_requeue). Its handler for SIGTERM and SIGCONT only logs the
        signal ("bypass"), and another library's does what it does (torch's elastic agent leaves
        one that raises): after those the run decides its requeue itself."""
        handler = self.launcher_handler()
        return handler is not None and getattr(handler, "__name__", "") == "checkpoint_and_try_requeue"

    def hand_over(self) -> None:
        """After our checkpoint: let the launcher's own handler do what it does (submitit: requeue the
        job on rank 0 and exit; return on the other ranks)."""
        import signal

        handler = self.launcher_handler()
        if handler is not None:
            signum = getattr(signal, self.received or "")
            self.restore()
            handler(signum, None)
