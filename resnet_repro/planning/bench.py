"""`resnet-repro bench <mode>`: throughput numbers measured, never assumed.

model          synthetic batches already on the device: forward + backward + step, img/s, peak memory
data           the configured input pipeline alone (decode + augment + normalize), img/s
train          the real training step with the real pipeline: img/s and data-wait fraction
loop-overhead  this runner's train_one_epoch vs a bare loop on the same model and batches
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from resnet_repro.cluster import distributed
from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import RootConfig, UserError, per_device_batch
from resnet_repro.data.loaders import build_loader
from resnet_repro.evaluation.evaluate import autocast
from resnet_repro.training.metrics import peak_memory_mb
from resnet_repro.training.optim import peak_lr
from resnet_repro.training.summary import Derived

MODES = ("model", "data", "train", "loop-overhead")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_trials(fn: Callable[[], int], device: torch.device, trials: int) -> list[float]:
    """img/s of each call of fn (which returns the images it processed)."""
    rates = []
    for _ in range(trials):
        _sync(device)
        start = time.perf_counter()
        images = fn()
        _sync(device)
        rates.append(images / (time.perf_counter() - start))
    return rates


def _derived(cfg: RootConfig, num_classes: int, device: torch.device, steps: int) -> Derived:
    b = per_device_batch(cfg.trainer, 1)
    return Derived(1, b, peak_lr(cfg.optim, b), steps, 0, 0, num_classes, str(device))


def _synthetic_batches(cfg: RootConfig, n: int, num_classes: int, device: torch.device) -> list:
    g = torch.Generator(device="cpu").manual_seed(0)
    s, b = cfg.data.image_size, per_device_batch(cfg.trainer, 1)
    fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    return [
        (
            torch.randn(b, 3, s, s, generator=g).to(device).contiguous(memory_format=fmt),
            torch.randint(0, num_classes, (b,), generator=g).to(device),
        )
        for _ in range(n)
    ]


def _bench_parts(cfg: RootConfig, derived: Any, device: torch.device, run_dir: Path) -> Any:
    """The training run's parts, without its preemption watch: a benchmark has nothing to save, so
    SIGTERM (and SLURM's warning signals) end it at once instead of ending an epoch of it."""
    from resnet_repro.training.train import build_parts

    parts = build_parts(cfg, derived, DistEnv(), device, run_dir)
    parts.interrupts.close()  # the signals' own handlers again
    return parts


def bench_model(cfg: RootConfig, device: torch.device, run_dir: Path) -> dict[str, Any]:
    b = cfg.bench
    parts = _bench_parts(cfg, _derived(cfg, b.num_classes, device, b.steps), device, run_dir)
    state = parts.state
    batches = _synthetic_batches(cfg, 1, b.num_classes, device)
    images, labels = batches[0]

    def run(steps: int) -> int:
        for _ in range(steps):
            with autocast(device, cfg.trainer.precision):
                loss = F.cross_entropy(state.model(images), labels)
            state.optimizer.zero_grad(set_to_none=True)
            state.scaler.scale(loss).backward()
            state.scaler.step(state.optimizer)
            state.scaler.update()
        return steps * images.shape[0]

    run(b.warmup)  # includes torch.compile's compile time when trainer.compile=true
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates = _timed_trials(lambda: run(b.steps), device, b.trials)
    return {
        "img_per_s": statistics.median(rates),
        "trials": rates,
        "peak_memory_mb": peak_memory_mb(device.type),
    }


def _repeated_files(cfg: RootConfig, min_images: int) -> tuple[list[str], list[int]]:
    """At least `min_images` training images for one trial, in whole batches (a partial last batch
    would time a different shape, and recompile a compiled model): the split repeated when it is
    smaller, else an evenly spaced selection (every class, not the first few; a trial on ImageNet
    is not an epoch)."""
    from resnet_repro.training.run_data import load_file_lists

    train_list = load_file_lists(cfg.data).train
    n = len(train_list)
    batch = per_device_batch(cfg.trainer, 1)
    wanted = -(-min_images // batch) * batch
    if wanted > n:
        reps = -(-wanted // n)
        return (list(train_list.files) * reps)[:wanted], (list(train_list.labels) * reps)[:wanted]
    idx = [i * n // wanted for i in range(wanted)]
    return [train_list.files[i] for i in idx], [train_list.labels[i] for i in idx]


def _train_loader(cfg: RootConfig, files: list[str], labels: list[int], seed: int, device: torch.device):
    """The configured backend with the training transform (augmentation drawn from `seed`)."""
    batch = per_device_batch(cfg.trainer, 1)
    return build_loader(
        cfg.data,
        files,
        labels,
        train=True,
        batch_size=batch,
        seed=seed,
        device=device,
        channels_last=cfg.model.channels_last,
    )


def bench_data(cfg: RootConfig, device: torch.device, run_dir: Path) -> dict[str, Any]:
    b = cfg.bench
    files, labels = _repeated_files(cfg, b.min_images)

    def one_pass(seed: int) -> int:
        loader = _train_loader(cfg, files, labels, seed, device)
        n = 0
        for images, _ in loader:
            n += images.shape[0]
        return n

    one_pass(0)  # warm-up: thread pools, allocations
    seeds = iter(range(1, b.trials + 1))
    rates = _timed_trials(lambda: one_pass(next(seeds)), device, b.trials)
    return {"img_per_s": statistics.median(rates), "trials": rates, "images_per_trial": len(files)}


def bench_train(cfg: RootConfig, device: torch.device, run_dir: Path) -> dict[str, Any]:
    from resnet_repro.training.loop import train_one_epoch
    from resnet_repro.training.metrics import NullLogger

    b = cfg.bench
    files, labels = _repeated_files(cfg, b.min_images)
    steps = len(files) // per_device_batch(cfg.trainer, 1)
    num_classes = max(labels) + 1
    cfg = replace(cfg, logging=replace(cfg.logging, tensorboard=False, progress=False))
    parts = _bench_parts(cfg, _derived(cfg, num_classes, device, steps), device, run_dir)
    parts.logger = NullLogger()
    results = []
    for trial in range(b.trials + 1):
        loader = _train_loader(cfg, files, labels, trial, device)
        metrics = train_one_epoch(parts, loader, cfg, DistEnv(), device)
        if trial > 0:  # the first pass is warm-up
            results.append(metrics)
    return {
        "img_per_s": statistics.median(m["img_per_s"] for m in results),
        "data_wait_fraction": statistics.median(m.get("data_wait_fraction", 0.0) for m in results),
        "step_time_p50_s": statistics.median(m.get("step_time_p50_s", 0.0) for m in results),
        "peak_memory_mb": max(m["peak_memory_mb"] for m in results),
        "trials": [m["img_per_s"] for m in results],
    }


def bench_loop_overhead(cfg: RootConfig, device: torch.device, run_dir: Path) -> dict[str, Any]:
    """Same model, optimizer and in-memory batches: the runner's step vs forward/loss/backward/step."""
    from resnet_repro.training.loop import train_one_epoch
    from resnet_repro.training.metrics import NullLogger

    b = cfg.bench
    cfg = replace(cfg, logging=replace(cfg.logging, tensorboard=False, progress=False))
    batches = _synthetic_batches(cfg, b.steps, b.num_classes, device)
    parts = _bench_parts(cfg, _derived(cfg, b.num_classes, device, b.steps), device, run_dir)
    parts.logger = NullLogger()

    def bare() -> int:
        model, opt, scaler = parts.state.model, parts.state.optimizer, parts.state.scaler
        for images, labels in batches:  # the same precision as the runner's step
            with autocast(device, cfg.trainer.precision):
                loss = F.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return len(batches) * per_device_batch(cfg.trainer, 1)

    def ours() -> int:
        train_one_epoch(parts, batches, cfg, DistEnv(), device)
        return len(batches) * per_device_batch(cfg.trainer, 1)

    bare(), ours()  # warm-up both
    bare_rates, our_rates = [], []
    for _ in range(b.trials):  # interleaved, so drift in machine speed hits both alike
        bare_rates += _timed_trials(bare, device, 1)
        our_rates += _timed_trials(ours, device, 1)
    bare_rate, our_rate = statistics.median(bare_rates), statistics.median(our_rates)
    return {"bare_img_per_s": bare_rate, "runner_img_per_s": our_rate, "overhead_ratio": bare_rate / our_rate}


def bench_stats(cfg: RootConfig, device: torch.device, run_dir: Path) -> dict[str, Any]:
    """The normalization-statistics pass against decoding alone: same files, reader, decoder and
    resize (data.stats.resize), the same threads; decode-only and stats passes interleaved."""
    import importlib.util

    from resnet_repro.data import channel_sums
    from resnet_repro.data.selection import stats_decoder

    b, d = cfg.bench, cfg.data
    decoder = stats_decoder(d)
    if decoder == "dali" and importlib.util.find_spec("nvidia.dali") is None:
        raise UserError(
            "bench stats with data.backend=dali needs NVIDIA DALI; or pass data.backend=torchvision"
        )
    files, _ = _repeated_files(cfg, b.min_images)

    def one_pass(decode_only: bool) -> int:
        common = dict(
            resize_shorter=d.stats.resize, num_threads=max(1, d.num_threads), batch_size=d.stats.batch_size
        )
        if decoder == "dali":
            _, n = channel_sums.stream(files, device=device, decode_only=decode_only, **common)
        else:
            _, n = channel_sums.stream_torchvision(files, decoder=decoder, decode_only=decode_only, **common)
        return n

    one_pass(True), one_pass(False)  # warm-up: file cache, thread pools
    decode_rates, stats_rates = [], []
    for _ in range(b.trials):  # interleaved, so drift in machine speed hits both alike
        decode_rates += _timed_trials(lambda: one_pass(True), device, 1)
        stats_rates += _timed_trials(lambda: one_pass(False), device, 1)
    decode_rate, stats_rate = statistics.median(decode_rates), statistics.median(stats_rates)
    return {
        "decoder": decoder,
        "resize_shorter": d.stats.resize,
        "decode_img_per_s": decode_rate,
        "stats_img_per_s": stats_rate,
        "stats_vs_decode": stats_rate / decode_rate,
        "images_per_trial": len(files),
    }


_BENCHES: dict[str, Callable[[RootConfig, torch.device, Path], dict[str, Any]]] = {
    "model": bench_model,
    "data": bench_data,
    "train": bench_train,
    "loop-overhead": bench_loop_overhead,
    "stats": bench_stats,
}


def run_bench(cfg: RootConfig, run_dir: Path) -> dict[str, Any]:
    mode = cfg.bench.mode
    if mode not in _BENCHES:
        raise UserError(f"bench mode {mode!r} is unknown; choose one of {', '.join(_BENCHES)}")
    out = Path(cfg.bench.json).expanduser() if cfg.bench.json else run_dir / f"bench_{mode}.json"
    _refuse_unwritable(out)  # before the measurement, which would otherwise be lost
    env = DistEnv()
    device = distributed.pick_device(cfg.trainer.device, env)
    torch.manual_seed(cfg.trainer.seed)
    result = _BENCHES[mode](cfg, device, run_dir)
    record = {
        "mode": mode,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": cfg.model.name,
        "batch_size": per_device_batch(cfg.trainer, 1),
        "image_size": cfg.data.image_size,
        "precision": cfg.trainer.precision,
        "channels_last": cfg.model.channels_last,
        "compile": cfg.trainer.compile,
        "backend": cfg.data.backend,
        "threads": torch.get_num_threads(),
        **result,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return record


def _refuse_unwritable(out: Path) -> None:
    """bench.json's file: a folder there, or a folder that cannot be made or written, is refused."""
    from resnet_repro.checkpoint import folder_problem

    if out.is_dir():
        raise UserError(f"bench.json={out} is a folder; give a file path (e.g. {out / 'bench.json'})")
    problem = folder_problem(out.parent, f"the folder of bench.json={out}:")
    if problem is not None:
        raise UserError(problem)


def format_table(record: dict[str, Any]) -> str:
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in record.items() if k != "trials"]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
