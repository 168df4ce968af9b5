"""`resnet-repro rehearse [train overrides]`: the user's exact job, with only the work shrunk.

Two layers:

- `check` (also `rehearse --check-only`): what the run decides before it touches its data: the
  config validated, the launch (processes, per-process and global batch), the model, optimizer and
  LR schedule built for the real run's steps per epoch (on PyTorch's meta device: no memory, no
  time), the device's own refusals, the plan estimate and the deviations from the claimed reference.
- the rehearsal itself: the same config and launch path as `train`, on a sample of data.root (a few
  images per class, through the real listing and its guards) or on a generated stand-in with the
  configured classes and image sizes; only the steps at the schedule's change points are trained
  (step_plan.py), the run is stopped with its checkpoint, rebuilt from it, finished with the
  configured final evaluation, and `report` draws its figures. On a CPU each trained step sees a
  few images of each process's batch (the loader still delivers the whole batch): a ResNet-50
  step at the configured batch costs minutes and tens of GB there; `--images-per-step` sets it.
  Run-control keys only are changed (data.root, data.max_eval_images, data.stats.path,
  trainer.resume): the config a rehearsal writes is the real run's but for those.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_repro.config import RootConfig, UserError, per_device_batch

if TYPE_CHECKING:
    from resnet_repro.training.step_plan import StepPlan

# classes of the stand-in when data.root cannot be read (data.name -> count)
CLASS_COUNTS = {"imagenet": 1000, "cifar10": 10}
STEPS_PER_POINT = 1  # trained steps from each change point of the schedule
# images of each process's batch a trained step sees on a CPU (a ResNet-50 step costs about 1 CPU
# second and 130 MB per image there at 224 px in float32, 7 s per image in bf16 without the CPU's
# own bf16 instructions: docs/rehearse.md); a GPU trains the whole batch
CPU_IMAGES_PER_STEP = 2
EVAL_IMAGES_PER_PROCESS = 2  # images of each evaluated split per process (data.max_eval_images)


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
    if multirun or cfg.trainer.resume != "auto" or os.environ.get("SLURM_JOB_ID"):
        return None
    from resnet_repro.training.resume import rerun_id

    return Path("runs") / cfg.name / rerun_id(cfg)


def check_run_directory(cfg: RootConfig, run_dir: Path, derived: Any) -> str:
    """What the real run meets in its directory, as it meets it: a live lock (refused), a
    trainer.resume file that is not there, a last.pt of another job or other settings (refused);
    else whether it starts fresh or resumes, in words."""
    from resnet_repro import checkpoint
    from resnet_repro.training.resume import check_job_shape, check_lock, check_resumable, resume_path

    stale = check_lock(run_dir)
    path = resume_path(cfg, run_dir)
    if path is None:
        return f"{run_dir}: a fresh start" + (f" (its stale lock is taken over: {stale})" if stale else "")
    if derived.steps_per_epoch == 0:  # the data's size unknown here: the job shape cannot be compared
        return f"{run_dir}: resumes {path} (its job shape not checked: the data was not read)"
    state = checkpoint.load(path)
    check_resumable(state, path, derived, cfg)
    shape_change = check_job_shape(state, path, derived)
    return f"{run_dir}: resumes {path}" + (f" ({shape_change})" if shape_change else "")


DEFAULT_GPU_GIB = 80.0  # the target GPU without --gpu-memory and without a visible GPU: an 80 GB H100/A100


def visible_gpu_gib() -> float | None:
    """This machine's GPU memory (GiB) when CUDA is here, else None."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30


def _memory_line(est: Any, gpu_gib: float) -> str:
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
    if launcher is None or "SlurmLauncher" not in str(launcher.get("_target_", "")):
        return launch_description(nproc)
    nodes, tasks = int(launcher.nodes), int(launcher.tasks_per_node)
    world = nodes * tasks
    return (
        False,
        world,
        f"{world} SLURM tasks of the submitit launcher ({nodes} node(s) x {tasks} tasks_per_node), "
        "one rank each",
    )


