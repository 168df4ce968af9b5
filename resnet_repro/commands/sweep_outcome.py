"""How a `train -m` sweep ended, for its exit status: the points that stopped on an error, read
back from their folders after the last job (error.txt, as `resnet-repro report` reads them),
however the launcher ran them (in this process, or as SLURM jobs through submitit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from hydra.experimental.callback import Callback

from resnet_repro.reporting.job_rows import NAN, job_status

# each sweep this process launched: its folder, and the reasons (error.txt) it held before
_SWEEPS: list[tuple[Path, dict[Path, int]]] = []


class SweepOutcome(Callback):
    """Hydra's callback (conf/config.yaml, hydra.callbacks): before the first job of a sweep, note
    its folder and the reasons already in it (a sweep folder reused by `hydra.sweep.dir`). Hydra
    resolves the folder's `${now:...}` from the same cache as its launcher does."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _SWEEPS.append((sweep_dir, _reasons(sweep_dir)))


def _reasons(sweep_dir: Path) -> dict[Path, int]:
    """The error.txt files under a sweep folder, with their modification times (ns)."""
    found = {}
    for path in sweep_dir.rglob("error.txt"):
        try:
            found[path] = path.stat().st_mtime_ns
        except OSError:  # removed while listed
            continue
    return found


class SweepEnd(NamedTuple):
    sweep_dir: Path | None  # the (first) sweep's folder; None when no sweep was launched
    failed: list[Path]  # job folders stopped by an error other than a non-finite loss
    diverged: list[Path]  # job folders a non-finite loss stopped (a result, as `report` counts it)


def ended_on_error() -> SweepEnd:
    """The job folders, sorted, whose error.txt the sweeps of this process wrote or rewrote."""
    failed, diverged = [], []
    for sweep_dir, before in _SWEEPS:
        for path, mtime in sorted(_reasons(sweep_dir).items()):
            if before.get(path) == mtime:
                continue
            job_dir = path.parent
            (diverged if job_status(job_dir, None) == NAN else failed).append(job_dir)
    return SweepEnd(_SWEEPS[0][0] if _SWEEPS else None, failed, diverged)


def first_line(job_dir: Path) -> str:
    """The first line of a job's error.txt ("" when it cannot be read)."""
    try:
        lines = (job_dir / "error.txt").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    return lines[0] if lines else ""
