"""`resnet-repro plan [overrides]` (`-m` for a sweep): what a run or a sweep costs before it is queued.

For each job: images per epoch (counted from data.root's file lists, or plan.train_images), the
global batch, steps per epoch (full batches only: the trainer drops the incomplete last one), total
steps and images processed, and the expected wall time of its training steps from an img/s that is
given (plan.img_per_s) or measured here with a short `bench train` (bench.py). Evaluation and
start-up are not in the estimate. Nothing is written and nothing is launched.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_repro.config import RootConfig, UserError, per_device_batch

IMAGENET_TRAIN_IMAGES = 1_281_167  # for the hint when data.root is not there yet


@dataclass(frozen=True)
class Throughput:
    img_per_s: float  # one job, all its processes
    source: str  # where the number came from, in words


def expand_sweep(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The jobs of a command line, each as its list of overrides, in the order Hydra's basic sweeper
    launches them (the cartesian product of comma lists, range() and choice() values)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UserError(str(e).splitlines()[0]) from e
    if not multirun:
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise UserError(f"{sweeps[0]} is a sweep: add -m to plan each of its jobs")
        return [list(overrides)]
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def world_size(cfg: RootConfig) -> int:
    return cfg.plan.world_size or cfg.trainer.nproc


def count_images(cfg: RootConfig) -> tuple[int, int | None, str]:
    """(training images per epoch, evaluation images per epoch or None, where the count came from)."""
    if cfg.plan.train_images is not None:
        return cfg.plan.train_images, None, "plan.train_images"
    from resnet_repro.run_data import load_file_lists

    if not cfg.data.root:
        raise UserError(
            f"data.root is not set: give data.root=DIR to count its training images, or the count as "
            f"plan.train_images=N (ImageNet-1K: {IMAGENET_TRAIN_IMAGES})"
        )
    try:
        splits = load_file_lists(cfg.data)
    except UserError as e:
        raise UserError(
            f"cannot count the training images ({e}); give data.root=DIR, or the count as "
            f"plan.train_images=N (ImageNet-1K: {IMAGENET_TRAIN_IMAGES})"
        ) from e
    evaluated = len(splits.test) + (len(splits.holdout) if splits.holdout is not None else 0)
    return len(splits.train), evaluated, f"file lists of {cfg.data.root}"


def _readable(cfg: RootConfig) -> bool:
    return bool(cfg.data.root) and (Path(cfg.data.root).expanduser() / cfg.data.train_split).is_dir()


def measure(cfg: RootConfig, readable: bool) -> Throughput:
    """A short `bench train` on this machine (one untimed pass of plan.measure_steps steps, then one
    timed), scaled to the job's processes; `bench model` on synthetic batches when the data cannot
    be read (`readable` false). Single process: the per-device batch is the job's."""
    import torch

    from resnet_repro import bench, distributed
    from resnet_repro.distributed import DistEnv

    world = world_size(cfg)
    batch = per_device_batch(cfg.trainer, world)
    steps = cfg.plan.measure_steps
    one = dataclasses.replace(cfg.trainer, batch_size=batch, global_batch=None, nproc=1)
    quiet = dataclasses.replace(cfg.logging, tensorboard=False, progress=False)
    device = distributed.pick_device(cfg.trainer.device, DistEnv())
    torch.manual_seed(cfg.trainer.seed)
    b = dataclasses.replace(cfg.bench, warmup=steps, steps=steps, trials=1, min_images=steps * batch)
    mcfg = dataclasses.replace(cfg, trainer=one, logging=quiet, bench=b)
    with tempfile.TemporaryDirectory(prefix="resnet-repro-plan-") as tmp:
        if readable:
            result = bench.bench_train(mcfg, device, Path(tmp))
            what = f"bench train (data.backend={cfg.data.backend})"
        else:
            result = bench.bench_model(mcfg, device, Path(tmp))
            what = "bench model on synthetic batches (data.root not readable: no input pipeline)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    scaled = f", x{world} processes assuming linear scaling" if world > 1 else ""
    source = f"measured here: {what}, {steps} timed steps of {batch} on {name}{scaled}"
    return Throughput(result["img_per_s"] * world, source)


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=lambda o: dataclasses.asdict(o))


def throughput_key(cfg: RootConfig) -> str:
    """Settings that change img/s: jobs of a sweep that agree on these share one measurement."""
    d, t = cfg.data, cfg.trainer
    return _key(
        cfg.model,
        cfg.regularization,
        [d.root, d.backend, d.decoder, d.image_size, d.num_threads, d.augment],
        [per_device_batch(t, world_size(cfg)), world_size(cfg), t.precision, t.compile, t.device],
        cfg.stabilizer.max_norm is not None,
    )