def launch_description(nproc: int) -> tuple[bool, int, str]:
    """(whether the CLI starts local workers, the world size, in words), as `train` decides."""
    from resnet_repro.cluster import distributed

    env = distributed.detect()
    if nproc > 1 and env.source == "single":
        return True, nproc, f"{nproc} local worker processes (trainer.nproc)"
    if env.source == "single":
        return False, 1, "this process"
    return False, env.world_size, f"rank {env.rank} of {env.world_size} ({env.source})"


# training images per class of the full datasets, for an estimate without the data
IMAGES_PER_CLASS = {"imagenet": 1_281_167 / 1000, "cifar10": 50_000 / 10}


@dataclass(frozen=True)
class DataView:
    """The training data as the real run will see it, or as estimated without it."""

    train_images: int | None
    source: str  # where the count comes from, in words
    classes: int  # classes the run trains (a subset's count)
    splits: Any = None  # the real run's Splits (resnet_repro.data.normalization) when listed


def data_view(cfg: RootConfig, stand_in: bool = False) -> DataView:
    """The real run's training images per epoch: from data.root's file lists, built by the real
    run's own listing (exclusions, subset, holdout: its guards raise its errors, so a missing or
    misspelt data.root fails here as it fails there); estimated only when data.root is unset or
    `stand_in` is asked: plan.train_images, else the dataset's published count with the subset
    and the holdout applied (a holdout the data cannot give is refused as the real run refuses it)."""
    from resnet_repro.training.run_data import load_file_lists

    d = cfg.data
    if (d.root and not stand_in) or d.name == "demo":
        splits = load_file_lists(d)
        return DataView(len(splits.train), f"file lists of {d.root}", len(splits.train.classes), splits)
    if cfg.plan.train_images is not None:
        return DataView(cfg.plan.train_images, "plan.train_images", _estimated_classes(cfg))
    if d.name not in IMAGES_PER_CLASS:
        unknown = "unknown without data.root (plan.train_images=N gives it)"
        return DataView(None, unknown, _estimated_classes(cfg))
    classes = _estimated_classes(cfg)
    per_class = IMAGES_PER_CLASS[d.name]
    if d.subset.per_class is not None:
        per_class = min(per_class, d.subset.per_class)
    images = round(classes * per_class)
    why = "data.root not set" if not d.root else "--stand-in"
    source = f"estimated ({why}): {classes:,} classes x {per_class:,.0f} images"
    if d.holdout.size is not None:
        from resnet_repro.data.holdout import holdout_count

        held = holdout_count(d.holdout.size, images)
        if held > images - classes:
            raise UserError(
                f"data.holdout.size={d.holdout.size} asks for {held} of about {images} training images, "
                f"but at most {images - classes} can be held out while each of the {classes} classes keeps "
                "one image"
            )
        images -= held
        source += f" - {held:,} held out"
    return DataView(images, source, classes)


def _estimated_classes(cfg: RootConfig) -> int:
    """Classes the run trains, without the data: a subset's count or its class file's lines."""
    total = CLASS_COUNTS.get(cfg.data.name, cfg.bench.num_classes)
    spec = cfg.data.subset.classes
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 1 <= spec <= total:
            raise UserError(
                f"data.subset.classes={spec} must be between 1 and the {total} classes of the training split"
            )
        return spec
    path = Path(str(spec)).expanduser() if spec is not None else None
    if path is not None and path.is_file():
        lines = path.read_text().splitlines()
        return len({line.strip() for line in lines if line.strip() and not line.startswith("#")})
    return total


@functools.lru_cache(maxsize=8)
def _meta_model(model_json: str, num_classes: int, regularization_json: str) -> Any:
    """The run's model on PyTorch's meta device (the real modules and parameter shapes, no storage);
    built once per distinct model section (the jobs of a sweep share it)."""
    import torch

    from resnet_repro.config import ModelConfig, RegularizationConfig
    from resnet_repro.models import build_model

    with torch.device("meta"):
        return build_model(
            ModelConfig(**json.loads(model_json)),
            num_classes,
            RegularizationConfig(**json.loads(regularization_json)),
        )


