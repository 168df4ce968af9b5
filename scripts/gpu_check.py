"""The GPU acceptance run: every GPU-only risk as one row, in the order the mission needs them, each
judged against its goals; one table, one JSON, and an exit code that never passes on a row it did
not run.

    python scripts/gpu_check.py --out DIR [--device cuda|cpu] [--quick] [--sample DIR]
        [--budget-s 540] [--goal NAME=VALUE ...] [--rows 1,3] [--install-report FILE]

Run through scripts/gpu_check.sh (which installs from a wheelhouse kit first when given one; the
install is outside --budget-s). Every row carries its goals as data (`goal`: name, measured key,
comparison, value, what was measured, `met`) and `met` for the row: true when every goal that
applies on the device was measured and met, false when one was missed or the row failed, null when
the row was skipped, stopped at the budget, or ran without measuring a goal (`partial`).

The verdict (`status` in the JSON, and the exit code):
  met (0)         every row ran and met its goals;
  missed (1)      a goal was missed or a row failed (whatever else was skipped);
  incomplete (3)  nothing missed, but a row was skipped for any reason: not on this device, a
                  module missing, --quick, --rows, the budget, or not reached.
The JSON lists `passed` (row names), `missed` and `skipped` (each with its row, name and why); a
usage error exits 2. `--goal NAME=VALUE` replaces a goal's value (`--goal train_img_per_s=1e9`);
`--list-goals` lists them.

`--budget-s`: the check's time (default: the first five rows' CUDA estimates, DEFAULT_BUDGET_S). A
row whose estimated time no longer fits is skipped (`why` says so) and a running row is stopped at
the budget (status `stopped`). DIR receives three files only: gpu_check.json (rewritten after each
row, the rows not reached yet listed as skipped, so an interrupted run never reads as met), the
text log gpu_check.txt (written by gpu_check.sh) and gpu_check_logs.tar.gz (each row's own logs
and tracebacks, text only). Runs, checkpoints and generated data live in a temporary folder that
is removed at the end.

`--device cpu` runs every row that can run on a CPU (smaller sizes, same code, CPU goals) and skips
the GPU-only ones, saying why: its verdict is at best `incomplete`. `--sample`: an ImageNet-layout
folder of real JPEGs (default: the kit's copy gpu_kit/imagenet-sample made by `make gpu-kit`, else
../shared/data/imagenet-sample); without one, generated JPEGs are used, and the decode row's
`real_jpegs` goal is missed.
Imports only torch and this package at module level: the lent GPU machine may lack DALI or Hydra.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import operator
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

KIT_SAMPLE = REPO / "gpu_kit" / "imagenet-sample"  # `make gpu-kit`: travels with the checkout
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"
LOG_ARCHIVE = "gpu_check_logs.tar.gz"
LOG_FILE_LIMIT = 256 * 1024  # bytes of each log kept in the archive (its tail)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Skip(Exception):
    """Raised by a row that finds at run time it cannot run here."""


class OverBudget(Exception):
    """Raised in a running row when the run's --budget-s is spent."""


@dataclass
class Ctx:
    device: torch.device
    quick: bool
    logs: Path  # each row's logs: packed into DIR/gpu_check_logs.tar.gz at the end
    sample: Path | None  # an ImageNet-layout folder with a train split, or None
    tmp: Path  # runs, checkpoints, generated data: removed at the end
    deadline: float = math.inf  # time.monotonic() at which the budget is spent
    install_report: Path | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def files(self, limit: int = 250, real: bool = True) -> tuple[list[str], list[int], str]:
        """Real JPEGs of the sample (or generated ones), their labels, and where they came from.
        `real=False` on a CPU: 24 generated JPEGs in 2 classes, to keep the CPU rows short."""
        from resnet_repro.data.splits import list_split

        key = "real" if real or self.cuda else "small"
        if key not in self.cache:
            root, origin = self.sample, f"sample {self.sample}"
            if key == "small" or root is None or not (root / "train").is_dir():
                root = self.tmp / "generated"
                origin = "24 generated JPEGs" + (" (CPU size)" if key == "small" else " (no sample folder)")
                if not (root / "train").is_dir():
                    _generate_jpegs(root / "train", 24)
            fl = list_split(root, "train")
            self.cache[key] = (list(fl.files), list(fl.labels), origin)
        files, labels, origin = self.cache[key]
        return files[:limit], labels[:limit], origin


OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


@dataclass(frozen=True)
class Goal:
    """`result[key] op value`, with the value for each device (None: not judged on that device)."""

    name: str  # unique over all rows: what --goal NAME=VALUE sets
    key: str  # the row's result key it judges
    op: str
    cuda: Any
    cpu: Any = None


@dataclass
class Row:
    name: str
    run: Callable[[Ctx], dict[str, Any]]
    goals: tuple[Goal, ...]
    est_s: tuple[float, float]  # estimated seconds on (cuda, cpu): the budget's skip decision
    needs: tuple[str, ...] = ()  # cuda, dali, hydra, pytest, sklearn
    quick: bool = False


HAVE = {
    "dali": lambda: importlib.util.find_spec("nvidia.dali") is not None,
    "hydra": lambda: importlib.util.find_spec("hydra") is not None,
    "pytest": lambda: importlib.util.find_spec("pytest") is not None,
    "sklearn": lambda: importlib.util.find_spec("sklearn") is not None,
}


def _generate_jpegs(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        smooth = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        pixels = np.kron(smooth, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
        Image.fromarray(pixels).save(folder / f"c{i % 2}" / f"{i}.JPEG", quality=90)


def _transform(train: bool, size: int, pixel_scale: bool = False):
    from resnet_repro.data.dali import Transform

    if pixel_scale:  # outputs on the 0..255 scale, for pixel differences
        return Transform(train=train, image_size=size, crop_ratio=0.875, mean=(0.0,) * 3, std=(1 / 255,) * 3)
    return Transform(train=train, image_size=size, crop_ratio=0.875, mean=MEAN, std=STD)


def _fixed_model(device: torch.device, name: str = "resnet50") -> torch.nn.Module:
    """A fixed (seeded, untrained) ImageNet-shaped model in eval mode: for rows that need a model
    to run, not to predict well."""
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=1000).eval().to(device)


def _agreement_model(ctx: Ctx, images: torch.Tensor, labels: list[int]) -> tuple[torch.nn.Module, str]:
    """A ResNet-50 whose top-1 means something on these images: torchvision's ImageNet weights when
    they are already in torch's hub cache (no network here), else one trained here for a few steps
    on the images themselves (CPU-decoded, 0..255 scale), so that its predictions are spread over
    the classes and a decoder difference can move them."""
    import torchvision

    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        model = torchvision.models.resnet50(weights=weights)
        return model.eval().to(ctx.device), f"torchvision {weights} ({cached})"
    model = _fixed_model(ctx.device).train()
    mean = torch.tensor(MEAN, device=ctx.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=ctx.device).view(1, 3, 1, 1) * 255
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    targets = torch.tensor(labels, device=ctx.device)
    steps = 30 if ctx.cuda else 3
    for step in range(steps):
        idx = torch.arange(step * 32, step * 32 + 32) % len(images)
        with torch.autocast(ctx.device.type, torch.bfloat16, enabled=ctx.cuda):
            loss = torch.nn.functional.cross_entropy(
                model((images[idx].to(ctx.device) - mean) / std), targets[idx.to(ctx.device)]
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval(), f"ResNet-50 trained here for {steps} steps of 32 (no cached torchvision weights)"


# ------------------------------------------------------------------------------------------- rows
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


def _decode_batches(files, labels, t, gpu: bool, decode_args: dict, batch: int = 50):
    """Images (float32 NCHW on the host) of the evaluation graph, decoded on the GPU or the CPU."""
    from nvidia.dali import pipeline_def

    from resnet_repro.data.dali import _define_pipeline

    pipe = pipeline_def(_define_pipeline)(
        files, labels, t, gpu, decode_args, batch_size=batch, num_threads=4, device_id=0 if gpu else None
    )
    pipe.build()
    out = []
    for _ in range(-(-len(files) // batch)):
        images, _ = pipe.run()
        images = images.as_cpu() if gpu else images
        out.append(torch.from_numpy(images.as_array().copy()))
    return torch.cat(out)[: len(files)]


def row_decode(ctx: Ctx) -> dict[str, Any]:
    """nvJPEG ("mixed") vs libjpeg-turbo (cpu) on real JPEGs, chroma fancy upsampling off and on."""
    files, labels, origin = ctx.files()
    t = _transform(False, 224, pixel_scale=True)
    cpu = _decode_batches(files, labels, t, False, {})
    model, model_origin = _agreement_model(ctx, cpu, labels)
    mean = torch.tensor(MEAN, device=ctx.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=ctx.device).view(1, 3, 1, 1) * 255

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model((b.to(ctx.device) - mean) / std).argmax(1).cpu() for b in x.split(50)])

    cpu_pred = predict(cpu)
    out: dict[str, Any] = {
        "images": len(files),
        "from": origin,
        "real_jpegs": origin.startswith("sample"),
        "model": model_origin,
        "distinct_cpu_predictions": len(set(cpu_pred.tolist())),
    }
    for fancy in (False, True):
        gpu = _decode_batches(files, labels, t, True, {"jpeg_fancy_upsampling": fancy})
        key = "fancy_on" if fancy else "fancy_off"
        out[key] = {
            "mean_abs_diff_0_255": round((gpu - cpu).abs().mean().item(), 4),
            "max_abs_diff_0_255": round((gpu - cpu).abs().max().item(), 2),
            "top1_agreement": round((predict(gpu) == cpu_pred).float().mean().item(), 4),
        }
    # judged: the training pipeline's setting (DALI's default, fancy upsampling off)
    out["mean_abs_diff_0_255"] = out["fancy_off"]["mean_abs_diff_0_255"]
    out["top1_agreement"] = out["fancy_off"]["top1_agreement"]
    return out


def _odd_images(folder: Path) -> list[str]:
    """CMYK, PNG named .JPEG, grayscale, EXIF-rotated and progressive JPEGs: what ImageNet holds."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(
        np.kron(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    )
    paths = {}
    paths["cmyk"] = folder / "cmyk.JPEG"
    rgb.convert("CMYK").save(paths["cmyk"], format="JPEG", quality=90)
    paths["png"] = folder / "png.JPEG"
    rgb.save(paths["png"], format="PNG")
    paths["gray"] = folder / "gray.JPEG"
    rgb.convert("L").save(paths["gray"], format="JPEG", quality=90)
    paths["exif"] = folder / "exif.JPEG"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb.save(paths["exif"], format="JPEG", quality=90, exif=exif)
    paths["progressive"] = folder / "progressive.JPEG"
    rgb.save(paths["progressive"], format="JPEG", quality=90, progressive=True)
    return [str(p) for p in paths.values()]


def row_odd_images(ctx: Ctx) -> dict[str, Any]:
    from resnet_repro.data.dali import DaliLoader

    files = _odd_images(ctx.tmp / "odd")
    out: dict[str, Any] = {"images": [Path(f).stem for f in files]}
    for train in (False, True):
        loader = DaliLoader(
            files,
            list(range(len(files))),
            _transform(train, 64),
            batch_size=len(files),
            num_threads=2,
            seed=0,
            device=ctx.device,
        )
        ((x, y),) = list(loader)
        if x.shape != (len(files), 3, 64, 64) or not torch.isfinite(x).all():
            raise RuntimeError(f"bad batch: shape {tuple(x.shape)}, finite {bool(torch.isfinite(x).all())}")
        out["train" if train else "eval"] = f"{tuple(x.shape)} on {x.device}, finite"
    out["ok"] = True
    return out


def row_multipass_eval(ctx: Ctx) -> dict[str, Any]:
    """Exact evaluation over three passes of one loader: every image counted once per pass, the
    same top-1 each time (a partial last batch, never padded)."""
    from resnet_repro.cluster.distributed import DistEnv
    from resnet_repro.data.dali import DaliLoader
    from resnet_repro.evaluation.evaluate import evaluate

    files, labels, origin = ctx.files(real=False)
    labels = [lb % 1000 for lb in labels]
    size = 224 if ctx.cuda else 64
    loader = DaliLoader(
        files,
        labels,
        _transform(False, size),
        batch_size=64 if ctx.cuda else 10,
        num_threads=4,
        seed=0,
        device=ctx.device,
    )
    model = _fixed_model(ctx.device, "resnet50" if ctx.cuda else "resnet18")
    precision = "bf16" if ctx.cuda else "fp32"
    results = [
        evaluate(model, loader, DistEnv(), ctx.device, expected_total=len(files), precision=precision)
        for _ in range(3)
    ]
    counts = [r["num_samples"] for r in results]
    top1 = [r["top1"] for r in results]
    same = counts == [len(files)] * 3 and len(set(top1)) == 1
    return {"images": len(files), "from": origin, "counts": counts, "top1": top1, "identical": same}


def row_stats(ctx: Ctx) -> dict[str, Any]:
    """The statistics pass on the GPU (reductions in the DALI graph) vs the same decoded pixels
    reduced on the host (exact sums must be equal), and vs the CPU decoder (reported)."""
    from resnet_repro.data import channel_sums

    files, _, origin = ctx.files()
    common = dict(resize_shorter=None, num_threads=4, batch_size=32)
    start = time.perf_counter()
    in_graph, _ = channel_sums.stream(files, device=ctx.device, reduce_in="dali", **common)
    in_graph_s = time.perf_counter() - start
    on_host, _ = channel_sums.stream(files, device=ctx.device, reduce_in="numpy", **common)
    cpu, _ = channel_sums.stream(files, device="cpu", **common)
    same = (in_graph.num_pixels, in_graph.sum, in_graph.sum_sq) == (
        on_host.num_pixels,
        on_host.sum,
        on_host.sum_sq,
    )
    gm, gs = channel_sums.finalize(in_graph)
    cm, cs = channel_sums.finalize(cpu)
    return {
        "images": len(files),
        "from": origin,
        "gpu_sums_exact": same,
        "img_per_s": round(len(files) / in_graph_s, 1),  # one pass, pipeline build included
        "gpu_mean": [round(v, 6) for v in gm],
        "gpu_std": [round(v, 6) for v in gs],
        "decoder_mean_diff_gpu_minus_cpu": [round(a - b, 6) for a, b in zip(gm, cm, strict=True)],
        "decoder_std_diff_gpu_minus_cpu": [round(a - b, 6) for a, b in zip(gs, cs, strict=True)],
    }


def _meminfo_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])
    return out


def row_memory(ctx: Ctx) -> dict[str, Any]:
    """GPU and host memory of a training run's three pipelines (train + val + holdout), built and run
    one batch each, at data.num_threads=8 and batch 256."""
    from resnet_repro.data.dali import DaliLoader

    files, labels, origin = ctx.files()
    torch.cuda.synchronize()
    free0, total = torch.cuda.mem_get_info(ctx.device)
    host0 = _meminfo_kib()
    loaders = [
        DaliLoader(
            files, labels, _transform(train, 224), batch_size=256, num_threads=8, seed=0, device=ctx.device
        )
        for train in (True, False, False)
    ]
    for loader in loaders:
        next(iter(loader))
    torch.cuda.synchronize()
    free1, _ = torch.cuda.mem_get_info(ctx.device)
    host1 = _meminfo_kib()
    del loaders
    return {
        "from": origin,
        "gpu_gib_used_by_3_pipelines": round((free0 - free1) / 2**30, 2),
        "gpu_total_gib": round(total / 2**30, 1),
        "host_available_gib_drop": round((host0["MemAvailable"] - host1["MemAvailable"]) / 2**20, 2),
        "host_committed_gib_rise": round((host1["Committed_AS"] - host0["Committed_AS"]) / 2**20, 2),
        "note": "pinned host memory has no /proc/meminfo field of its own: MemAvailable drop includes it",
    }


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
    from resnet_repro.planning.rehearse import saved_bytes_per_image
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
    out["compiled_graphs"] = graphs_compiled()
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

# The default --budget-s: the first five rows by their own CUDA estimates, environment 20 +
# decode 90 + training 120 + memory estimate 10 + compile 300 = 540 s (a test keeps the sum within
# it). The kit's install comes before, outside the budget: in one 10-minute device call it has the
# remaining 60 s. The rows after the fifth need a larger --budget-s (the whole list: 1,310 s).
DEFAULT_BUDGET_S = 540.0

WHY = {
    "cuda": "needs a CUDA GPU",
    "dali": "needs NVIDIA DALI (install from a wheelhouse kit)",
    "hydra": "needs Hydra (install from a wheelhouse kit)",
    "pytest": "needs pytest",
    "sklearn": "needs scikit-learn for the demo data (install from a wheelhouse kit)",
}


def skip_reason(row: Row, ctx: Ctx) -> str | None:
    for need in row.needs:
        if need == "cuda" and not ctx.cuda:
            return WHY["cuda"] + (" (--device cpu)" if torch.cuda.is_available() else "")
        if need != "cuda" and not HAVE[need]():
            return WHY[need]
    if ctx.quick and not row.quick:
        return "not in --quick"
    return None


def judge(goals: tuple[Goal, ...], result: dict[str, Any] | None, device: str) -> list[dict[str, Any]]:
    """Each goal as data, with what was measured and whether it was met: None when it does not
    apply on `device`, the row has no result, or the result lacks its measurement."""
    judged = []
    for g in goals:
        value = g.cuda if device == "cuda" else g.cpu
        measured = None if result is None else result.get(g.key)
        if value is None or measured is None:
            met = None
        else:
            met = bool(OPS[g.op](measured, value))
        judged.append(
            {"name": g.name, "key": g.key, "op": g.op, "value": value, "measured": measured, "met": met}
        )
    return judged


def usage_error(message: str) -> SystemExit:
    print(f"gpu_check: {message}", file=sys.stderr)
    return SystemExit(2)


def parse_goals(items: list[str]) -> dict[str, Any]:
    names = {g.name for row in ROWS for g in row.goals}
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in names:
            raise usage_error(
                f"--goal {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}"
            )
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            raise usage_error(f"--goal {item!r}: the value must be a number, true or false") from None
    return out


def parse_rows(text: str | None) -> set[int] | None:
    if text is None:
        return None
    try:
        only = {int(i) for i in text.split(",")}
    except ValueError:
        raise usage_error(f"--rows {text!r}: expected row numbers such as 1,3") from None
    unknown = sorted(only - set(range(1, len(ROWS) + 1)))
    if unknown:
        raise usage_error(f"--rows {text!r}: no row {unknown[0]}; the rows are 1-{len(ROWS)} (--list-goals)")
    return only


def _over_budget(signum, frame):
    raise OverBudget("stopped at the end of --budget-s")


def run_row(i: int, row: Row, ctx: Ctx, reason: str | None) -> dict[str, Any]:
    """One row, run or skipped, as its JSON entry; prints a progress line naming the row at its
    start and at its end."""
    entry: dict[str, Any] = {"row": i, "name": row.name}
    result = None
    start = time.perf_counter()
    est = row.est_s[0 if ctx.cuda else 1]
    if reason is None and ctx.seconds_left() < est:
        reason = f"budget: needs about {est:.0f} s, {max(0.0, ctx.seconds_left()):.0f} s of --budget-s left"
    if reason is not None:
        entry.update(status="skipped", why=reason)
    else:
        print(f"== {i}. {row.name}: running (about {est:.0f} s, {ctx.seconds_left():.0f} s left)", flush=True)
        signal.signal(signal.SIGALRM, _over_budget)
        signal.setitimer(signal.ITIMER_REAL, max(1.0, ctx.seconds_left()))
        try:
            result = row.run(ctx)
            entry.update(status="measured", result=result)
        except Skip as e:
            entry.update(status="skipped", why=str(e))
        except (OverBudget, subprocess.TimeoutExpired) as e:
            if isinstance(e, OverBudget) or ctx.seconds_left() <= 1:
                spent = time.perf_counter() - start
                entry.update(status="stopped", why=f"stopped at the end of --budget-s after {spent:.0f} s")
            else:  # the row's own time limit
                entry.update(status="failed", why=f"TimeoutExpired: {e}"[:300])
            (ctx.logs / f"row{i}_traceback.txt").write_text(traceback.format_exc())
        except Exception as e:  # a failed row must not stop the rows after it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            entry.update(status="failed", why=f"{type(e).__name__}: {first}"[:300])
            (ctx.logs / f"row{i}_traceback.txt").write_text(traceback.format_exc())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if ctx.cuda:
            torch.cuda.empty_cache()
    goals = judge(row.goals, result if entry["status"] == "measured" else None, ctx.device.type)
    entry["goal"] = goals
    entry["met"] = row_met(entry)
    entry["wall_s"] = round(time.perf_counter() - start, 1)
    return entry


def row_met(entry: dict[str, Any]) -> bool | None:
    """False: the row failed or missed a goal; True: it was measured and every goal that applies on
    the device was measured and met; None: skipped, stopped, or partly measured (the entry's
    status becomes `partial` and `why` names the goals without a measurement)."""
    if entry["status"] == "failed":
        return False
    if entry["status"] != "measured":
        return None
    goals = entry["goal"]
    if any(g["met"] is False for g in goals):
        return False
    unmeasured = [g["name"] for g in goals if g["value"] is not None and g["met"] is None]
    if unmeasured:
        entry.update(status="partial", why="goals not measured: " + ", ".join(unmeasured))
        return None
    return True


STATUS_EXIT = {"met": 0, "missed": 1, "incomplete": 3}


def verdict(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's status from its rows' entries: `missed` (exit 1) when any row missed a goal or
    failed; else `incomplete` (exit 3) when any row was skipped, stopped or partly measured, for
    whatever reason, or nothing ran; else `met` (exit 0). A skipped row is never counted as a
    pass."""
    passed = [e["name"] for e in entries if e["met"] is True]
    missed = [
        {"row": e["row"], "name": e["name"], "why": e.get("why") or _missed_goals(e)}
        for e in entries
        if e["met"] is False
    ]
    skipped = [
        {"row": e["row"], "name": e["name"], "why": e.get("why") or e["status"]}
        for e in entries
        if e["met"] is None
    ]
    status = "missed" if missed else "incomplete" if skipped or not passed else "met"
    return {
        "status": status,
        "exit_code": STATUS_EXIT[status],
        "passed": passed,
        "missed": missed,
        "skipped": skipped,
    }


def _missed_goals(entry: dict[str, Any]) -> str:
    missed = [g for g in entry["goal"] if g["met"] is False]
    return "goals missed: " + ", ".join(
        f"{g['name']} ({g['measured']}, goal {g['op']} {g['value']})" for g in missed
    )


def pack_logs(logs: Path, archive: Path) -> None:
    """The rows' logs as one small archive: text only, each file's last LOG_FILE_LIMIT bytes."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(p for p in logs.rglob("*") if p.is_file()):
            data = path.read_bytes()[-LOG_FILE_LIMIT:]
            info = tarfile.TarInfo(str(path.relative_to(logs)))
            info.size, info.mtime = len(data), int(time.time())

            tar.addfile(info, io.BytesIO(data))


def default_sample() -> Path | None:
    for folder in (KIT_SAMPLE, SHARED_SAMPLE):
        if (folder / "train").is_dir():
            return folder
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "gpu_check_out")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sample", type=Path, default=default_sample())
    p.add_argument(
        "--rows", help="comma-separated row numbers to run (1-based); the rest are skipped, so not met"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds for the check, install excluded (default {DEFAULT_BUDGET_S:.0f}: the first five rows)",
    )
    p.add_argument("--goal", action="append", default=[], metavar="NAME=VALUE", help="replace a goal's value")
    p.add_argument("--list-goals", action="store_true", help="print every goal and exit")
    p.add_argument("--install-report", type=Path, help="scripts/wheelhouse.sh --install's JSON report")
    ns = p.parse_args(argv)
    overrides = parse_goals(ns.goal)
    only = parse_rows(ns.rows)
    if ns.list_goals:
        for i, row in enumerate(ROWS, 1):
            for g in row.goals:
                print(f"{i:2d} {g.name}: {g.key} {g.op} {g.cuda} (cuda) / {g.cpu} (cpu)")
        return 0
    if ns.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu for the CPU rows", file=sys.stderr)
        return 2
    rows = [
        replace(
            row,
            goals=tuple(
                replace(g, cuda=overrides[g.name], cpu=overrides[g.name]) if g.name in overrides else g
                for g in row.goals
            ),
        )
        for row in ROWS
    ]
    ns.out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "device": ns.device,
        "quick": ns.quick,
        "budget_s": ns.budget_s,
        "goals_set": overrides,
        "rows": [],
    }
    json_path = ns.out / "gpu_check.json"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        ctx = Ctx(
            torch.device("cuda", 0) if ns.device == "cuda" else torch.device("cpu"),
            ns.quick,
            logs,
            ns.sample,
            Path(tmp),
            deadline=time.monotonic() + ns.budget_s,
            install_report=ns.install_report,
        )
        for i, row in enumerate(rows, 1):
            deselected = only is not None and i not in only
            reason = skip_reason(row, ctx) or ("not in --rows" if deselected else None)
            entry = run_row(i, row, ctx, reason)
            record["rows"].append(entry)
            # the rows not reached yet count as skipped: a run cut off here never reads as met
            pending = [
                {"row": j, "name": r.name, "status": "skipped", "met": None, "why": "not reached"}
                for j, r in enumerate(rows[i:], i + 1)
            ]
            record.update(verdict(record["rows"] + pending))
            json_path.write_text(json.dumps(record, indent=1, default=str))
            print(f"== {i}. {row.name}: {progress(entry)}", flush=True)
        pack_logs(logs, ns.out / LOG_ARCHIVE)
    print(format_table(record))
    print("\n".join(summary_lines(record)))
    print(f"JSON: {json_path}; logs: {ns.out / LOG_ARCHIVE}")
    return record["exit_code"]


def progress(entry: dict[str, Any]) -> str:
    """The end of a row's progress line: `measured, goals met (12.3 s)`, `skipped (why)`."""
    goals = {True: "goals met", False: "goals MISSED", None: "goals not judged"}[entry["met"]]
    text = entry["status"] + (f", {goals}" if entry["status"] in ("measured", "partial") else "")
    if entry["met"] is False and entry["status"] == "measured":
        text += " (" + _missed_goals(entry) + ")"
    elif "why" in entry:
        text += f" ({entry['why']})"
    return text + (f" [{entry['wall_s']} s]" if entry["status"] != "skipped" else "")


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The closing lines: the rows missed and skipped by name, with why, then the status."""
    lines = []
    if record["missed"]:
        lines.append(f"missed ({len(record['missed'])}):")
        lines += [f"  {m['row']}. {m['name']}: {m['why']}" for m in record["missed"]]
    if record["skipped"]:
        lines.append(f"skipped, so not checked ({len(record['skipped'])}):")
        lines += [f"  {s['row']}. {s['name']}: {s['why']}" for s in record["skipped"]]
    lines.append(
        f"status: {record['status']} (exit {record['exit_code']}): {len(record['passed'])} passed, "
        f"{len(record['missed'])} missed, {len(record['skipped'])} skipped"
    )
    return lines


def format_table(record: dict[str, Any]) -> str:
    lines = [f"\nGPU acceptance check, device {record['device']}{' (--quick)' if record['quick'] else ''}"]
    lines += ["| # | row | status | goals | result | s |", "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        status = r["status"] if "why" not in r else f"{r['status']} ({r['why']})"
        goals = "; ".join(
            f"{g['name']} {g['op']} {g['value']}: {g['measured']} {'met' if g['met'] else 'MISSED'}"
            for g in r["goal"]
            if g["met"] is not None
        )
        result = json.dumps(r.get("result", ""), default=str) if "result" in r else ""
        lines.append(f"| {r['row']} | {r['name']} | {status} | {goals} | {result} | {r['wall_s']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
