"""The GPU check's rows that run the project's programs: the environment (modules, `pip check`,
what the kit installed), the training step's throughput eager and compiled, its peak memory against
rehearse's estimate, the synthetic model bench, the GPU tests' sync audit, the CLI's train and eval,
and a torchrun process group. Each row takes a `Ctx` and returns its measurements;
scripts/gpu_rows.py lists them with their goals."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from gpu_row_types import REPO, Ctx, Skip


def row_environment(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(ctx.device) if ctx.cuda else "cpu",
        "cpus": os.cpu_count(),
    }
    for mod in ("nvidia.dali", "hydra", "omegaconf", "pytest", "sklearn", "torchvision"):
        try:
            out[mod] = getattr(__import__(mod, fromlist=["__version__"]), "__version__", "present")
        except Exception as e:  # absent, or present but broken (a CUDA library missing)
            out[mod] = f"no ({type(e).__name__})"
    if ctx.cuda:
        free, total = torch.cuda.mem_get_info(ctx.device)
        out["gpu_memory_gib"] = round(total / 2**30, 1)
    out["missing_modules"] = sum(
        str(out[m]).startswith("no (") for m in ("nvidia.dali", "hydra", "torchvision")
    )
    out.update(pip_check(ctx))
    # what scripts/wheelhouse.sh --install put in (one entry per package), when it ran
    out["install_failed"] = 0
    if ctx.install_report is not None and ctx.install_report.is_file():
        report = json.loads(ctx.install_report.read_text())
        out["installed"] = report
        out["install_failed"] = sum(r["result"] not in ("installed", "kept") for r in report["packages"])
    return out


def pip_check(ctx: Ctx) -> dict[str, Any]:
    """`python -m pip check` of this interpreter's environment: every installed distribution's
    requirements satisfied (a kit that installs a pre-release Hydra fails it, where importing
    modules alone would not). Its exit code is the verdict; its output is kept, first lines here
    and all of it in the logs archive."""
    proc = _run(ctx, [sys.executable, "-m", "pip", "check"], 120, "pip_check.txt")
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return {"pip_check_ok": proc.returncode == 0, "pip_check": lines[:20] or [f"exit {proc.returncode}"]}


def _run(ctx: Ctx, cmd: list[str], timeout: float, log_name: str, env: dict | None = None):
    """A subprocess row: stopped at its own timeout or at the budget, whichever comes first; its
    output goes to the logs archive as `log_name`."""
    limit = max(1.0, min(timeout, ctx.seconds_left()))
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=limit, cwd=REPO, env={**os.environ, **(env or {})}
    )
    (ctx.logs / log_name).write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["(no output)"])[-1]


def row_gpu_tests(ctx: Ctx) -> dict[str, Any]:
    proc = _run(
        ctx,
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        300,
        "gpu_tests.txt",
    )
    return {
        "pytest": _last_line(proc.stdout),
        "passed": proc.returncode == 0,
        "includes": "host-sync audit per step, with and without the weight EMA "
        "(test_training_step_makes_only_the_audited_host_syncs)",
    }


def row_bench_model(ctx: Ctx) -> dict[str, Any]:
    if ctx.cuda:
        args = ["--batch-size", "256"]
        if ctx.quick:
            args += ["--only", "bf16 + channels_last", "--skip-overhead"]
    else:  # the same code at toy size; torch.compile on a CPU takes minutes: its number is the GPU's
        args = ["--device", "cpu", "--model", "resnet18", "--batch-size", "4", "--image-size", "32"]
        args += ["--steps", "1", "--trials", "1", "--warmup", "1", "--skip-compile", "--skip-overhead"]
        if ctx.quick:
            args += ["--only", "bf16 + channels_last"]
    json_path = ctx.logs / "gpu_bench.json"
    proc = _run(
        ctx, [sys.executable, "scripts/gpu_bench.py", *args, "--json", str(json_path)], 420, "gpu_bench.txt"
    )
    if proc.returncode != 0:
        raise RuntimeError(f"gpu_bench.py exited {proc.returncode}: {_last_line(proc.stderr)}")
    record = json.loads(json_path.read_text())
    out: dict[str, Any] = {r["setting"]: round(r["img_per_s"], 1) for r in record["rows"]}
    out["unit"] = "img/s, synthetic batches" + ("" if ctx.cuda else " (CPU smoke: resnet18, batch 4, 32 px)")
    if record.get("loop_overhead"):
        out["loop_overhead_ratio"] = round(record["loop_overhead"]["overhead_ratio"], 3)
    return out


def _train_config(ctx: Ctx, compile_: bool, nonfinite: str = "stop") -> tuple[Any, str, str]:
    """The training rows' run: (RootConfig, where its images come from, the setting in words).
    ResNet-50 batch 256 at 224 px in bf16 channels_last on a GPU, a toy ResNet-18 on a CPU;
    `nonfinite`: stabilizer.nonfinite (off: no per-step host sync for the non-finite verdict)."""
    from resnet_repro.config import (
        BenchConfig,
        DataConfig,
        LoggingConfig,
        ModelConfig,
        RootConfig,
        StabilizerConfig,
        TrainerConfig,
    )

    files, _, origin = ctx.files(real=ctx.cuda)
    root = Path(files[0]).parents[2]
    if ctx.cuda:  # ~6,000 images a trial: seconds at the goal's rate, past the pipeline's start
        model, batch, size, precision, images, threads = "resnet50", 256, 224, "bf16", 256 * 24, 8
    else:
        model, batch, size, precision, images, threads = "resnet18", 8, 32, "fp32", 24, 2
    cfg = RootConfig(
        data=DataConfig(
            name="folder",
            root=str(root),
            eval_split="train",
            image_size=size,
            normalization="published",
            num_threads=threads,
        ),
        model=ModelConfig(name=model, channels_last=True),
        trainer=TrainerConfig(
            batch_size=batch, precision=precision, device=ctx.device.type, compile=compile_
        ),
        stabilizer=StabilizerConfig(nonfinite=nonfinite),
        logging=LoggingConfig(tensorboard=False, progress=False),
        bench=BenchConfig(mode="train", trials=3, min_images=images),
    )
    setting = (
        f"{model} batch {batch} {size}px {precision} channels_last"
        + (" compiled" if compile_ else "")
        + f", DALI {'mixed' if ctx.cuda else 'cpu'} decode, {images} images per trial, median of 3"
    )
    return cfg, origin, setting


def _bench_train(ctx: Ctx, cfg: Any) -> dict[str, Any]:
    """The real training step fed by DALI (mixed decode on a GPU) over the sample repeated: a
    warm-up pass (the compile, with trainer.compile), then the median of 3 trials."""
    from resnet_repro.planning.bench import bench_train

    start = time.perf_counter()
    result = bench_train(cfg, ctx.device, ctx.tmp)
    return {
        "img_per_s": round(result["img_per_s"], 1),
        "trials_img_per_s": [round(v, 1) for v in result["trials"]],
        "data_wait_fraction": round(result["data_wait_fraction"], 4),
        "peak_memory_gib": round(result["peak_memory_mb"] / 1024, 2),
        "wall_s_with_warmup": round(time.perf_counter() - start, 1),
    }


def row_train(ctx: Ctx) -> dict[str, Any]:
    """Eager training img/s and data wait, with the non-finite check as a run has it
    (stabilizer.nonfinite=stop: one host sync per step), then on a GPU again with it off, to price
    that sync. The peak memory of the first is kept for the memory row."""
    cfg, origin, setting = _train_config(ctx, compile_=False)
    out: dict[str, Any] = {"from": origin, "setting": setting, "nonfinite": "stop", **_bench_train(ctx, cfg)}
    ctx.cache["train_img_per_s"] = out["img_per_s"]
    if ctx.cuda:
        # the allocator's peaks over the last trial (train_one_epoch resets them at each pass)
        ctx.cache["train_peak"] = {
            "cfg": cfg,
            "allocated_gib": out["peak_memory_gib"],
            "reserved_gib": round(torch.cuda.max_memory_reserved(ctx.device) / 2**30, 2),
        }
        off = _bench_train(ctx, _train_config(ctx, compile_=False, nonfinite="off")[0])
        out["nonfinite_off"] = off
        out["img_per_s_nonfinite_off"] = off["img_per_s"]
        # the share of throughput the per-step sync costs (negative: within the trials' noise)
        out["nonfinite_sync_cost_fraction"] = round(1 - out["img_per_s"] / off["img_per_s"], 4)
    else:
        out["nonfinite_off"] = "not measured on a CPU: there is no device to wait for"
    return out


def row_memory_estimate(ctx: Ctx) -> dict[str, Any]:
    """The training row's peak against `resnet-repro rehearse`'s estimate for the same model,
    batch, crop and precision (memory_fit.estimate on a meta-device model, as rehearse.check calls
    it): the estimate is meant as an upper bound of the allocator's peak."""
    if "train_peak" not in ctx.cache:
        raise Skip("no training peak to compare: the training row did not run on this device")
    peak = ctx.cache["train_peak"]
    return estimate_vs_peak(peak["cfg"], peak["allocated_gib"], peak["reserved_gib"])