@functools.lru_cache(maxsize=8)
def _saved_activation_mb(model_json: str, num_classes: int, regularization_json: str, size: int) -> float:
    net = _meta_model(model_json, num_classes, regularization_json)
    return saved_bytes_per_image(net, (3, size, size)) / 2**20


def saved_bytes_per_image(net: Any, image_shape: tuple[int, ...]) -> float:
    """Bytes per image of the tensors a training forward of `net` keeps for its backward pass, each
    storage counted once and the parameters left out, for images of `image_shape` in float32
    (counted on a batch of 2: BatchNorm refuses one image at 1 x 1 px). On the meta device this
    costs no memory and a fraction of a second; it is the part of a step's memory that grows with
    the batch (the backward's transient gradients come on top)."""
    import torch

    device = next(net.parameters()).device
    params = {p.untyped_storage()._cdata for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in params:
            saved[key] = t.untyped_storage().nbytes()
        return t

    was_training = net.training
    net.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(torch.empty((2, *image_shape), device=device))
    finally:
        net.train(was_training)
    return sum(saved.values()) / 2


def parse_images_per_step(value: str) -> int | None | str:
    """--images-per-step: a count (>= 2: BatchNorm needs two values per channel), "all" (None: the
    whole batch) or "auto"."""
    if value in ("auto", "all"):
        return value if value == "auto" else None
    if value.isdigit() and int(value) >= 2:
        return int(value)
    raise UserError(f"--images-per-step={value}: expected a count of images (2 or more), 'all' or 'auto'")


def images_per_step(value: str, batch: int, device: str) -> int | None:
    """The images of each process's batch a rehearsed step trains (None: all of them): "auto" is
    the whole batch on a GPU and at most CPU_IMAGES_PER_STEP elsewhere."""
    parsed = parse_images_per_step(value)
    if parsed == "auto":
        parsed = None if device.startswith("cuda") else CPU_IMAGES_PER_STEP
    if parsed is None or parsed >= batch:
        return None
    return int(parsed)


def check(
    cfg: RootConfig,
    nproc_world: tuple[bool, int, str] | None = None,
    stand_in: bool = False,
    gpu_memory_gib: float | None = None,
    scan: bool = False,
    run_dir: Path | None = None,
) -> Shape:
    """Everything the real run settles before its first step: config, launch, batch, the data's
    listing and statistics decision (unless data.root is unset or `stand_in`), model, optimizer
    and schedule shapes, the memory fit on the target GPU; raises the UserError the real run
    would raise."""
    from resnet_repro.cluster import distributed
    from resnet_repro.cluster.distributed import DistEnv
    from resnet_repro.config import validate
    from resnet_repro.data import progressive
    from resnet_repro.planning import plan
    from resnet_repro.training import step_plan
    from resnet_repro.training.optim import build_optimizer, peak_lr
    from resnet_repro.training.schedule import build_scheduler
    from resnet_repro.training.summary import deviations
    from resnet_repro.training.train import check_device

    validate(cfg)
    _, world, launch = nproc_world or launch_description(cfg.trainer.nproc)
    batch = per_device_batch(cfg.trainer, world)
    on_gpu = cfg.trainer.device != "cpu"  # the real run's: before any substitution
    cfg, substituted = cpu_equivalent(cfg)
    device = distributed.pick_device(cfg.trainer.device, DistEnv())
    check_device(cfg, device)
    view = data_view(cfg, stand_in)
    images, source = view.train_images, view.source
    stats_line = scanned_line = None
    if view.splits is not None:
        from resnet_repro.planning import stats_plan

        stats_line = stats_plan.decide(cfg, view.splits)
        if scan:
            scanned_line = scan_files(cfg, view.splits)
    global_batch = batch * world
    steps = None
    if images is not None:
        steps = images // global_batch
        if steps == 0:
            raise UserError(
                f"the training split has {images} images, fewer than one global batch of {global_batch} "
                f"({batch} per process x {world} processes)"
            )
        if cfg.trainer.max_steps_per_epoch is not None:
            steps = min(steps, cfg.trainer.max_steps_per_epoch)
    num_classes = view.classes
    model_json = json.dumps(dataclasses.asdict(cfg.model))
    regularization_json = json.dumps(dataclasses.asdict(cfg.regularization))
    net = _meta_model(model_json, num_classes, regularization_json)
    largest = max(progressive.train_sizes(cfg.data, cfg.trainer.epochs))
    activations = _saved_activation_mb(model_json, num_classes, regularization_json, largest)
    memory = None
    if on_gpu:  # the run's GPU: the memory one process needs there
        from resnet_repro.planning import memory_fit

        gpu_gib = gpu_memory_gib or visible_gpu_gib() or DEFAULT_GPU_GIB
        est = memory_fit.estimate(
            cfg, net, batch, world, activations * 2**20, image_size=largest, on_gpu=True
        )
        memory_fit.check_fits(est, gpu_gib, cfg, batch, largest)
        memory = (est, gpu_gib)
    optimizer = build_optimizer(cfg.optim, net, global_batch)
    build_scheduler(
        cfg.schedule, cfg.stabilizer, optimizer, steps_per_epoch=steps or 1000, epochs=cfg.trainer.epochs
    )
    lr = peak_lr(cfg.optim, global_batch)
    run_dir_line = None
    if run_dir is None and cfg.trainer.resume not in ("auto", "never"):
        run_dir = Path("runs") / cfg.name / "(a new directory)"  # it resumes the named file
    from resnet_repro.training import disk_space

    # the checkpoints against the free disk where they will go (a sweep's or SLURM job's directory
    # is new: its file system is that of runs/), as train checks it at its start
    selection = cfg.data.holdout.size is not None or cfg.trainer.select_on_test
    needed = disk_space.files_needed_bytes(cfg, net, selection)
    disk_space.check_free_space(run_dir if run_dir is not None else Path("runs") / cfg.name, needed)
    if run_dir is not None:
        from resnet_repro.training.summary import Derived

        listed = steps if view.splits is not None and steps else 0  # an estimate must not refuse a resume
        derived = Derived(world, global_batch, lr, listed, images or 0, 0, num_classes, str(device))
        run_dir_line = check_run_directory(cfg, run_dir, derived)
    found = [f"{d.key}={d.value} (reference: {d.reference})" for d in deviations(cfg, world)]
    points = step_plan.change_points(cfg, steps or 1000)
    estimate = None
    given = plan.given_throughput(cfg)
    if images is not None and given is not None:
        estimate = plan.estimate(cfg, images, given)
    return Shape(
        processes=world,
        launch=launch,
        device=str(device),
        per_process_batch=batch,
        global_batch=global_batch,
        peak_lr=lr,
        train_images=images,
        train_images_source=source,
        steps_per_epoch=steps,
        epochs=cfg.trainer.epochs,
        precision=cfg.trainer.precision,
        change_points=[why for _, why in points],
        deviations=found,
        reference=cfg.reference,
        plan=estimate,
        activation_mb_per_image=activations,
        data_source=source if view.splits is not None else "estimated (no data read)",
        stats=stats_line,
        substituted=substituted,
        scanned=scanned_line,
        run_dir=run_dir_line,
        memory=_memory_line(*memory) if memory is not None else None,
    )


# ----------------------------------------------------------------------------------- the data
def images_per_class(cfg: RootConfig, global_batch: int, classes: int) -> int:
    """Training-split images each used class needs so that the holdout can be carved and a few
    full global batches remain (steps per epoch of the sample: at least 2 and STEPS_PER_POINT)."""
    train = global_batch * max(2, STEPS_PER_POINT)
    size = cfg.data.holdout.size
    if size is None:
        needed = train
    elif size >= 1:
        needed = int(size) + train
    else:
        needed = math.ceil(train / (1 - size)) + classes
    return math.ceil(needed / classes) + 1  # +1: a class keeps one image when its holdout is carved


def _kept_and_wanted(
    cfg: RootConfig, classes: tuple[str, ...], global_batch: int
) -> tuple[set[str] | None, int]:
    """(the classes data.subset keeps, None for all; the training images each of them needs)."""
    from resnet_repro.data import subset

    kept = set(subset.select_classes(classes, cfg.data.subset)) if subset.is_active(cfg.data.subset) else None
    return kept, images_per_class(cfg, global_batch, len(kept) if kept is not None else len(classes))


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(target, link)
    except FileExistsError:  # another rank of a torchrun / srun rehearsal wrote it
        pass


def sample_data_root(cfg: RootConfig, global_batch: int, out: Path) -> tuple[Path, str]:
    """A few images per class of data.root, listed by the real listing (its guards refuse what the
    real run refuses), linked into `out` in the same layout; the per-class count covers a holdout
    and a few global batches of the classes a subset keeps."""
    from resnet_repro.data.splits import list_split

    d = cfg.data
    train = list_split(d.root, d.train_split)
    test = list_split(d.root, d.eval_split, classes=train.classes)
    if d.exclude_files:  # left out of the sample, as the real run leaves them out of its lists
        from resnet_repro.data.splits import read_exclude_list, without

        excluded = read_exclude_list(d.exclude_files, d.root)
        train, test = without(train, excluded, d.root)[0], without(test, excluded, d.root)[0]
    kept, wanted = _kept_and_wanted(cfg, train.classes, global_batch)
    root = Path(d.root).expanduser()
    taken: dict[tuple[str, int], int] = {}
    for files in (train, test):
        for path, label in zip(files.files, files.labels, strict=True):
            name = train.classes[label]
            limit = 1 if files is test or (kept is not None and name not in kept) else wanted
            if taken.get((files.split, label), 0) < limit:
                taken[(files.split, label)] = taken.get((files.split, label), 0) + 1
                _link(Path(path).resolve(), out / Path(path).relative_to(root))
    n = sum(v for (split, _), v in taken.items() if split == d.train_split)
    return out, f"a sample of {d.root}: {n} training images ({wanted} per used class, 1 per other class)"


def stand_in_classes(cfg: RootConfig) -> list[str]:
    """Class folder names of the stand-in: a subset's class file's names first, when it has one."""
    count = CLASS_COUNTS.get(cfg.data.name, cfg.bench.num_classes)
    spec = cfg.data.subset.classes
    names: list[str] = []
    if spec is not None and not isinstance(spec, int) and Path(str(spec)).expanduser().is_file():
        lines = Path(str(spec)).expanduser().read_text().splitlines()
        names = sorted({s.strip() for s in lines if s.strip() and not s.startswith("#")})
    names += [f"class{i:04d}" for i in range(max(count - len(names), 0))]
    return sorted(names)


def stand_in_size(cfg: RootConfig) -> tuple[int, int]:
    """(width, height) of the stand-in's images: the evaluation resize's shorter side (image_size /
    crop_ratio), 4:3 landscape as most of ImageNet; square where images come at their size."""
    d = cfg.data
    short = round(d.image_size / d.crop_ratio)
    if d.augment.scale_short_side is not None:
        short = max(short, d.augment.scale_short_side[0])
    square = d.crop_ratio == 1 or d.augment.pad_crop > 0
    return (short if square else round(short * 4 / 3)), short


def write_stand_in(cfg: RootConfig, global_batch: int, out: Path, pool_size: int = 16) -> tuple[Path, str]:
    """A generated dataset in the ImageNet layout with the configured class count and image size:
    `pool_size` smooth random JPEGs, linked as each class's images (a rehearsal checks the path
    the images take, not what can be learnt from them)."""
    import numpy as np
    from PIL import Image

    classes = stand_in_classes(cfg)
    kept, wanted = _kept_and_wanted(cfg, tuple(classes), global_batch)
    width, height = stand_in_size(cfg)
    rng = np.random.default_rng(0)
    pool = out / ".pool"
    pool.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(pool_size):
        small = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8), mode="RGB")
        path, tmp = pool / f"{i}.JPEG", pool / f".{i}.{os.getpid()}.tmp"
        small.resize((width, height), Image.BILINEAR).save(tmp, format="JPEG", quality=85)
        os.replace(tmp, path)  # atomic: ranks of one rehearsal write the same files
        images.append(path)
    n = 0
    for c, name in enumerate(classes):
        count = wanted if kept is None or name in kept else 1
        for i in range(count):
            _link(images[(c + i) % pool_size], out / cfg.data.train_split / name / f"{i}.JPEG")
        _link(images[c % pool_size], out / cfg.data.eval_split / name / "0.JPEG")
        n += count
    why = "data.root is not set" if not cfg.data.root else "--stand-in"
    return out, (
        f"a generated stand-in ({why}): {len(classes)} classes, {n} training images of {width}x{height} px"
    )


