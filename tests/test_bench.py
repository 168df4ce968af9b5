"""`resnet-repro bench` measures and writes its numbers (small settings: this is not a timing test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from resnet_repro.config import BenchConfig, DataConfig, LoggingConfig, ModelConfig, RootConfig, TrainerConfig
from resnet_repro.planning.bench import format_table, run_bench


def tiny(mode: str, root: Path, tmp_path: Path) -> RootConfig:
    return RootConfig(
        data=DataConfig(name="demo", root=str(root), image_size=32, crop_ratio=1.0, num_threads=1),
        model=ModelConfig(name="resnet18"),
        trainer=TrainerConfig(batch_size=16, device="cpu"),
        logging=LoggingConfig(tensorboard=False, progress=False),
        bench=BenchConfig(
            mode=mode,
            warmup=1,
            steps=2,
            trials=1,
            num_classes=10,
            min_images=64,
            json=str(tmp_path / f"{mode}.json"),
        ),
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["model", "data", "train", "loop-overhead", "stats"])
def test_each_bench_mode_measures_and_writes_json(mode: str, demo_root: Path, tmp_path: Path):
    record = run_bench(tiny(mode, demo_root, tmp_path), tmp_path)
    written = json.loads((tmp_path / f"{mode}.json").read_text())
    assert written["mode"] == mode and written["device"] == "cpu"
    rates = [v for k, v in written.items() if k.endswith("img_per_s")]
    assert rates and all(r > 0 for r in rates)
    if mode == "loop-overhead":
        assert written["overhead_ratio"] == pytest.approx(
            written["bare_img_per_s"] / written["runner_img_per_s"]
        )
    if mode == "train":
        assert 0.0 <= written["data_wait_fraction"] <= 1.0
    if mode == "stats":
        assert written["decoder"] == "dali" and written["images_per_trial"] >= 64
        assert written["stats_vs_decode"] == pytest.approx(
            written["stats_img_per_s"] / written["decode_img_per_s"]
        )
    assert mode in format_table(record)


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_bench_script_runs_end_to_end_on_the_cpu_and_writes_its_table(tmp_path: Path):
    """The GPU check runs on a lent machine with minutes of budget: its script must not fail there
    for a reason the CPU could have shown (same code, tiny sizes; torch.compile included: a cold
    compile costs about a minute here)."""
    import subprocess
    import sys

    out = tmp_path / "g.json"
    args = "--device cpu --model resnet18 --image-size 32 --batch-size 4 --steps 1 --trials 1 --warmup 1"
    # inductor's CPU code without a vector ISA (what ATEN_CPU_CAPABILITY=default selects) casts to
    # bf16 with at::vec::convert without declaring at::vec, and the C++ compile fails (torch 2.14):
    # a torch fault on the CPU only; the script is for GPUs, so its CPU run uses the host's ISA
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "gpu_bench.py"),
            *args.split(),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| bf16 + channels_last |" in proc.stdout and "loop overhead" in proc.stdout
    record = json.loads(out.read_text())
    assert [r["setting"] for r in record["rows"]] == [
        "fp32",
        "bf16",
        "bf16 + channels_last",
        "bf16 + channels_last + compile",
    ]
    assert record["loop_overhead"]["overhead_ratio"] > 0


def test_a_bench_stops_at_sigterm_instead_of_swallowing_it(tmp_path: Path):
    # the training parts' preemption watch took SIGTERM as "end this epoch" and the bench went on
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resnet_repro",
            "bench",
            "model",
            "model=resnet18",
            "data.image_size=32",
            "trainer.batch_size=2",
            "bench.steps=1000000",
            "bench.warmup=1000000",
            "trainer.device=cpu",
            f"hydra.run.dir={tmp_path / 'bench'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(15)  # imports and the first steps: well inside the million warm-up steps
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("bench went on after SIGTERM") from None
    assert proc.returncode == -signal.SIGTERM