def estimate_vs_peak(cfg: Any, allocated_gib: float, reserved_gib: float) -> dict[str, Any]:
    """rehearse's memory estimate for one process of `cfg`'s training (world 1, DALI on the GPU)
    beside a measured peak (GiB), and their ratios."""
    from resnet_repro.config import per_device_batch
    from resnet_repro.data import progressive
    from resnet_repro.models import build_model
    from resnet_repro.planning import memory_fit
    from resnet_repro.planning.meta_model import saved_bytes_per_image
    from resnet_repro.training.run_data import load_file_lists

    num_classes = max(load_file_lists(cfg.data).train.labels) + 1  # as bench_train builds the model
    size = max(progressive.train_sizes(cfg.data, cfg.trainer.epochs))
    batch = per_device_batch(cfg.trainer, 1)
    with torch.device("meta"):
        net = build_model(cfg.model, num_classes, cfg.regularization)
    activations = saved_bytes_per_image(net, (3, size, size))
    est = memory_fit.estimate(cfg, net, batch, 1, activations, image_size=size, on_gpu=True)
    return {
        "setting": f"{cfg.model.name} batch {batch} {size}px {cfg.trainer.precision}, {num_classes} classes",
        "measured_allocated_gib": allocated_gib,  # torch.cuda.max_memory_allocated
        "measured_reserved_gib": reserved_gib,  # torch.cuda.max_memory_reserved
        "estimate_allocated_gib": round(est.allocated, 2),  # the parts torch's allocator holds
        "estimate_total_gib": round(est.total, 2),  # + DALI buffers, CUDA context, allocator slack
        "estimate_parts_gib": {name: round(getattr(est, name), 3) for name in memory_fit.PARTS},
        "estimate_over_allocated": round(est.allocated / allocated_gib, 3) if allocated_gib else None,
        "estimate_total_over_reserved": round(est.total / reserved_gib, 3) if reserved_gib else None,
    }