def rehearsal_config(
    cfg: RootConfig, world: int, run_dir: Path, stand_in: bool = False
) -> tuple[RootConfig, str]:
    """The config the rehearsal trains: the run's, with data.root on the sample or stand-in (in
    <run_dir>/rehearsal/data), evaluations capped at a few images per process, the statistics file
    beside the sample. Returns it and one line saying where the data came from."""
    d = cfg.data
    global_batch = per_device_batch(cfg.trainer, world) * world
    out = run_dir / "rehearsal" / "data"
    if d.name == "demo":  # the demo's data is generated and small: the run's own
        root, note = d.root, f"the demo's own data ({d.root})"
    elif d.root and not stand_in:  # the real listing: a missing root or split fails as in train
        root, note = sample_data_root(cfg, global_batch, out)
    else:
        root, note = write_stand_in(cfg, global_batch, out)
    cap = EVAL_IMAGES_PER_PROCESS * world
    data = dataclasses.replace(
        d,
        root=str(root),
        max_eval_images=min(cap, d.max_eval_images) if d.max_eval_images is not None else cap,
        stats=dataclasses.replace(d.stats, path=None),
        exclude_files=None,  # the sample was drawn without them
    )
    return dataclasses.replace(cfg, data=data), note


# ----------------------------------------------------------------------------------- the verdict
def peak_memory(run_dir: Path) -> list[float]:
    """Each rank's peak memory (MB) over the rehearsal's launches, in rank order."""
    peaks: dict[int, float] = {}
    for path in (run_dir / "rehearsal").glob("peak_memory_rank*.json"):
        m = json.loads(path.read_text())
        peaks[m["rank"]] = max(peaks.get(m["rank"], 0.0), m["peak_memory_mb"])
    return [peaks[r] for r in sorted(peaks)]


