"""Golden numbers: the demo's per-epoch losses for a fixed seed on the CPU (as torchtitan keeps loss
curves under tests/assets/). A change that alters the computation, such as a refactor that moves a
step or reorders random draws, fails here loudly.

After a deliberate change of the numbers, regenerate the file and say why in the commit:
    RESNET_REPRO_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "assets" / "demo_losses.json"
# short: two epochs of four steps; data.backend is the demo's default
OVERRIDES = [
    "trainer.epochs=2",
    "trainer.max_steps_per_epoch=4",
    "trainer.batch_size=32",
    "trainer.seed=0",
    "logging.progress=false",
]
KEYS = ("loss", "top1", "lr")


def per_epoch_numbers(run_dir: Path) -> dict[str, list[dict[str, float]]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        split: [{"epoch": r["epoch"], **{k: r[k] for k in KEYS}} for r in rows if r["split"] == split]
        for split in ("train", "val")
    }


def test_demo_losses_for_a_fixed_seed_match_the_golden_numbers(demo_root: Path, tmp_path: Path):
    # one thread: CPU reductions then add in a fixed order
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_repro", "train", f"data.root={demo_root}", f"hydra.run.dir={tmp_path}"]
        + OVERRIDES,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = per_epoch_numbers(tmp_path)
    if os.environ.get("RESNET_REPRO_REGENERATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"overrides": OVERRIDES, **measured}, indent=2) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert golden["overrides"] == OVERRIDES
    for split in ("train", "val"):
        assert [r["epoch"] for r in measured[split]] == [r["epoch"] for r in golden[split]] == [1, 2]
        for got, want in zip(measured[split], golden[split], strict=True):
            for key in KEYS:
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (split, got["epoch"], key)
