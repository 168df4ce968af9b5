"""The parts of `rehearse`'s cheap check and what it finds (`Shape`): the GPU-only settings a CPU
runs instead, the launch as `train` would start it, the real run's directory (a fresh start or the
checkpoint it resumes), the memory line on the target GPU, and `--scan`'s read of every listed file."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_repro.config import RootConfig, UserError


@dataclass(frozen=True)
class Shape:
    """The job as the real run would start it (plain data: printed and written as JSON)."""

    processes: int
    launch: str
    device: str
    per_process_batch: int
    global_batch: int
    peak_lr: float
    train_images: int | None
    train_images_source: str
    steps_per_epoch: int | None
    epochs: int
    precision: str
    change_points: list[str]
    deviations: list[str]
    reference: str
    plan: dict[str, Any] | None  # plan.estimate at plan.img_per_s_per_gpu when given, images known
    activation_mb_per_image: float  # saved for the backward pass at the largest training crop (fp32)
    data_source: str = ""
    stats: str | None = None  # what the real run does about its statistics (None: data not read)
    substituted: list[str] = dataclasses.field(default_factory=list)  # GPU-only settings run on CPU
    scanned: str | None = None  # --scan: every listed file's header read, in how long
    run_dir: str | None = None  # the real run's directory: a fresh start or the checkpoint it resumes
    memory: str | None = None  # the estimate per process on the target GPU (None: a CPU run)
    # what train warns of at its start: a milestone or progressive ramp past the last epoch
    warnings: list[str] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def listing_warnings() -> Iterator[list[str]]:
    """The warnings the run's own code logs meanwhile (its data listing's: exclusions that match no
    file), gathered for the verdict instead of lost: a check-only rehearsal has no log."""
    found: list[str] = []

    class Gather(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(record.getMessage())

    logger, handler = logging.getLogger("resnet_repro"), Gather(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)


def cpu_equivalent(cfg: RootConfig) -> tuple[RootConfig, list[str]]:
    """On a host without CUDA, the settings that only a GPU can run, checked for consistency by
    `validate` and replaced by what the CPU runs instead (each said): the real run's job is
    rehearsed, not refused for the login node it is rehearsed on."""
    import torch

    if torch.cuda.is_available() or cfg.trainer.device == "cpu":  # a CPU run refuses them as train does
        return cfg, []
    said, trainer, model = [], cfg.trainer, cfg.model
    if trainer.device == "cuda":
        trainer = dataclasses.replace(trainer, device="cpu")
        said.append("trainer.device=cuda -> cpu")
    if model.sync_bn:
        model = dataclasses.replace(model, sync_bn=False)
        said.append("model.sync_bn=true -> BatchNorm per process (SyncBatchNorm needs CUDA)")
    if trainer.compile:
        trainer = dataclasses.replace(trainer, compile=False)
        said.append("trainer.compile=true -> eager (a CPU compile rehearses nothing of the GPU's graphs)")
    if not said:
        return cfg, []
    return dataclasses.replace(cfg, trainer=trainer, model=model), said


def real_run_dir(overrides: list[str], cfg: RootConfig, multirun: bool) -> Path | None:
    """The directory `train` with these overrides would write (hydra.run.dir, else the rerun
    directory runs/<name>/cfg-<hash> of trainer.resume=auto outside SLURM); None where it is a
    fresh one each time (a sweep's, a start time's, a SLURM job's)."""
    for item in overrides:
        if item.startswith("hydra.run.dir=") and not multirun:
            return Path(item.split("=", 1)[1]).expanduser()
    from resnet_repro.training.resume import rerun_dir_name

    name = None if multirun else rerun_dir_name(cfg)
    return None if name is None else Path("runs") / cfg.name / name


def check_run_directory(
    cfg: RootConfig, run_dir: Path, derived: Any, classes: tuple[str, ...] | None = None
) -> str:
    """What the real run meets in its directory, as it meets it: a live lock (refused), a
    trainer.resume file that is not there, a last.pt of another job, other settings or other class
    names (`classes`: the data's, when listed) (refused);
    else whether it starts fresh or resumes, in words."""
    from resnet_repro import checkpoint
    from resnet_repro.training.resume import check_job_shape, check_lock, check_resumable, resume_path

    stale = check_lock(run_dir)  # the directory can be made and written: rehearse.check asked first
    path = resume_path(cfg, run_dir)
    if path is None:
        return f"{run_dir}: a fresh start" + (f" (its stale lock is taken over: {stale})" if stale else "")
    if derived.steps_per_epoch == 0:  # the data's size unknown here: the job shape cannot be compared
        return f"{run_dir}: resumes {path} (its job shape not checked: the data was not read)"
    state = checkpoint.load(path)
    check_resumable(state, path, derived, cfg, classes=classes)
    shape_change = check_job_shape(state, path, derived)
    return f"{run_dir}: resumes {path}" + (f" ({shape_change})" if shape_change else "")


DEFAULT_GPU_GIB = 80.0  # the target GPU without --gpu-memory and without a visible GPU: an 80 GB H100/A100


def visible_gpu_gib() -> float | None:
    """This machine's GPU memory (GiB) when CUDA is here, else None."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30


def memory_line(est: Any, gpu_gib: float) -> str:
    """The memory fit in words: the estimate per process on the target GPU and its two largest parts."""
    from resnet_repro.planning.memory_fit import article

    big = sorted(
        (
            (name, getattr(est, name))
            for name in ("activations", "pipeline_buffers", "cudnn_workspace", "context")
        ),
        key=lambda kv: -kv[1],
    )[:2]
    parts = ", ".join(f"{name.replace('_', ' ')} {gib:.1f}" for name, gib in big)
    return (
        f"about {est.total:.1f} GiB per process of {article(f'{gpu_gib:.0f}')} {gpu_gib:.0f} GiB GPU "
        f"({parts} GiB; an upper estimate)"
    )


def scan_files(cfg: RootConfig, splits: Any) -> str:
    """--scan: every listed image's header and end marker (verify-data without decoding), with its
    progress bar and time; a file the run cannot read is refused here, not hours into the run."""
    from resnet_repro.data.imagenet_verify import ERROR_KINDS, verify_data

    summary = verify_data(
        Path(cfg.data.root).expanduser(),
        expect_imagenet=False,
        num_threads=max(1, cfg.data.num_threads),
        decode=False,
        progress=cfg.logging.progress,
        summary_path=None,
        classes=None,
    )
    listed = set(splits.train_full.files) | set(splits.test.files)
    bad = [i for i in summary["issues"] if i["kind"] in ERROR_KINDS and i["path"] in listed]
    if bad:
        raise UserError(
            f"{len(bad)} listed image(s) cannot be read, e.g. {bad[0]['path']} ({bad[0]['kind']}); the run "
            f"would fail on the first: `resnet-repro verify-data data.root={cfg.data.root}` writes the "
            "list to pass as data.exclude_files"
        )
    return f"{summary['images']:,} images' headers read in {summary['seconds']:.0f} s: none unreadable"


def launcher_description(launcher: Any, nproc: int) -> tuple[bool, int, str]:
    """launch_description for a job of a command line, given the Hydra launcher it composed with
    (`hydra.launcher`): under submitit's SLURM launcher each job is nodes x tasks_per_node srun
    tasks, one rank each."""
    if not runs_elsewhere(launcher):
        return launch_description(nproc)
    nodes, tasks = int(launcher.nodes), int(launcher.tasks_per_node)
    world = nodes * tasks
    if world == 1:  # one task is not an srun world (distributed.detect): train starts nproc workers
        if nproc == 1:
            return False, 1, "one SLURM task of the submitit launcher"
        return (
            True,
            nproc,
            f"{nproc} local worker processes (trainer.nproc) in one SLURM task of the submitit launcher",
        )
    return (
        False,
        world,
        f"{world} SLURM tasks of the submitit launcher ({nodes} node(s) x {tasks} tasks_per_node), "
        "one rank each",
    )


def runs_elsewhere(launcher: Any) -> bool:
    """Whether the Hydra launcher (`hydra.launcher`) runs the jobs in other processes on other
    machines (submitit's SLURM launcher: the plugin's own, or hydra/launcher=slurm's
    commands.sweep_launcher.SlurmSweepLauncher), not this one."""
    target = "" if launcher is None else str(launcher.get("_target_", ""))
    return target.rsplit(".", 1)[-1] in ("SlurmLauncher", "SlurmSweepLauncher")


def launch_description(nproc: int) -> tuple[bool, int, str]:
    """(whether the CLI starts local workers, the world size, in words), as `train` decides."""
    from resnet_repro.cluster import distributed

    env = distributed.detect()
    if distributed.local_workers(nproc, env):
        return True, nproc, f"{nproc} local worker processes (trainer.nproc)"
    if env.source == "single":
        return False, 1, "this process"
    return False, env.world_size, f"rank {env.rank} of {env.world_size} ({env.source})"
