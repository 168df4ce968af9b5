"""Golden numbers: the demo's per-epoch losses for a fixed seed on the CPU (as torchtitan keeps loss
curves under tests/assets/). A change that alters the computation, such as a refactor that moves a
step or reorders random draws, fails here loudly.

The numbers must be the same on every x86-64 CPU that CI may land on, so the golden run pins every
CPU-dependent code path (measured on a 2-core AMD EPYC with AVX2, 2 epochs x 4 steps; unpinned, the
epoch-2 train loss was 1.4515 with ATen's `default` kernels, 1.4675 with `avx2`, 1.3560 with oneDNN at
AVX2 instead of SSE4.1 and 1.3190 without MKL's CNR mode: the run is chaotic, so any difference in
the first step grows to percent):
- `ATEN_CPU_CAPABILITY=default`: ATen's vectorized kernels (among them `normal_`, which draws the
  initial weights differently with AVX2) take their portable path;
- convolutions through ATen's own im2col + GEMM instead of oneDNN, whose JIT kernels depend on the
  CPU's ISA and cache sizes (`torch.backends.mkldnn.enabled = False` in the launcher below);
- `MKL_CBWR=COMPATIBLE`: MKL's conditional numerical reproducibility, the same GEMM code path on
  Intel and AMD processors;
- one thread for OpenMP and MKL, so reductions add in one order.
With these pins the numbers did not move on that machine under `ONEDNN_MAX_CPU_ISA=AVX2` or
`SSE41`, `JSIMD_FORCENONE=1` (libjpeg-turbo without SIMD) or `MKL_CBWR=COMPATIBLE,STRICT`, and the
test passes whatever `ATEN_CPU_CAPABILITY` the calling shell sets.

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
# Environment of the golden run: see the module docstring for why each entry is there
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",  # unused while oneDNN is off; pinned in case a kernel reaches it
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
# `resnet-repro` with oneDNN switched off (there is no environment variable for that)
LAUNCHER = (
    "import sys, torch; torch.backends.mkldnn.enabled = False; "
    "from resnet_repro.cli import main; sys.argv = ['resnet-repro', *sys.argv[1:]]; main()"
)


def per_epoch_numbers(run_dir: Path) -> dict[str, list[dict[str, float]]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        split: [{"epoch": r["epoch"], **{k: r[k] for k in KEYS}} for r in rows if r["split"] == split]
        for split in ("train", "val")
    }


def test_demo_losses_for_a_fixed_seed_match_the_golden_numbers(demo_root: Path, tmp_path: Path):
    env = {**os.environ, **PINNED_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "train", f"data.root={demo_root}", f"hydra.run.dir={tmp_path}"]
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
