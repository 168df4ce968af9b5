"""Throughput of the normalization-statistics pass vs decoding alone, on the same images.

    .venv/bin/python scripts/bench_stats.py [--root DIR] [--repeat 4] [--trials 3] [--threads 2]
        [--batch-size 32] [--device cpu|cuda] [--resize-shorter N] [--json out.json]

Each mode runs the same DALI reader + decoder (+ resize) over the folder's images `--repeat` times
in one pipeline; "decode only" discards the images, the stats modes reduce them exactly. Modes are
interleaved within each trial and the best trial of each is reported, which filters out other
processes on a shared machine; CPU ms per image (all threads of this process) is shown too, being
less sensitive to such noise. The goal is stats/decode >= 0.9 for the default ("auto") mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "imagenet-sample"


def measure(files: list[str], mode: str, args: argparse.Namespace) -> dict[str, float]:
    from resnet_repro.data.channel_sums import stream

    clock: dict[str, float] = {}

    def started() -> None:  # after the pipeline is built: build time is not throughput
        clock["wall"] = time.perf_counter()
        clock["cpu"] = time.process_time()

    _, n = stream(
        files,
        resize_shorter=args.resize_shorter,
        num_threads=args.threads,
        batch_size=args.batch_size,
        device=args.device,
        reduce_in="auto" if mode == "decode" else mode,
        decode_only=mode == "decode",
        passes=args.repeat,
        on_built=started,
    )
    wall = time.perf_counter() - clock["wall"]
    cpu = time.process_time() - clock["cpu"]
    return {"images": n, "seconds": wall, "images_per_s": n / wall, "cpu_ms_per_image": 1e3 * cpu / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="folder in the ImageNet layout")
    p.add_argument("--split", default="train")
    p.add_argument("--repeat", type=int, default=4, help="passes over the images per measurement")
    p.add_argument("--trials", type=int, default=3, help="interleaved measurements per mode; best is kept")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="DALI CPU threads")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, or cuda for mixed (nvJPEG) decoding")
    p.add_argument("--resize-shorter", type=int, default=None)
    p.add_argument(
        "--modes",
        default="auto,numpy,dali",
        help="stats modes to compare with decoding: auto (what compute_stats uses), numpy, dali",
    )
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    root = Path(args.root).expanduser()
    if not (root / args.split).is_dir():
        print(
            f"bench_stats: no images at {root / args.split}; pass --root <folder>/ with "
            f"<split>/<class>/*.JPEG (the default {DEFAULT_ROOT} exists only in the development setup)",
            file=sys.stderr,
        )
        return 2
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # DALI's own, one per pipeline

    from resnet_repro.data.splits import list_split

    files = list(list_split(root, args.split).files)
    modes = ["decode"] + [m for m in args.modes.split(",") if m]
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(args.trials):
        for m in modes:
            results[m].append(measure(files, m, args))
    best = {m: max(r, key=lambda x: x["images_per_s"]) for m, r in results.items()}
    base = best["decode"]

    print(
        f"{len(files)} images x {args.repeat} passes, {args.threads} threads, batch {args.batch_size}, "
        f"device {args.device}, resize_shorter {args.resize_shorter}, best of {args.trials} trials"
    )
    print(f"{'mode':<14}{'images/s':>10}{'ratio':>8}{'CPU ms/img':>12}{'CPU ratio':>11}")
    rows = []
    for m in modes:
        r = best[m]
        ratio = r["images_per_s"] / base["images_per_s"]
        cpu_ratio = base["cpu_ms_per_image"] / r["cpu_ms_per_image"]
        label = "decode only" if m == "decode" else f"stats ({m})"
        print(
            f"{label:<14}{r['images_per_s']:>10.1f}{ratio:>8.3f}{r['cpu_ms_per_image']:>12.2f}{cpu_ratio:>11.3f}"
        )
        rows.append({"mode": m, **r, "ratio": ratio, "cpu_ratio": cpu_ratio, "trials": results[m]})
    if args.json:
        out = {
            "root": str(root),
            "num_files": len(files),
            "repeat": args.repeat,
            "trials": args.trials,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "device": args.device,
            "resize_shorter": args.resize_shorter,
            "cpu_count": os.cpu_count(),
            "results": rows,
        }
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