def _own_throughput(train_rows: list[dict[str, Any]], shape: Shape, cfg: RootConfig) -> Any:
    """The rehearsal's training speed per process at each training crop: each window's steps
    without its loader's start-up (first steps of fresh builds: pessimistic)."""
    from resnet_repro.planning import plan

    by_size: dict[int, list[float]] = {}
    for r in train_rows:
        seconds = max(r["epoch_time_s"] - r.get("startup_wait_s", 0.0), 1e-9)
        size = by_size.setdefault(int(r.get("image_size", cfg.data.image_size)), [0.0, 0.0])
        size[0] += r["img_per_s"] * r["epoch_time_s"] / shape.processes
        size[1] += seconds
    rates = {s: images / seconds for s, (images, seconds) in by_size.items()}
    where = (
        f"the rehearsal's first steps on {shape.device}, start-up excluded; plan.img_per_s_per_gpu=N to set"
    )
    last = max(rates) if rates else cfg.data.image_size
    return plan.Throughput(rates.get(last, 1e-9), last, where, by_size=rates)


def collect(
    run_dir: Path, shape: Shape, cfg: RootConfig, data_note: str, plan_used: StepPlan, launches: int
) -> dict[str, Any]:
    """The rehearsal's record: the job's shape, what was trained (the step plan and `launches`),
    the peak memory per process, the final evaluation under each protocol, the plan estimate (at
    plan.img_per_s_per_gpu, or at the rehearsal's own speed when it trained whole batches)."""
    from resnet_repro.config import eval_protocols
    from resnet_repro.planning import plan
    from resnet_repro.training import step_plan

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    train_rows = [r for r in map(json.loads, lines) if r.get("split") == "train"]  # every window's
    final = json.loads((run_dir / "final.json").read_text())
    rate, plan_note = plan.given_throughput(cfg), None
    if rate is None and plan_used.images_per_step is None:
        rate = _own_throughput(train_rows, shape, cfg)
    elif rate is None:
        plan_note = (
            f"no estimate: steps of {plan_used.images_per_step} of {shape.per_process_batch} images "
            "are not the run's speed; plan.img_per_s_per_gpu=N gives one"
        )
    estimate = None
    if shape.train_images is not None and rate is not None:
        estimate = plan.estimate(cfg, shape.train_images, rate)
    spe = json.loads((run_dir / "run.json").read_text())["derived"]["steps_per_epoch"]
    trained = ran_windows(train_rows, step_plan.windows(cfg, spe, STEPS_PER_POINT))
    protocols = [name for name in eval_protocols(cfg.eval) if isinstance(final.get(name), dict)]
    return {
        "ok": True,
        "shape": dataclasses.asdict(shape),
        "data": data_note,
        "steps_per_epoch": spe,
        "trained": trained,
        "images_per_step": plan_used.images_per_step,
        "launches": launches,
        "peak_memory_mb": peak_memory(run_dir),
        "final": {k: final.get(k) for k in ("top1", "top5", "loss", "protocol", "protocol_detail")},
        "final_top1": {name: final[name]["top1"] for name in protocols} or {final["protocol"]: final["top1"]},
        "plan": estimate,
        "plan_note": plan_note,
        "run_dir": str(run_dir),
    }


