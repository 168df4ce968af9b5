"""Images per second of the training input pipeline alone: DALI vs torchvision (PIL, decode_jpeg).

    .venv/bin/python scripts/bench_data.py [--root DIR] [--split train] [--repeat 4] [--trials 3]
        [--threads 2] [--batch-size 64] [--device cpu|cuda] [--json out.json] [--dali-stages]

Every backend runs the paper's training transform (RandomResizedCrop 224, horizontal flip, normalize)
over the folder's images repeated `--repeat` times, in batches of `--batch-size`, with `--threads`
DALI threads or DataLoader worker processes. Each loader is built once and read once as a warm-up
(not measured: pipeline build, first file reads). Then every trial reads one pass of each backend in
turn, so a load change on a shared machine hits all of them alike; the median trial is reported.

Columns: steady img/s counts from the third batch of a pass to its last (start-up excluded: DALI
prefetches across passes, DataLoader workers restart every pass, and neither matters over a real
epoch); pass img/s is the whole pass; CPU ms/img is the CPU time of this process and its worker
processes per image, which other load on the machine disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "imagenet-sample"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = ("dali", "torch-pil", "torch-decode_jpeg")
SKIP_BATCHES = 2  # DALI's default prefetch depth: batches that may be ready before a pass starts


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished, joined children (DataLoader workers)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def build(backend: str, files: list[str], labels: list[int], args: argparse.Namespace):
    import torch

    from resnet_repro.data.dali import DaliLoader, Transform
    from resnet_repro.data.torch_loader import TorchLoader

    t = Transform(
        train=True,
        image_size=args.image_size,
        crop_ratio=0.875,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        random_resized_crop=True,
        hflip=True,
    )
    device = torch.device(args.device)
    common = dict(batch_size=args.batch_size, seed=0, device=device)
    if backend == "dali":
        return DaliLoader(files, labels, t, num_threads=args.threads, **common)
    decoder = backend.removeprefix("torch-")
    return TorchLoader(files, labels, t, num_workers=args.threads, decoder=decoder, **common)


def one_pass(loader, args: argparse.Namespace) -> dict[str, float]:
    import torch

    def sync() -> None:  # on CUDA, a batch counts once its device work is done
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    stamps, sizes = [], []
    for _, labels in loader:
        sync()
        stamps.append(time.perf_counter())
        sizes.append(len(labels))
    wall = time.perf_counter() - t0
    # Let work a backend starts after its pass (DALI prefetches the next one) finish inside this
    # backend's CPU window, not in the next backend's measurement
    time.sleep(args.settle)
    cpu = cpu_seconds() - cpu0
    n = sum(sizes)
    steady = sum(sizes[SKIP_BATCHES:]) / (stamps[-1] - stamps[SKIP_BATCHES - 1])
    return {"images": n, "steady_img_s": steady, "pass_img_s": n / wall, "cpu_ms_per_img": 1e3 * cpu / n}


STAGES = ("decode+crop", "+resize", "+resize (no antialias)", "+resize+normalize")


def dali_stages(files: list[str], labels: list[int], args: argparse.Namespace) -> dict[str, float]:
    """Where DALI's CPU time goes: the training graph cut after each stage (synchronous
    pipeline.run() img/s, no iterator), plus the resize without antialiasing for scale."""
    import statistics

    from nvidia.dali import fn, pipeline_def, types

    size = [args.image_size, args.image_size]

    def graph(stage: str):
        jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=False)
        images = fn.decoders.image_random_crop(
            jpegs,
            device="cpu",
            output_type=types.RGB,
            random_area=[0.08, 1.0],
            random_aspect_ratio=[0.75, 4 / 3],
        )
        if stage != "decode+crop":
            aa = stage != "+resize (no antialias)"
            images = fn.resize(images, size=size, interp_type=types.INTERP_LINEAR, antialias=aa)
        if stage == "+resize+normalize":
            images = fn.crop_mirror_normalize(
                images,
                dtype=types.FLOAT,
                output_layout="CHW",
                crop=size,
                mean=[m * 255 for m in IMAGENET_MEAN],
                std=[v * 255 for v in IMAGENET_STD],
                mirror=fn.random.coin_flip(probability=0.5),
            )
        return images, label

    per_pass = len(files) // args.batch_size
    pipes = {}
    for stage in STAGES:
        # synchronous (no batch computed ahead): with four pipelines timed in turn, a prefetched
        # batch would be credited to the next pass and compete with the next stage's timing
        pipes[stage] = pipeline_def(graph)(
            stage,
            batch_size=args.batch_size,
            num_threads=args.threads,
            device_id=None,
            seed=0,
            exec_pipelined=False,
            exec_async=False,
            prefetch_queue_depth=1,
        )
        pipes[stage].build()
        for _ in range(per_pass):  # warm-up
            pipes[stage].run()
    rates: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for _ in range(args.trials):
        for stage in STAGES:
            t0 = time.perf_counter()
            for _ in range(per_pass):
                pipes[stage].run()
            rates[stage].append(per_pass * args.batch_size / (time.perf_counter() - t0))
    return {stage: statistics.median(r) for stage, r in rates.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="folder in the ImageNet layout")
    p.add_argument("--split", default="train")
    p.add_argument("--repeat", type=int, default=4, help="times each image appears in one pass")
    p.add_argument("--trials", type=int, default=3, help="measured passes per backend; median reported")
    p.add_argument("--threads", type=int, default=2, help="DALI threads = DataLoader workers")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (DALI then decodes on the GPU)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {BACKENDS}")
    p.add_argument("--settle", type=float, default=2.0, help="seconds of quiet after each pass")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--dali-stages", action="store_true", help="also time DALI's CPU graph stage by stage")
    args = p.parse_args(argv)

    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        print(f"bench_data: unknown backend(s) {', '.join(unknown)}; choose from {BACKENDS}", file=sys.stderr)
        return 2
    root = Path(args.root).expanduser()
    if not (root / args.split).is_dir():
        print(
            f"bench_data: no images at {root / args.split}; pass --root <folder> with "
            f"<split>/<class>/*.JPEG (the default {DEFAULT_ROOT} exists only in the development setup)",
            file=sys.stderr,
        )
        return 2
    per_pass = args.batch_size * (SKIP_BATCHES + 1)
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # DALI's own, one per pipeline
    from resnet_repro.data.splits import list_split

    fl = list_split(root, args.split)
    files = list(fl.files) * args.repeat
    labels = list(fl.labels) * args.repeat
    if len(files) < per_pass:
        print(
            f"bench_data: {len(files)} images per pass; need >= {per_pass}: raise --repeat", file=sys.stderr
        )
        return 2

    print(
        f"{len(fl)} images x {args.repeat} = {len(files)} per pass, batch {args.batch_size}, "
        f"{args.threads} threads/workers, device {args.device}, {os.cpu_count()} CPUs"
    )
    loaders = {}
    for b in backends:
        loaders[b] = build(b, files, labels, args)
        one_pass(loaders[b], args)  # warm-up
    trials: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
    load = []
    for k in range(args.trials):
        for b in backends:
            trials[b].append(one_pass(loaders[b], args))
        load.append(os.getloadavg()[0])
        print(
            f"trial {k + 1}/{args.trials}: "
            + ", ".join(f"{b} {trials[b][-1]['steady_img_s']:.0f}" for b in backends)
        )

    rows = []
    for b in backends:
        med = {key: statistics.median(t[key] for t in trials[b]) for key in trials[b][0]}
        steady = [t["steady_img_s"] for t in trials[b]]
        rows.append(
            {"backend": b, **med, "steady_min": min(steady), "steady_max": max(steady), "trials": trials[b]}
        )
    header = f"{'backend':<19} {'steady img/s':>12} {'(min-max)':>13} {'pass img/s':>11} {'CPU ms/img':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        spread = f"({r['steady_min']:.0f}-{r['steady_max']:.0f})"
        print(
            f"{r['backend']:<19} {r['steady_img_s']:>12.0f} {spread:>13} {r['pass_img_s']:>11.0f} "
            f"{r['cpu_ms_per_img']:>11.1f}"
        )
    print(f"1-min load average during the trials: {', '.join(f'{x:.1f}' for x in load)}")
    stages = None
    if args.dali_stages:
        stages = dali_stages(files, labels, args)
        print("DALI CPU graph cut after each stage (pipeline.run, median img/s):")
        for stage, rate in stages.items():
            print(f"  {stage:<24} {rate:>6.0f}")
    if args.json:
        out = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "images_per_pass": len(files)}
        out.update(results=rows, load_average=load, dali_stages=stages)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
