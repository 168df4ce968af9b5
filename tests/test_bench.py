"""`resnet-repro bench` measures and writes its numbers (small settings: this is not a timing test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def _gpu_check(tmp_path: Path, *args: str):
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), *args, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )


def test_gpu_check_on_a_machine_without_cuda_asks_for_device_cpu(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would really run")
    proc = _gpu_check(tmp_path)
    assert proc.returncode == 2
    assert "no CUDA device here; run with --device cpu" in proc.stdout + proc.stderr


GPU_ONLY_ROWS = {2, 4, 5, 6, 7}  # decode, compiled training, sync audit, memory, statistics


@pytest.mark.slow
def test_gpu_check_judges_every_row_leaves_three_files_and_skips_what_the_budget_cannot_fit(tmp_path: Path):
    """`--device cpu --quick --budget-s 60` with one goal set out of reach (`--goal cpus=1e9`): the
    environment row runs and misses that goal, so the exit code is 1; the training and CLI rows
    (estimated past a minute on a CPU) are skipped for the budget and named; the GPU-only rows are
    skipped saying why; every row carries its goals as data and `met`; the output folder holds
    gpu_check.json, the text log and one archive of logs, nothing else."""
    import tarfile

    proc = _gpu_check(tmp_path, "--device", "cpu", "--quick", "--budget-s", "60", "--goal", "cpus=1e9")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json",
        "gpu_check.txt",
        "gpu_check_logs.tar.gz",
    ]
    record = json.loads((out / "gpu_check.json").read_text())
    rows = {r["row"]: r for r in record["rows"]}
    assert sorted(rows) == list(range(1, 13))
    assert all("goal" in r and "met" in r and r["goal"] for r in rows.values())
    env = rows[1]
    assert env["status"] == "measured" and env["met"] is False
    cpus = next(g for g in env["goal"] if g["name"] == "cpus")
    assert cpus == {
        "name": "cpus",
        "key": "cpus",
        "op": ">=",
        "value": 1e9,
        "measured": os.cpu_count(),
        "met": False,
    }
    assert all(g["met"] for g in env["goal"] if g["name"] != "cpus")
    assert record["goals_missed"] == ["1. cpus"] and record["all_met"] is False
    budget_skips = [rows[3]["name"], rows[12]["name"]]
    assert record["skipped_for_budget"] == budget_skips
    assert all(rows[i]["why"].startswith("budget: needs about") and rows[i]["met"] is None for i in (3, 12))
    for i in GPU_ONLY_ROWS:
        assert rows[i]["status"] == "skipped" and rows[i]["why"].startswith("needs a CUDA GPU"), rows[i]
    assert "skipped for the budget: " + "; ".join(budget_skips) in proc.stdout
    log = (out / "gpu_check.txt").read_text()
    assert "| # | row | status | goals | result | s |" in log and "goals missed: 1. cpus" in log
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        assert all(m.size <= 256 * 1024 for m in tar.getmembers())


def test_gpu_check_rejects_an_unknown_goal_naming_the_known_ones():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "gpu_check.py"),
            "--goal",
            "img_per_sec=5",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "--goal 'img_per_sec=5': expected NAME=VALUE" in proc.stderr
    assert "train_img_per_s" in proc.stderr


@pytest.mark.slow  # the environment row imports DALI, Hydra, scikit-learn and torchvision
def test_gpu_check_records_what_the_kit_installed_and_misses_a_goal_for_a_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The environment row reads scripts/wheelhouse.sh --install's report: every package's result
    is in the row, and one package missing from the kit misses the install goal."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look themselves up there
    spec.loader.exec_module(gpu_check)
    report = tmp_path / "install.json"
    packages = [
        {
            "name": "hydra-core",
            "version": "1.3.2",
            "file": "hydra_core-1.3.2-py3-none-any.whl",
            "result": "installed",
        },
        {
            "name": "nvidia-dali-cuda130",
            "version": "2.4.0",
            "file": "x.whl",
            "result": "missing",
            "detail": "part001",
        },
        {
            "name": "torch",
            "version": "2.11.0",
            "file": "torch.whl",
            "result": "kept",
            "detail": "already has it",
        },
    ]
    report.write_text(json.dumps({"python": "python3", "packages": packages}))
    ctx = gpu_check.Ctx(torch.device("cpu"), True, tmp_path, None, tmp_path, install_report=report)
    result = gpu_check.row_environment(ctx)
    assert result["installed"]["packages"] == packages and result["install_failed"] == 1
    goals = gpu_check.judge(gpu_check.ROWS[0].goals, result, "cpu")
    assert [g["met"] for g in goals if g["name"] == "install_failed_packages"] == [False]