def ran_windows(train_rows: list[dict[str, Any]], planned: list[Any]) -> list[dict[str, Any]]:
    """The windows of steps the rehearsal trained, read from its metrics (each training row: the
    global step reached and the steps it ran), named after the plan's change points; a planned
    window that did not run is listed with "not run"."""
    ran = [(r["step"] - r["steps"], r["step"]) for r in train_rows if r.get("steps")]
    why = {(w.start, w.end): w.why for w in planned}
    out = [{"start": a, "end": b, "why": why.get((a, b), "not in the plan")} for a, b in ran]
    out += [
        {"start": w.start, "end": w.end, "why": f"{w.why}: not run"}
        for w in planned
        if (w.start, w.end) not in ran
    ]
    return sorted(out, key=lambda w: w["start"])


def _megabytes(mb: float) -> str:
    if mb >= 1024:
        return f"{mb / 1024:,.1f} GB"
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.2f} MB"


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:,.1f} h"


def verdict(shape: Shape, record: dict[str, Any] | None = None) -> str:
    """One screen: what would run where, and (after a rehearsal) what it did and what it costs."""
    s = shape
    spe = f"{s.steps_per_epoch:,}" if s.steps_per_epoch is not None else "unknown"
    data = record["data"] if record is not None else s.data_source
    lines = [
        "rehearsal verdict: the real run would start" + (" and train" if record else "") + f" (data: {data})",
        f"  processes        {s.processes}: {s.launch}, on {s.device}",
        f"  batch            {s.per_process_batch} per process, {s.global_batch} global "
        f"(peak LR {s.peak_lr:g})",
        f"  steps per epoch  {spe} x {s.epochs} epochs ({s.train_images_source})",
        f"  precision        {s.precision}",
        f"  change points    {', '.join(s.change_points)}",
        f"  activations      {_megabytes(s.activation_mb_per_image)} per image kept for the backward pass: "
        f"{_megabytes(s.activation_mb_per_image * s.per_process_batch)} per process at "
        f"{s.per_process_batch} (largest crop, float32"
        + (f"; {s.precision} autocast stores less, not counted" if s.precision != "fp32" else "")
        + "; counted on the meta device)",
    ]
    if record is not None:
        mem = ", ".join(f"rank {i}: {m:,.0f} MB" for i, m in enumerate(record["peak_memory_mb"]))
        lines.append(f"  peak memory      {mem or 'not recorded'}")
        part = record["images_per_step"]
        if part is not None:
            lines.append(
                f"  trained images   the first {part} of each process's {s.per_process_batch} per step "
                "(the loader read all of them; --images-per-step=all trains the whole batch)"
            )
        lines.append(f"  data             {record['data']}")
        spe = record["steps_per_epoch"]
        steps = "; ".join(
            f"{w['start'] + 1}" + (f"-{w['end']}" if w["end"] > w["start"] + 1 else "") + f" ({w['why']})"
            for w in record["trained"]
        )
        lines.append(f"  trained steps    {steps} of {spe} per epoch of this data")
        how = (
            "a second launch of the processes"
            if record["launches"] == 2
            else "the same processes, every part rebuilt"
        )
        lines.append(f"  resumed          stopped before the last window with last.pt; {how} resumed it")
        tops = ", ".join(f"{name} top-1 {top1:.4f}" for name, top1 in record["final_top1"].items())
        lines.append(f"  final eval       {tops} (final.json)")
        lines.append(f"  run directory    {record['run_dir']}")
    p = record["plan"] if record is not None else s.plan
    if p is None and record is not None and record.get("plan_note"):
        lines.append(f"  plan             {record['plan_note']}")
    if p is not None:
        lines.append(
            f"  plan             {_hours(p['train_hours'])} of training at {p['img_per_s']:,.1f} img/s "
            f"over {p['world_size']} processes ({p['img_per_s_source']})"
        )
    dev = ", ".join(s.deviations) if s.deviations else "none"
    lines.append(f"  deviations       from reference={s.reference}: {dev}")
    if s.stats is not None:
        lines.append(f"  statistics       {s.stats}")
    if s.scanned is not None:
        lines.append(f"  scanned          {s.scanned}")
    if s.run_dir is not None:
        lines.append(f"  run directory    {s.run_dir}")
    if s.memory is not None:
        lines.append(f"  GPU memory       {s.memory}")
    for said in s.substituted:
        lines.append(f"  substituted      {said} (no GPU here; the real run keeps its setting)")
    lines.append("not checked here:")
    lines.extend(f"  - {line}" for line in not_checked(s, record))
    return "\n".join(lines)


def not_checked(shape: Shape, record: dict[str, Any] | None) -> list[str]:
    """What this rehearsal could not try, one line each, so that its "ok" claims no more."""
    on_gpu = shape.device.startswith("cuda")
    lines = []
    if not on_gpu:
        lines.append("GPU decoding (DALI's \"mixed\", nvJPEG) and the GPU's speed: all ran on the CPU")
    if shape.processes > 1 and record is None:
        lines.append("the process group (NCCL or gloo): not started (--check-only)")
    elif shape.processes > 1 and not on_gpu:
        lines.append("NCCL: the processes met over gloo on the CPU")
    if record is None:
        lines.append("any step, checkpoint or evaluation: --check-only trains nothing (drop it to rehearse)")
    if shape.stats is None:
        lines.append("the data: not read (data.root unset or --stand-in); counts are estimates")
    elif not shape.scanned:
        lines.append(
            f"every image: only {'the listing and a sample were' if record else 'the listing was'} read; "
            "`resnet-repro verify-data data.root=...` "
            "(or rehearse --scan) checks every file's header"
        )
    lines.append("several nodes: one host's processes only")
    lines.append("throughput at the full batch: plan.img_per_s_per_gpu=N or a run on the GPU measures it")
    return lines
