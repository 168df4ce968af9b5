"""The GPU check's data-pipeline rows: DALI's GPU decode against the CPU's on real JPEGs, the odd
images ImageNet holds, exact multi-pass evaluation, the statistics pass, and the memory of a run's
three pipelines; with the transforms and fixed models they share. Each row takes a `Ctx` and
returns its measurements; scripts/gpu_rows.py lists them with their goals."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from gpu_row_types import Ctx

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
