"""The GPU acceptance run: every GPU-only risk as one row, most important first, one table and one JSON.

    python scripts/gpu_check.py --out DIR [--device cuda|cpu] [--quick] [--sample DIR]

Run through scripts/gpu_check.sh (which installs from a WHEELHOUSE first when given one). Every row
ends as `measured`, `skipped (why)` or `failed (why)`; the JSON (DIR/gpu_check.json) is rewritten
after each row, so an interrupted run still leaves the rows done. `--device cpu` runs every row that
can run on a CPU (smaller sizes, same code) and skips the GPU-only ones, saying why; `--quick` keeps
the environment, decode, memory, bench-model bf16 + channels_last and CLI rows.

`--sample`: an ImageNet-layout folder of real JPEGs (default ../shared/data/imagenet-sample beside
the repository, when it exists; otherwise generated JPEGs are used and the row says so).
Imports only torch and this package at module level: the lent GPU machine may lack DALI or Hydra.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

DEFAULT_SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Skip(Exception):
    """Raised by a row that finds at run time it cannot run here."""


@dataclass
class Ctx:
    device: torch.device
    quick: bool
    out: Path
    sample: Path | None  # an ImageNet-layout folder with a train split, or None
    tmp: Path
    cache: dict[str, Any] = field(default_factory=dict)

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


@dataclass
class Row:
    name: str
    run: Callable[[Ctx], dict[str, Any]]
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
    """A fixed (seeded, untrained: no network for weights) ImageNet-shaped model in eval mode."""
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=1000).eval().to(device)


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
    return out


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
    model = _fixed_model(ctx.device)
    mean = torch.tensor(MEAN, device=ctx.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=ctx.device).view(1, 3, 1, 1) * 255

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([model((b.to(ctx.device) - mean) / std).argmax(1).cpu() for b in x.split(50)])

    cpu_pred = predict(cpu)
    out: dict[str, Any] = {
        "images": len(files),
        "from": origin,
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
    out["goal"] = "top-1 agreement >= 0.99"
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
    return out


def row_multipass_eval(ctx: Ctx) -> dict[str, Any]:
    """Exact evaluation over three passes of one loader: every image counted once per pass, the
    same top-1 each time (a partial last batch, never padded)."""
    from resnet_repro.data.dali import DaliLoader
    from resnet_repro.distributed import DistEnv
    from resnet_repro.evaluate import evaluate

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
    if counts != [len(files)] * 3 or len(set(top1)) != 1:
        raise RuntimeError(f"passes differ: counts {counts}, top-1 {top1}")
    return {"images": len(files), "from": origin, "passes": 3, "top1": top1[0]}


def row_stats(ctx: Ctx) -> dict[str, Any]:
    """The statistics pass on the GPU (reductions in the DALI graph) vs the same decoded pixels
    reduced on the host (exact sums must be equal), and vs the CPU decoder (reported)."""
    from resnet_repro.data import channel_sums

    files, _, origin = ctx.files()
    common = dict(resize_shorter=None, num_threads=4, batch_size=32)
    in_graph, _ = channel_sums.stream(files, device=ctx.device, reduce_in="dali", **common)
    on_host, _ = channel_sums.stream(files, device=ctx.device, reduce_in="numpy", **common)
    cpu, _ = channel_sums.stream(files, device="cpu", **common)
    same = (in_graph.num_pixels, in_graph.sum, in_graph.sum_sq) == (
        on_host.num_pixels,
        on_host.sum,
        on_host.sum_sq,
    )
    if not same:
        raise RuntimeError(f"in-graph sums {in_graph.sum} != host sums {on_host.sum} of the same pixels")
    gm, gs = channel_sums.finalize(in_graph)
    cm, cs = channel_sums.finalize(cpu)
    return {
        "images": len(files),
        "from": origin,
        "gpu_sums_exact": True,
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


def _run(
    cmd: list[str], timeout: int, out_file: Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})}
    )
    out_file.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc


def row_gpu_tests(ctx: Ctx) -> dict[str, Any]:
    proc = _run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        300,
        ctx.out / "gpu_tests.txt",
    )
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    if proc.returncode != 0:
        raise RuntimeError(f"pytest: {summary} (see gpu_tests.txt)")
    return {
        "pytest": summary,
        "includes": "host-sync audit (test_training_step_makes_only_the_audited_host_syncs)",
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
    json_path = ctx.out / "gpu_bench.json"
    proc = _run(
        [sys.executable, "scripts/gpu_bench.py", *args, "--json", str(json_path)],
        420,
        ctx.out / "gpu_bench.txt",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"gpu_bench.py exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    record = json.loads(json_path.read_text())
    out: dict[str, Any] = {r["setting"]: round(r["img_per_s"], 1) for r in record["rows"]}
    out["unit"] = "img/s" + ("" if ctx.cuda else " (CPU smoke: resnet18, batch 4, 32 px)")
    if record.get("loop_overhead"):
        out["loop_overhead_ratio"] = round(record["loop_overhead"]["overhead_ratio"], 3)
    if ctx.cuda:
        out["goal"] = "bf16 + channels_last >= 3000 img/s"
    return out


def row_bench_train(ctx: Ctx) -> dict[str, Any]:
    """The real training step fed by DALI (mixed decode on a GPU) over the sample repeated."""
    from resnet_repro.bench import bench_train
    from resnet_repro.config import (
        BenchConfig,
        DataConfig,
        LoggingConfig,
        ModelConfig,
        RootConfig,
        TrainerConfig,
    )

    files, _, origin = ctx.files(real=False)
    root = Path(files[0]).parents[2]
    if ctx.cuda:
        model, batch, size, precision, images, threads = "resnet50", 256, 224, "bf16", 2000, 8
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
        trainer=TrainerConfig(batch_size=batch, precision=precision, device=ctx.device.type),
        logging=LoggingConfig(tensorboard=False, progress=False),
        bench=BenchConfig(mode="train", trials=1, min_images=images),
    )
    result = bench_train(cfg, ctx.device, ctx.tmp)
    out = {
        "from": origin,
        "setting": f"{model} batch {batch} {size}px {precision} channels_last, >= {images} images per trial",
        "img_per_s": round(result["img_per_s"], 1),
        "data_wait_fraction": round(result["data_wait_fraction"], 4),
    }
    if ctx.cuda:
        out["goal"] = "data-wait fraction < 0.05"
    return out


def row_cli(ctx: Ctx) -> dict[str, Any]:
    """`resnet-repro train` of the demo through the CLI on the device, then `resnet-repro eval` of its
    checkpoint: the same top-1."""
    from resnet_repro.data.demo import build_demo_dataset

    root = build_demo_dataset(ctx.tmp / "digits")
    run_dir = ctx.out / "cli_run"
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
    proc = _run([sys.executable, "-m", "resnet_repro", *train], 300, ctx.out / "cli_train.txt")
    if proc.returncode != 0:
        raise RuntimeError(f"train exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    val = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in val if r.get("split") == "val"][-1]
    proc = _run(
        [
            sys.executable,
            "-m",
            "resnet_repro",
            "eval",
            f"checkpoint={run_dir}/checkpoints/last.pt",
            f"data.root={root}",
            f"hydra.run.dir={ctx.out}/cli_eval_run",
        ],
        180,
        ctx.out / "cli_eval.txt",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"eval exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["top1"] != final["top1"]:
        raise RuntimeError(f"eval top-1 {result['top1']} != the run's final {final['top1']}")
    return {
        "device": ctx.device.type,
        "precision": precision,
        "train_top1": final["top1"],
        "eval_top1": result["top1"],
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
    proc = _run(cmd, 120, ctx.out / "torchrun.txt", env={"CHECK_BACKEND": backend})
    if proc.returncode != 0 or "all_reduce [1.0, 1.0, 1.0, 1.0]" not in proc.stdout:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return {"backend": backend, "processes": 1, "all_reduce": "ok"}


ROWS = [
    Row("environment", row_environment, quick=True),
    Row("decode: DALI mixed vs CPU, fancy upsampling off/on", row_decode, ("cuda", "dali"), quick=True),
    Row("odd images batch (CMYK, PNG, gray, EXIF, progressive)", row_odd_images, ("dali",)),
    Row("multi-pass exact evaluation", row_multipass_eval, ("dali",)),
    Row("statistics: GPU vs CPU", row_stats, ("cuda", "dali")),
    Row("memory: train + 2 eval pipelines", row_memory, ("cuda", "dali"), quick=True),
    Row("gpu tests + host-sync audit", row_gpu_tests, ("cuda", "pytest")),
    Row("bench model", row_bench_model, quick=True),
    Row("bench train (DALI)", row_bench_train, ("dali",)),
    Row("CLI train + eval reproduces top-1", row_cli, ("hydra", "dali", "sklearn"), quick=True),
    Row("torchrun 1 process", row_torchrun),
]

WHY = {
    "cuda": "needs a CUDA GPU",
    "dali": "needs NVIDIA DALI (install from a WHEELHOUSE)",
    "hydra": "needs Hydra (install from a WHEELHOUSE)",
    "pytest": "needs pytest",
    "sklearn": "needs scikit-learn for the demo data (install from a WHEELHOUSE)",
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "gpu_check_out")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE if DEFAULT_SAMPLE.is_dir() else None)
    p.add_argument("--rows", help="comma-separated row numbers to run (1-based); the rest are skipped")
    ns = p.parse_args(argv)
    if ns.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu for the CPU rows", file=sys.stderr)
        return 2
    ns.out.mkdir(parents=True, exist_ok=True)
    only = {int(i) for i in ns.rows.split(",")} if ns.rows else None
    record: dict[str, Any] = {"device": ns.device, "quick": ns.quick, "rows": []}
    json_path = ns.out / "gpu_check.json"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = Ctx(
            torch.device("cuda", 0) if ns.device == "cuda" else torch.device("cpu"),
            ns.quick,
            ns.out,
            ns.sample,
            Path(tmp),
        )
        for i, row in enumerate(ROWS, 1):
            reason = skip_reason(row, ctx) or (
                "not in --rows" if only is not None and i not in only else None
            )
            start = time.perf_counter()
            entry: dict[str, Any] = {"row": i, "name": row.name}
            if reason is not None:
                entry.update(status="skipped", why=reason)
            else:
                print(f"== {i}. {row.name}", flush=True)
                try:
                    entry.update(status="measured", result=row.run(ctx))
                except Skip as e:
                    entry.update(status="skipped", why=str(e))
                except Exception as e:  # a failed row must not stop the rows after it
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    entry.update(status="failed", why=f"{type(e).__name__}: {first}"[:300])
                    (ns.out / f"row{i}_traceback.txt").write_text(traceback.format_exc())
                if ctx.cuda:
                    torch.cuda.empty_cache()
            entry["wall_s"] = round(time.perf_counter() - start, 1)
            record["rows"].append(entry)
            json_path.write_text(json.dumps(record, indent=1, default=str))
            print(f"   {entry['status']}" + (f" ({entry['why']})" if "why" in entry else ""), flush=True)
    print(format_table(record))
    print(f"JSON: {json_path}")
    return 1 if any(r["status"] == "failed" for r in record["rows"]) else 0


def format_table(record: dict[str, Any]) -> str:
    lines = [f"\nGPU acceptance check, device {record['device']}{' (--quick)' if record['quick'] else ''}"]
    lines += ["| # | row | status | result | s |", "|---|---|---|---|---|"]
    for r in record["rows"]:
        status = r["status"] if r["status"] == "measured" else f"{r['status']} ({r['why']})"
        result = json.dumps(r.get("result", ""), default=str) if "result" in r else ""
        lines.append(f"| {r['row']} | {r['name']} | {status} | {result} | {r['wall_s']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
