"""The CUDA path: run by scripts/gpu_check.sh on a GPU machine, skipped elsewhere.

Imports only torch and this package at module level, so it also runs where DALI and Hydra are
absent (the DALI test skips itself then).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import (
    BenchConfig,
    DataConfig,
    EmaConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    RootConfig,
    ScheduleConfig,
    StabilizerConfig,
    TrainerConfig,
)
from resnet_repro.evaluation.evaluate import evaluate
from resnet_repro.training.summary import Derived

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda", 0) if torch.cuda.is_available() else None


def cfg_for(precision: str, channels_last: bool, max_norm: float | None = None) -> RootConfig:
    return RootConfig(
        data=DataConfig(name="synthetic", root="-", image_size=64),
        model=ModelConfig(name="resnet18", channels_last=channels_last),
        optim=OptimConfig(lr_per_256=0.1),
        schedule=ScheduleConfig(name="constant"),
        stabilizer=StabilizerConfig(max_norm=max_norm),
        trainer=TrainerConfig(batch_size=32, precision=precision, epochs=1, device="cuda"),
        logging=LoggingConfig(tensorboard=False, progress=False),
        bench=BenchConfig(warmup=2, steps=3, trials=1, num_classes=10),
    )


def batches(n: int, channels_last: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [
        (
            torch.randn(32, 3, 64, 64, generator=g).to(CUDA).contiguous(memory_format=fmt),
            torch.randint(0, 10, (32,), generator=g).to(CUDA),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    ("precision", "channels_last"),
    [("fp32", False), ("bf16", True), ("fp16", True)],
    ids=["fp32", "bf16-cl", "fp16-cl"],
)
def test_training_step_runs_on_cuda_and_learns(precision: str, channels_last: bool, tmp_path: Path):
    from resnet_repro.training.loop import train_one_epoch
    from resnet_repro.training.train import build_parts

    cfg = cfg_for(precision, channels_last, max_norm=5.0)
    derived = Derived(1, 32, 0.0125, 8, 0, 0, 10, str(CUDA))
    parts = build_parts(cfg, derived, DistEnv(), CUDA, tmp_path)
    data = batches(4, channels_last) * 2  # the same 4 batches twice: the loss must drop
    first = train_one_epoch(parts, data[:4], cfg, DistEnv(), CUDA)
    second = train_one_epoch(parts, data[4:], cfg, DistEnv(), CUDA)
    parts.interrupts.close()
    assert second["loss"] < first["loss"]
    assert first["peak_memory_mb"] > 0 and 0 <= first["clipped_fraction"] <= 1
    assert next(parts.state.net.parameters()).device.type == "cuda"


@pytest.mark.parametrize(
    ("nonfinite", "ema_decay", "per_step"),
    [("stop", None, 1), ("off", None, 0), ("off", 0.99, 0)],
    ids=["nonfinite-stop", "nonfinite-off", "nonfinite-off-ema"],
)
def test_training_step_makes_only_the_audited_host_syncs(
    nonfinite: str, ema_decay: float | None, per_step: int, tmp_path: Path
):
    """The audit of issue 6, enforced: a bf16 step waits for the GPU once (the non-finite flag), or
    never with stabilizer.nonfinite=off, also with the weight EMA (its update reads no counter);
    the epoch's end reads its sums and norms once. Logging is pushed past the epoch here so only
    the step itself is counted; a single process polls no preemption all-reduce."""
    import dataclasses
    import warnings

    from resnet_repro.training.loop import train_one_epoch
    from resnet_repro.training.train import build_parts

    base = cfg_for("bf16", True, max_norm=5.0)
    cfg = dataclasses.replace(
        base,
        stabilizer=dataclasses.replace(base.stabilizer, nonfinite=nonfinite),
        trainer=dataclasses.replace(base.trainer, ema=EmaConfig(decay=ema_decay)),
        logging=dataclasses.replace(base.logging, log_every_steps=1000),
    )
    derived = Derived(1, 32, 0.0125, 8, 0, 0, 10, str(CUDA))
    parts = build_parts(cfg, derived, DistEnv(), CUDA, tmp_path)
    data = batches(6, True)
    train_one_epoch(parts, data[:2], cfg, DistEnv(), CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_one_epoch(parts, data[2:], cfg, DistEnv(), CUDA)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        parts.interrupts.close()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    end_of_epoch = 3  # sums.tolist(), the norms' .cpu(), and one spare for the peak-memory query
    assert len(syncs) <= per_step * 4 + end_of_epoch, [f"{w.filename}:{w.lineno}" for w in syncs]


def test_exact_evaluation_on_cuda_counts_every_image(tmp_path: Path):
    from resnet_repro.models import build_model

    model = build_model(ModelConfig(name="resnet18"), 10).to(CUDA)
    data = batches(3, False)
    result = evaluate(model, data, DistEnv(), CUDA, expected_total=96, precision="bf16")
    assert result["num_samples"] == 96 and 0 <= result["top1"] <= 1


def test_bench_model_measures_img_per_s_and_peak_memory(tmp_path: Path):
    from resnet_repro.planning.bench import bench_model

    result = bench_model(cfg_for("bf16", True), CUDA, tmp_path)
    assert result["img_per_s"] > 0 and result["peak_memory_mb"] > 0


@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="DALI is not installed")
def test_dali_mixed_decode_matches_cpu_decode(tmp_path: Path):
    from conftest import make_image_folder

    from resnet_repro.data.dali import DaliLoader, Transform
    from resnet_repro.data.splits import list_split

    make_image_folder(tmp_path, "val", {"a": 5, "b": 5}, grayscale_every=3)
    files = list_split(tmp_path, "val")
    t = Transform(train=False, image_size=32, crop_ratio=0.875, mean=(0.5,) * 3, std=(0.25,) * 3)
    gpu = [
        x
        for x, _ in DaliLoader(files.files, files.labels, t, batch_size=4, num_threads=2, seed=0, device=CUDA)
    ]
    cpu = [
        x
        for x, _ in DaliLoader(
            files.files, files.labels, t, batch_size=4, num_threads=2, seed=0, device=torch.device("cpu")
        )
    ]
    assert all(x.device.type == "cuda" for x in gpu)
    diff = (torch.cat(gpu).cpu() - torch.cat(cpu)).abs().mean().item()
    assert diff < 0.05  # nvJPEG and libjpeg-turbo differ by rounding (IDCT, chroma upsampling)
