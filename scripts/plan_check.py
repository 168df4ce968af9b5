"""Does `resnet-repro plan` hold? Its estimate of a short progressive run on the demo data against
that run's measured training time.

    python scripts/plan_check.py [--epochs 4] [--start-size 24] [--end-size 32] [--device cpu]
        [--root DIR] [--out DIR] [--tolerance 0.25]

Plans the run (measuring img/s here at each training crop, as `plan` does without
plan.img_per_s_per_gpu), trains it, and compares each epoch's planned training time with the
`epoch_time_s` the run logged, and their sums. Exits 1 when the total is off by more than the
tolerance (a fraction). A benchmark, not a test: its numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--start-size", type=int, default=24)
    ap.add_argument("--end-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--root", type=Path, default=None, help="demo data (built here when missing)")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--tolerance", type=float, default=0.25)
    args = ap.parse_args()

    from resnet_repro.data.demo import build_demo_dataset

    with tempfile.TemporaryDirectory(prefix="plan-check-") as tmp:
        root = build_demo_dataset(args.root or Path(tmp) / "digits")
        out = args.out or Path(tmp) / "run"
        overrides = [
            "experiment=demo",
            f"data.root={root}",
            f"trainer.epochs={args.epochs}",
            f"trainer.device={args.device}",
            f"data.progressive.start_size={args.start_size}",
            f"data.progressive.end_size={args.end_size}",
            "data.progressive.step=8",
            "logging.progress=false",
        ]
        cli = [sys.executable, "-m", "resnet_repro"]
        planned = subprocess.run([*cli, "plan", *overrides], check=True, capture_output=True, text=True)
        print(planned.stdout.rsplit("\n", 2)[0])
        run = json.loads(planned.stdout.strip().splitlines()[-1])["runs"][0]
        subprocess.run([*cli, "train", *overrides, f"hydra.run.dir={out}"], check=True, capture_output=True)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        measured = [
            r["epoch_time_s"] for r in sorted(rows, key=lambda r: r["epoch"]) if r["split"] == "train"
        ]

    print("\n| epoch | crop (px) | planned s | measured s | measured / planned |")
    print("|---|---|---|---|---|")
    for epoch, (size, plan_s, real_s) in enumerate(
        zip(run["train_sizes"], run["epoch_train_s"], measured, strict=True), start=1
    ):
        print(f"| {epoch} | {size} | {plan_s:.2f} | {real_s:.2f} | {real_s / plan_s:.2f} |")
    ratio = sum(measured) / sum(run["epoch_train_s"])
    print(f"| all | | {sum(run['epoch_train_s']):.2f} | {sum(measured):.2f} | {ratio:.2f} |")
    held = abs(ratio - 1) <= args.tolerance
    verdict = "holds" if held else "does NOT hold"
    print(f"\nplan {verdict}: measured / planned = {ratio:.2f} (tolerance {args.tolerance:.0%})")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
