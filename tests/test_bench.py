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


def test_a_json_path_that_cannot_be_written_is_refused_before_the_measurement(
    demo_root, tmp_path, monkeypatch
):
    """A folder given as bench.json, or a path under a file: refused first, not after the minutes
    of measuring that it would throw away."""
    from resnet_repro.config import UserError
    from resnet_repro.planning import bench

    measured = []
    monkeypatch.setitem(bench._BENCHES, "model", lambda *a: measured.append(a) or {})
    (tmp_path / "notes").write_text("keep")
    for path, words in (
        (tmp_path, "is a folder"),
        (tmp_path / "notes" / "b.json", "is a file, not a folder"),
    ):
        cfg = tiny("model", demo_root, tmp_path)
        cfg.bench.json = str(path)
        with pytest.raises(UserError, match=words):
            run_bench(cfg, tmp_path)
    assert measured == [] and (tmp_path / "notes").read_text() == "keep"


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


def test_a_bench_leaves_sigterm_to_its_default_action_where_a_training_run_watches_it(tmp_path: Path):
    # with the training run's preemption watch, SIGTERM ended an epoch of `bench train` and the
    # bench went on; `bench model` never looked: it ran on until its last step
    import signal

    import torch

    from resnet_repro.cluster.distributed import DistEnv
    from resnet_repro.planning import bench
    from resnet_repro.training.train import build_parts

    cfg, cpu = tiny("model", tmp_path, tmp_path), torch.device("cpu")
    derived = bench._derived(cfg, 10, cpu, 2)
    before = signal.getsignal(signal.SIGTERM)
    training = build_parts(cfg, derived, DistEnv(), cpu, tmp_path)
    assert signal.getsignal(signal.SIGTERM) is not before  # the check can fail: training watches it
    training.interrupts.close()
    bench._bench_parts(cfg, derived, cpu, tmp_path)
    assert signal.getsignal(signal.SIGTERM) is before
