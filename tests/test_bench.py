"""`resnet-repro bench` measures and writes its numbers (small settings: this is not a timing test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnet_repro.bench import format_table, run_bench
from resnet_repro.config import BenchConfig, DataConfig, LoggingConfig, ModelConfig, RootConfig, TrainerConfig


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
@pytest.mark.parametrize("mode", ["model", "data", "train", "loop-overhead"])
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
    assert mode in format_table(record)
