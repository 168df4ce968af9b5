"""How a `train -m` sweep ended, for its exit status: the points that stopped on an error, read
back from their folders after the last job (error.txt, as `resnet-repro report` reads them),
however the launcher ran them (in this process, or as SLURM jobs through submitit).

Each point's folder is the one its launcher gave it: Hydra's own sweep config of the point
(`load_sweep_config`, with the sweep's `${now:...}`), so a sweep over `experiment=` or `name=`,
whose points land in different sweep folders, is read in each. A reason counts when it is newer
than the point's launch (the Hydra files written when it started): a folder reused by
`hydra.sweep.dir` keeps an earlier sweep's reasons, which do not."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from hydra.experimental.callback import Callback

from resnet_repro.reporting.job_rows import NAN, job_status, reason_line

FAILED, DIVERGED = "failed", "diverged"

# each sweep this process ran: (sweep folder, job folder) of each point, known after its last job
# (None: not knowable here)
_ENDED: list[list[tuple[Path, Path]] | None] = []


class SweepOutcome(Callback):
    """Hydra's callback (conf/config.yaml, hydra.callbacks): after the last job of a sweep, note
    the folder of each of its points."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        _ENDED.append(job_dirs(config))


def job_dirs(config: Any) -> list[tuple[Path, Path]] | None:
    """Each point's (sweep folder, job folder), as the launchers name them: from the point's sweep
    config with its job number (and, under the basic launcher, its job id); None when a folder
    depends on what only the job knows (a subdir named after SLURM's job id)."""
    from hydra.core.global_hydra import GlobalHydra

    from resnet_repro.planning.plan import expand_sweep

    loader = GlobalHydra.instance().config_loader()
    basic = "BasicLauncher" in str(config.hydra.launcher.get("_target_", ""))
    try:
        points = expand_sweep(list(config.hydra.overrides.task), multirun=True)
        return [point_dirs(loader, config, p, num, num if basic else None) for num, p in enumerate(points)]
    except Exception:  # noqa: BLE001 - any unresolvable folder: the outcome is not known here
        return None


def point_dirs(loader: Any, config: Any, overrides: list[str], num: int, job_id: Any) -> tuple[Path, Path]:
    """A sweep point's (sweep folder, job folder) from Hydra's sweep config of the point, with the
    job number and id its launcher gives it (None: left unset)."""
    from omegaconf import open_dict

    job = loader.load_sweep_config(config, overrides)
    with open_dict(job.hydra.job):
        job.hydra.job.num = num
        if job_id is not None:
            job.hydra.job.id = job_id
    sweep_dir = Path(str(job.hydra.sweep.dir))
    return sweep_dir, sweep_dir / str(job.hydra.sweep.subdir)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def outcome(job_dir: Path) -> str | None:
    """FAILED or DIVERGED when the point's reason (error.txt) was written after its launch (a
    non-finite stop of this launch: DIVERGED, as `report` counts it); else None."""
    from resnet_repro.training.metrics import LAUNCH_HYDRA_DIR

    reason = _mtime(job_dir / "error.txt")
    if reason is None:
        return None
    # the Hydra files of the point's launch, written when it started (in LAUNCH_HYDRA_DIR until the
    # run settles them into .hydra)
    written = (_mtime(job_dir / folder / "overrides.yaml") for folder in (".hydra", LAUNCH_HYDRA_DIR))
    launched = max((t for t in written if t is not None), default=None)
    if launched is not None and reason < launched:
        return None  # an earlier launch's reason
    nonfinite = _mtime(job_dir / "nonfinite_report.json")
    this_launch = nonfinite is not None and (launched is None or nonfinite >= launched)
    return DIVERGED if this_launch and job_status(job_dir, None) == NAN else FAILED


class SweepEnd(NamedTuple):
    points: int  # the sweep's points
    failed: list[Path]  # job folders stopped by an error other than a non-finite loss
    diverged: list[Path]  # job folders a non-finite loss stopped (a result, as `report` counts it)
    sweep_dirs: list[Path]  # the folders the points are in, for `report`


def ended_on_error() -> SweepEnd | None:
    """The outcome of the sweep this process ran last, taken once (None: no sweep ended here, or
    its points' folders are not known)."""
    if not _ENDED:
        return None
    folders = _ENDED.pop()
    _ENDED.clear()
    if folders is None:
        return None
    outcomes = {job_dir: outcome(job_dir) for _, job_dir in folders}
    return SweepEnd(
        len(folders),
        [f for f, o in outcomes.items() if o == FAILED],
        [f for f, o in outcomes.items() if o == DIVERGED],
        sorted({sweep_dir for sweep_dir, _ in folders}),
    )


def first_line(job_dir: Path) -> str:
    """The first line of a job's error.txt, as `report` reads it ("" when it cannot be read)."""
    try:
        return reason_line(job_dir)
    except OSError:
        return ""
