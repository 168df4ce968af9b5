"""How much of the damage a bad copy does to JPEGs `resnet-repro verify-data` finds.

Copies real JPEGs (the 250-image ImageNet sample by default) with a run of random bytes (1, 10, 100
or 2,000) written over a random place after the first fifth of the file (past the headers: the
entropy-coded data a bad disk or transfer hits most), runs verify_data on the copies, and counts
against an oracle that does not use it: PIL's decode of the copy compared with PIL's decode of the
original. A copy whose pixels differ (mean absolute difference over 0.5 levels, or PIL refuses it)
is damaged. The table counts damaged and intact copies by what verify_data said: an error (the
file is listed in bad_files.txt), a note only, or nothing.

    .venv/bin/python scripts/check_verify_damage.py                 # 200 copies, seed 0
    .venv/bin/python scripts/check_verify_damage.py --copies 500 --seed 1 --images DIR
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from resnet_repro.data.imagenet_verify import ERROR_KINDS, verify_data

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def pil_pixels(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.int16)
    except Exception:  # the oracle's own verdict: PIL refuses it
        return None


def damaged_copies(originals: list[Path], copies: int, rng: random.Random, out: Path) -> dict[str, bool]:
    """Writes the copies into out/train/c/; returns name -> damaged (by PIL against the original)."""
    folder = out / "train" / "c"
    folder.mkdir(parents=True)
    truth = {}
    for i in range(copies):
        source = rng.choice(originals)
        data = bytearray(source.read_bytes())
        length = rng.choice([1, 10, 100, 2000])
        at = rng.randrange(len(data) // 5, len(data) - length - 10)
        data[at : at + length] = rng.randbytes(length)
        want, got = pil_pixels(source.read_bytes()), pil_pixels(bytes(data))
        damaged = got is None or got.shape != want.shape or float(np.abs(got - want).mean()) > 0.5
        name = f"{i:04d}.JPEG"
        (folder / name).write_bytes(bytes(data))
        truth[name] = damaged
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SAMPLE, help="folder of JPEGs (searched recursively)")
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    originals = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    if not originals:
        raise SystemExit(f"error: no JPEGs under {args.images}; pass --images DIR")

    with tempfile.TemporaryDirectory() as tmp:
        truth = damaged_copies(originals, args.copies, random.Random(args.seed), Path(tmp))
        summary = verify_data(
            Path(tmp), expect_imagenet=False, num_threads=args.threads, progress=False, summary_path=None
        )
    said: dict[str, set[str]] = {}
    for issue in summary["issues"]:
        said.setdefault(Path(issue["path"]).name, set()).add(issue["kind"])
    table: Counter[tuple[str, str]] = Counter()
    for name, damaged in truth.items():
        kinds = said.get(name, set())
        verdict = "error" if kinds & set(ERROR_KINDS) else "note only" if kinds else "nothing"
        table["damaged" if damaged else "intact", verdict] += 1

    print(f"{args.copies} copies of {len(originals)} JPEGs under {args.images}, seed {args.seed}")
    print(f"{'copy (PIL vs original)':24s} {'error':>7s} {'note only':>10s} {'nothing':>8s}")
    for truth_kind in ("damaged", "intact"):
        counts = [table[truth_kind, v] for v in ("error", "note only", "nothing")]
        print(f"{truth_kind:24s} {counts[0]:7d} {counts[1]:10d} {counts[2]:8d}")
    print(f"issue kinds: {summary['issue_counts']}")


if __name__ == "__main__":
    main()
