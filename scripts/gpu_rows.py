"""The GPU check's rows in order, each with its goals, its time estimates on (cuda, cpu) and what
it needs: the table scripts/gpu_check.py runs. The rows themselves: scripts/gpu_rows_data.py (the
data pipeline's) and scripts/gpu_rows_run.py (the programs' and the training's)."""

from __future__ import annotations

from typing import Any

from gpu_row_types import Goal, Row
from gpu_rows_data import row_decode, row_memory, row_multipass_eval, row_odd_images, row_stats
from gpu_rows_run import (
    row_bench_model,
    row_cli,
    row_environment,
    row_gpu_tests,
    row_memory_estimate,
    row_torchrun,
    row_train,
    row_train_compiled,
)


def _is(name: str, key: str, value: Any = True) -> Goal:
    return Goal(name, key, "==", value, value)


# In the order the mission needs them: what the first GPU run must settle first comes first.
# Goal values are first estimates for one H100/H200 (docs/benchmarks.md); a missed one is a
# finding to look at, not a bug.
ROWS = [
    Row(
        "environment and pip check (and what the kit installed)",
        row_environment,
        (
            _is("environment_missing_modules", "missing_modules", 0),
            _is("install_failed_packages", "install_failed", 0),
            _is("pip_check", "pip_check_ok"),
            # DALI's decoder threads (data.num_threads=8) and the training process need cores of their own
            Goal("cpus", "cpus", ">=", 8, 1),
        ),
        (20, 15),  # module imports (DALI's CUDA libraries) ~15 s, pip check a few seconds
        quick=True,
    ),
    Row(
        "decode: DALI mixed vs CPU on the real sample, fancy upsampling off/on",
        row_decode,
        (
            _is("decode_real_jpegs", "real_jpegs"),
            Goal("decode_mean_abs_diff", "mean_abs_diff_0_255", "<=", 2.0),
            Goal("decode_top1_agreement", "top1_agreement", ">=", 0.98),
        ),
        (90, 0),
        ("cuda", "dali"),
        quick=True,
    ),
    Row(
        "training: ResNet-50 bf16 channels_last img/s with data wait, DALI (and non-finite sync off)",
        row_train,
        (
            Goal("train_img_per_s", "img_per_s", ">=", 3000, 0.1),
            Goal("data_wait_fraction", "data_wait_fraction", "<=", 0.05),
        ),
        # on a GPU 90 s with the pipeline's start and cudnn's autotuning, + 30 s for the second
        # measurement with the sync off; on a shared 2-core CPU the toy version takes over a minute
        (120, 90),
        ("dali",),
        quick=True,
    ),
    Row(
        "memory: training peak vs rehearse's estimate",
        row_memory_estimate,
        (
            # the estimate is meant as an upper bound of the allocator's peak
            Goal("memory_estimate_covers_peak", "estimate_over_allocated", ">=", 1.0),
            Goal("peak_memory_gib", "measured_allocated_gib", "<=", 40),
        ),
        (10, 0),  # the training row's peak reused; the estimate is a meta-device forward
        ("cuda",),
        quick=True,
    ),
    Row(
        "compile: training img/s with torch.compile (cold compile included in the wall time)",
        row_train_compiled,
        (
            Goal("train_compiled_img_per_s", "img_per_s", ">=", 3300),
            Goal("compile_speedup", "speedup_over_eager", ">=", 1.05),
            Goal("compiled_graphs", "compiled_graphs", "<=", 2),
        ),
        (300, 0),
        ("cuda", "dali"),
        quick=True,
    ),
    Row("DDP/NCCL: torchrun, 1 process", row_torchrun, (_is("torchrun_ok", "ok"),), (40, 40)),
    Row(
        "statistics pass on the GPU: exact sums, throughput, vs CPU decode",
        row_stats,
        (_is("stats_sums_exact", "gpu_sums_exact"), Goal("stats_img_per_s", "img_per_s", ">=", 500)),
        (60, 0),
        ("cuda", "dali"),
    ),
    Row(
        "host syncs per step (the gpu tests' sync audit, EMA included)",
        row_gpu_tests,
        (_is("gpu_tests_passed", "passed"),),
        (150, 0),
        ("cuda", "pytest"),
    ),
    Row(
        "memory: train + 2 eval pipelines",
        row_memory,
        (
            Goal("pipelines_gpu_gib", "gpu_gib_used_by_3_pipelines", "<=", 6),
            Goal("pipelines_host_gib", "host_available_gib_drop", "<=", 6),
        ),
        (40, 0),
        ("cuda", "dali"),
        quick=True,
    ),
    Row(
        "odd images batch (CMYK, PNG, gray, EXIF, progressive)",
        row_odd_images,
        (_is("odd_images_ok", "ok"),),
        (20, 20),
        ("dali",),
    ),
    Row(
        "multi-pass exact evaluation",
        row_multipass_eval,
        (_is("multipass_identical", "identical"),),
        (40, 40),
        ("dali",),
    ),
    Row(
        "bench model (synthetic batches: fp32 / bf16 / channels_last / compile)",
        row_bench_model,
        (Goal("bench_model_bf16_cl_img_per_s", "bf16 + channels_last", ">=", 3000, 0.01),),
        (300, 60),
    ),
    Row(
        "CLI train + eval reproduces top-1",
        row_cli,
        (_is("cli_same_top1", "same_top1"),),
        (120, 150),
        ("hydra", "dali", "sklearn"),
        quick=True,
    ),
]
