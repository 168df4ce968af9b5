"""DALI's CHW output copied to channels_last vs HWC output viewed as channels_last, side by side.

    python scripts/bench_layout.py [--root DIR] [--split train] [--repeat 4] [--trials 5]
        [--threads 2] [--batch-size 64] [--image-size 224] [--device cpu|cuda] [--eval]

What a training step with a channels_last model receives, both ways: the DALI pipeline emits CHW and
the step copies each batch with `.contiguous(memory_format=torch.channels_last)` (the old path), or
it emits HWC and the loader permutes it to an NCHW view with channels_last strides, which the same
`.contiguous` call returns as is (the new path, `DaliLoader(channels_last=True)`). Each loader is
built once and read once as a warm-up; then every trial reads one pass of each in turn (a load change
on a shared machine hits both alike) and the median trial is reported. With --root missing, 64
random JPEGs are written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "imagenet-sample"
LAYOUTS = ("CHW + copy to channels_last", "HWC viewed as channels_last")
SKIP_BATCHES = 2  # batches DALI may have prefetched before a pass starts


def _images(args: argparse.Namespace, tmp: str) -> tuple[list[str], list[int]]:
    from resnet_repro.data.splits import list_split

    root = args.root
    if root is None or not (root / args.split).is_dir():
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        folder = Path(tmp) / args.split / "a"
        folder.mkdir(parents=True)
        for i in range(64):
            pixels = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)
        root = Path(tmp)
    files = list_split(root, args.split)
    return list(files.files) * args.repeat, list(files.labels) * args.repeat


def one_pass(loader, device) -> dict[str, float]:
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    cpu0, t0 = time.process_time(), time.perf_counter()
    stamps, sizes = [], []
    for images, labels in loader:
        # what the training step does to every batch
        x = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        assert x.is_contiguous(memory_format=torch.channels_last)
        sync()
        stamps.append(time.perf_counter())
        sizes.append(len(labels))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    n = sum(sizes)
    steady = sum(sizes[SKIP_BATCHES:]) / (stamps[-1] - stamps[SKIP_BATCHES - 1])
    return {"images": n, "steady_img_s": steady, "pass_img_s": n / wall, "cpu_ms_per_img": 1e3 * cpu / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--split", default="train")
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval", action="store_true", help="the evaluation transform instead of training's")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from resnet_repro.data.dali import DaliLoader, Transform

    device = torch.device(args.device)
    t = Transform(
        train=not args.eval,
        image_size=args.image_size,
        crop_ratio=0.875,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        hflip=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        files, labels = _images(args, tmp)
        loaders = {
            name: DaliLoader(
                files,
                labels,
                t,
                batch_size=args.batch_size,
                num_threads=args.threads,
                seed=0,
                device=device,
                channels_last=name == LAYOUTS[1],
            )
            for name in LAYOUTS
        }
        for loader in loaders.values():
            one_pass(loader, device)  # warm-up
        trials: dict[str, list[dict[str, float]]] = {name: [] for name in LAYOUTS}
        for _ in range(args.trials):
            for name, loader in loaders.items():
                trials[name].append(one_pass(loader, device))
    print(
        f"{len(files)} images, {'eval' if args.eval else 'train'} transform {args.image_size} px, batch "
        f"{args.batch_size}, {args.threads} DALI threads, {args.device}, median of {args.trials} trials"
    )
    print("| layout | steady img/s | pass img/s | CPU ms/img |")
    print("|---|---|---|---|")
    result = {}
    for name in LAYOUTS:
        med = {k: statistics.median(r[k] for r in trials[name]) for k in trials[name][0]}
        result[name] = {"median": med, "trials": trials[name]}
        steady, whole, cpu = med["steady_img_s"], med["pass_img_s"], med["cpu_ms_per_img"]
        print(f"| {name} | {steady:.0f} | {whole:.0f} | {cpu:.2f} |")
    ratio = result[LAYOUTS[1]]["median"]["steady_img_s"] / result[LAYOUTS[0]]["median"]["steady_img_s"]
    print(f"HWC view / CHW copy, steady img/s: {ratio:.3f}")
    if args.json:
        shown = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"args": shown, **result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
