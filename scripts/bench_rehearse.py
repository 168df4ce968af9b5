"""What a rehearsal costs: `resnet-repro rehearse experiment=X data.root=<folder> trainer.nproc=N`
for each preset named, timed, on an ImageNet-layout folder built from a few real JPEGs.

    python scripts/bench_rehearse.py [--presets he2016,fast_16,...] [--nproc 2]
        [--images DIR] [--per-class 60] [--out DIR] [--images-per-step auto] [--stand-in]

The folder has ImageNet's 1000 classes, `--per-class` training images each and one validation
image each, every one a link to a JPEG of `--images` (default: ../shared/data/imagenet-sample,
250 real ImageNet JPEGs), so the rehearsal reads real photographs through the real listing;
`--stand-in` leaves data.root unset instead (the rehearsal generates its stand-in).
Prints one row per preset (exit code, wall seconds, CPU seconds of the rehearsal's processes,
peak memory per process, the trained steps) and a JSON line; exits 1 when any rehearsal failed.
A benchmark, not a test: its times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESNET50_PRESETS = (
    "he2016",
    "imagenet_paper",
    "imagenet_paper_stabilized",
    "fast_16",
    "fast_24",
    "fast_40",
    "fast_88",
    "sweep_proxy",
)


def build_folder(images: Path, out: Path, per_class: int) -> Path:
    """train/n<i>/<j>.JPEG for 1000 classes x per_class and val/n<i>/0.JPEG, links to `images`."""
    photos = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    if not photos:
        raise SystemExit(f"bench_rehearse: no JPEG files under {images}")
    if (out / "val" / "n00000999" / "0.JPEG").exists():
        return out
    k = 0
    for c in range(1000):
        for split, count in (("train", per_class), ("val", 1)):
            folder = out / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                os.symlink(photos[k % len(photos)].resolve(), folder / f"{j}.JPEG")
                k += 1
    return out


def rehearse(
    preset: str, root: Path | None, nproc: int, out: Path, images_per_step: str
) -> dict[str, object]:
    run_dir = out / preset
    cmd = [
        str(Path(sys.executable).parent / "resnet-repro"),
        "rehearse",
        f"--images-per-step={images_per_step}",
        f"experiment={preset}",
        *([f"data.root={root}"] if root is not None else []),
        f"trainer.nproc={nproc}",
        f"--out={run_dir}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    record = run_dir / "rehearsal.json"
    done = json.loads(record.read_text()) if proc.returncode == 0 and record.exists() else {}
    error = (proc.stderr.strip().splitlines() or [""])[-1] if proc.returncode else ""
    return {
        "preset": preset,
        "rc": proc.returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "peak_memory_mb": [round(m) for m in done.get("peak_memory_mb", [])],
        "images_per_step": done.get("images_per_step"),
        "trained": [w["why"] for w in done.get("trained", [])],
        "error": error,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=",".join(RESNET50_PRESETS))
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "imagenet-sample")
    ap.add_argument("--per-class", type=int, default=60, help="training images per class (holdouts need ~55)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-rehearse"))
    ap.add_argument("--images-per-step", default="auto")
    ap.add_argument("--stand-in", action="store_true", help="no data.root: the rehearsal's stand-in")
    args = ap.parse_args()

    root = None if args.stand_in else build_folder(args.images, args.out / "imagenet", args.per_class)
    rows = []
    print(f"{'preset':<28}{'rc':>3}{'wall s':>9}{'CPU s':>9}  peak MB per process   trained steps")
    for preset in args.presets.split(","):
        row = rehearse(preset, root, args.nproc, args.out, args.images_per_step)
        rows.append(row)
        memory = ", ".join(f"{m:,}" for m in row["peak_memory_mb"])  # type: ignore[union-attr]
        what = "; ".join(row["trained"]) or row["error"]  # type: ignore[arg-type]
        times = f"{row['rc']:>3}{row['wall_s']:>9.1f}{row['cpu_s']:>9.1f}"
        print(f"{preset:<28}{times}  {memory:<21} {what}", flush=True)
    data = "stand-in" if root is None else f"{root} ({args.per_class} per class)"
    print(json.dumps({"nproc": args.nproc, "cpus": os.cpu_count(), "data": data, "rows": rows}))
    return 1 if any(r["rc"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