def row_train_compiled(ctx: Ctx) -> dict[str, Any]:
    from resnet_repro.training.compiling import graphs_compiled

    cfg, origin, setting = _train_config(ctx, compile_=True)
    out: dict[str, Any] = {"from": origin, "setting": setting, **_bench_train(ctx, cfg)}
    out["compiled_graphs"] = graphs_compiled()  # since the run's compile_for_shapes
    if "train_img_per_s" in ctx.cache:
        out["speedup_over_eager"] = round(out["img_per_s"] / ctx.cache["train_img_per_s"], 3)
    return out


def row_cli(ctx: Ctx) -> dict[str, Any]:
    """`resnet-repro train` of the demo through the CLI on the device, then `resnet-repro eval` of its
    checkpoint: the same top-1."""
    from resnet_repro.data.demo import build_demo_dataset

    root = build_demo_dataset(ctx.tmp / "digits")
    run_dir = ctx.tmp / "cli_run"
    precision = "bf16" if ctx.cuda else "fp32"
    train = [
        "train",
        f"data.root={root}",
        f"hydra.run.dir={run_dir}",
        f"trainer.device={ctx.device.type}",
        f"trainer.precision={precision}",
        "trainer.epochs=1",
        "stabilizer.warmup_epochs=0",
        "logging.progress=false",
    ]
    if not ctx.cuda:
        train.append("trainer.max_steps_per_epoch=4")
    proc = _run(ctx, [sys.executable, "-m", "resnet_repro", *train], 300, "cli_train.txt")
    if proc.returncode != 0:
        raise RuntimeError(f"train exited {proc.returncode}: {_last_line(proc.stderr)}")
    val = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in val if r.get("split") == "val"][-1]
    evaluate_cmd = [
        sys.executable,
        "-m",
        "resnet_repro",
        "eval",
        f"checkpoint={run_dir}/checkpoints/last.pt",
        f"data.root={root}",
        f"hydra.run.dir={ctx.tmp}/cli_eval_run",
    ]
    proc = _run(ctx, evaluate_cmd, 180, "cli_eval.txt")
    if proc.returncode != 0:
        raise RuntimeError(f"eval exited {proc.returncode}: {_last_line(proc.stderr)}")
    result = json.loads(_last_line(proc.stdout))
    return {
        "device": ctx.device.type,
        "precision": precision,
        "train_top1": final["top1"],
        "eval_top1": result["top1"],
        "same_top1": result["top1"] == final["top1"],
    }


TORCHRUN_SCRIPT = """
import os, torch, torch.distributed as dist
backend = os.environ["CHECK_BACKEND"]
dist.init_process_group(backend)
device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if backend == "nccl" else torch.device("cpu")
x = torch.ones(4, device=device) * (dist.get_rank() + 1)
dist.all_reduce(x)
print("all_reduce", x.tolist(), "world", dist.get_world_size())
dist.destroy_process_group()
"""


def row_torchrun(ctx: Ctx) -> dict[str, Any]:
    backend = "nccl" if ctx.cuda else "gloo"
    script = ctx.tmp / "torchrun_check.py"
    script.write_text(TORCHRUN_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(script)]
    proc = _run(ctx, cmd, 120, "torchrun.txt", env={"CHECK_BACKEND": backend})
    ok = proc.returncode == 0 and "all_reduce [1.0, 1.0, 1.0, 1.0]" in proc.stdout
    return {"backend": backend, "processes": 1, "exit_code": proc.returncode, "ok": ok}