def estimate(cfg: RootConfig, train_images: int, throughput: Throughput) -> dict[str, Any]:
    """The numbers of one job (plain data: printed and written as JSON)."""
    world = world_size(cfg)
    global_batch = per_device_batch(cfg.trainer, world) * world
    steps = train_images // global_batch  # the trainer drops the incomplete last batch
    if steps == 0:
        raise UserError(
            f"{train_images} training images are fewer than one global batch of {global_batch}: no step"
        )
    if cfg.trainer.max_steps_per_epoch is not None:
        steps = min(steps, cfg.trainer.max_steps_per_epoch)
    total_steps = steps * cfg.trainer.epochs
    images = total_steps * global_batch
    seconds = images / throughput.img_per_s
    return {
        "name": cfg.name,
        "model": cfg.model.name,
        "world_size": world,
        "train_images": train_images,
        "global_batch": global_batch,
        "steps_per_epoch": steps,
        "epochs": cfg.trainer.epochs,
        "total_steps": total_steps,
        "images_processed": images,
        "img_per_s": throughput.img_per_s,
        "img_per_s_source": throughput.source,
        "train_hours": seconds / 3600,
    }


def plan(jobs: list[tuple[list[str], RootConfig]]) -> dict[str, Any]:
    """Estimates for each (overrides, config) job and the totals. Images are counted and img/s
    measured once per distinct setting."""
    counts: dict[Any, tuple[int, int | None, str]] = {}
    rates: dict[Any, Throughput] = {}
    runs = []
    for overrides, cfg in jobs:
        data_key = _key(cfg.data, cfg.plan.train_images)
        if data_key not in counts:
            counts[data_key] = count_images(cfg)
        train_images, eval_images, count_source = counts[data_key]
        if cfg.plan.img_per_s is not None:
            rate = Throughput(cfg.plan.img_per_s, "plan.img_per_s")
        else:
            key = throughput_key(cfg)
            if key not in rates:
                readable = count_source != "plan.train_images" or _readable(cfg)
                rates[key] = measure(cfg, readable)
            rate = rates[key]
        run = estimate(cfg, train_images, rate)
        run.update(overrides=overrides, train_images_source=count_source, eval_images_per_epoch=eval_images)
        runs.append(run)
    return {
        "jobs": len(runs),
        "total_steps": sum(r["total_steps"] for r in runs),
        "total_images": sum(r["images_processed"] for r in runs),
        "total_train_hours": sum(r["train_hours"] for r in runs),
        "runs": runs,
    }


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:,.1f} h" + (f" ({h / 24:.1f} days)" if h >= 48 else "")


def format_table(record: dict[str, Any]) -> str:
    """One job: a key-value table; a sweep: one row per job and the total."""
    runs = record["runs"]
    note = "training steps only: evaluation and start-up are not included"
    if len(runs) == 1:
        r = runs[0]
        rows = [
            ("images per epoch", f"{r['train_images']:,} ({r['train_images_source']})"),
            ("global batch", f"{r['global_batch']:,} ({r['world_size']} process(es))"),
            ("steps per epoch", f"{r['steps_per_epoch']:,} (full batches; the last partial one is dropped)"),
            ("epochs", f"{r['epochs']:,}"),
            ("total steps", f"{r['total_steps']:,}"),
            ("images processed", f"{r['images_processed']:,}"),
            ("throughput", f"{r['img_per_s']:,.1f} img/s ({r['img_per_s_source']})"),
            ("wall time", f"{_hours(r['train_hours'])} ({note})"),
        ]
        if r["eval_images_per_epoch"] is not None:
            rows.insert(1, ("evaluated per epoch", f"{r['eval_images_per_epoch']:,} images"))
        width = max(len(k) for k, _ in rows)
        return "\n".join([f"plan: {r['name']} ({r['model']})", *(f"  {k:<{width}}  {v}" for k, v in rows)])
    # the table names each job by what differs between the jobs; the rest is printed once
    common = [o for o in runs[0]["overrides"] if all(o in r["overrides"] for r in runs)]
    head = ("job", "steps/epoch", "epochs", "total steps", "images", "img/s", "wall time")
    table = [
        (
            " ".join(o for o in r["overrides"] if o not in common) or "(the same)",
            f"{r['steps_per_epoch']:,}",
            f"{r['epochs']}",
            f"{r['total_steps']:,}",
            f"{r['images_processed']:,}",
            f"{r['img_per_s']:,.1f}",
            _hours(r["train_hours"]),
        )
        for r in runs
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(head)]
    lines = [f"plan: {runs[0]['name']} ({runs[0]['model']}), every job with: {' '.join(common) or '-'}"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    sources = sorted({r["img_per_s_source"] for r in runs})
    lines.append(
        f"{record['jobs']} jobs: {record['total_steps']:,} steps, {record['total_images']:,} images, "
        f"{_hours(record['total_train_hours'])} one after another ({note})"
    )
    lines += [f"img/s: {s}" for s in sources]
    return "\n".join(lines)
