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

This module holds the orchestration (`check`, `rehearsal_config`, `collect`); its parts live beside
it: rehearse_checks.py (the check's parts and its result, `Shape`), rehearse_data.py (the data view,
the sample and the stand-in), rehearse_verdict.py (the verdict's text), meta_model.py (the model on
the meta device and the activations it keeps per image). The command line reaches the names it
uses as `rehearse.NAME` from here (imported `as` themselves where this module does not use them).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_repro.config import RootConfig, UserError, per_device_batch
from resnet_repro.planning.meta_model import _meta_model, _saved_activation_mb
from resnet_repro.planning.rehearse_checks import (
    DEFAULT_GPU_GIB,
    Shape,
    check_run_directory,
    cpu_equivalent,
    launch_description,
    listing_warnings,
    memory_line,
    scan_files,
    visible_gpu_gib,
)
from resnet_repro.planning.rehearse_checks import launcher_description as launcher_description
from resnet_repro.planning.rehearse_checks import real_run_dir as real_run_dir
from resnet_repro.planning.rehearse_data import STEPS_PER_POINT, data_view, sample_data_root, write_stand_in
from resnet_repro.planning.rehearse_verdict import verdict as verdict

if TYPE_CHECKING:
    from resnet_repro.training.step_plan import StepPlan

# images of each process's batch a trained step sees on a CPU (a ResNet-50 step costs about 1 CPU
# second and 130 MB per image there at 224 px in float32, 7 s per image in bf16 without the CPU's
# own bf16 instructions: docs/rehearse.md); a GPU trains the whole batch
CPU_IMAGES_PER_STEP = 2
EVAL_IMAGES_PER_PROCESS = 2  # images of each evaluated split per process (data.max_eval_images)


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
    from resnet_repro.config import check_job
    from resnet_repro.data import progressive
    from resnet_repro.planning import plan
    from resnet_repro.training import step_plan
    from resnet_repro.training.optim import build_optimizer, peak_lr
    from resnet_repro.training.schedule import build_scheduler
    from resnet_repro.training.start_warnings import start_warnings
    from resnet_repro.training.summary import deviations
    from resnet_repro.training.train import check_device

    _, world, launch = nproc_world or launch_description(cfg.trainer.nproc)
    batch = check_job(cfg, world)
    on_gpu = cfg.trainer.device != "cpu"  # the real run's: before any substitution
    cfg, substituted = cpu_equivalent(cfg)
    device = distributed.pick_device(cfg.trainer.device, DistEnv())
    check_device(cfg, device)
    with listing_warnings() as listing_said:  # what the real run's listing warns of (unmatched exclusions)
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
    from resnet_repro.training.resume import run_dir_problem

    problem = None if run_dir is None else run_dir_problem(run_dir)
    if problem is not None:  # train meets it first, as Hydra makes the directory
        raise UserError(problem)
    # the checkpoints against the free disk where they will go (a sweep's or SLURM job's directory
    # is new: its file system is that of runs/), as train checks it at its start
    selection = cfg.data.holdout.size is not None or cfg.trainer.select_on_test
    needed = disk_space.files_needed_bytes(cfg, net, selection)
    disk_space.check_free_space(run_dir if run_dir is not None else Path("runs") / cfg.name, needed)
    if run_dir is not None:
        from resnet_repro.training.summary import Derived

        listed = steps if view.splits is not None and steps else 0  # an estimate must not refuse a resume
        derived = Derived(world, global_batch, lr, listed, images or 0, 0, num_classes, str(device))
        classes = view.splits.train.classes if view.splits is not None else None
        run_dir_line = check_run_directory(cfg, run_dir, derived, classes)
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
        memory=memory_line(*memory) if memory is not None else None,
        warnings=[*listing_said, *start_warnings(cfg, [], selection=None)],
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
    exclusions = None  # the sample leaves out what the run excludes (a class's last images: listed)
    if d.name == "demo":  # the demo's data is generated and small: the run's own
        root, note, exclusions = d.root, f"the demo's own data ({d.root})", d.exclude_files
    elif d.root and not stand_in:  # the real listing: a missing root or split fails as in train
        root, note, exclusions = sample_data_root(cfg, global_batch, out)
    else:
        root, note = write_stand_in(cfg, global_batch, out)
    cap = EVAL_IMAGES_PER_PROCESS * world
    data = dataclasses.replace(
        d,
        root=str(root),
        max_eval_images=min(cap, d.max_eval_images) if d.max_eval_images is not None else cap,
        stats=dataclasses.replace(d.stats, path=None),
        exclude_files=str(exclusions) if exclusions is not None else None,
    )
    return dataclasses.replace(cfg, data=data), note


def real_paths(message: str, rehearsed: RootConfig, cfg: RootConfig) -> str:
    """`message` with the sample's paths (links into data.root, same layout) as data.root's own
    (callers: a rehearsal on a sample of data.root, not on a generated stand-in)."""
    sample, real = rehearsed.data.root, cfg.data.root
    if not real or sample == real:
        return message  # the demo's own data: the user's files already
    return message.replace(sample.rstrip("/") + "/", str(Path(real).expanduser()).rstrip("/") + "/")


# ------------------------------------------------------------------------- what the rehearsal did
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
