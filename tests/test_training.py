"""End-to-end behaviour of `resnet-repro train` / `eval` on the demo data, through the real CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "resnet_repro", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def short_run(demo_root: Path, tmp_path_factory) -> Path:
    """Three epochs of ResNet-18 on the digits: enough to learn well above chance."""
    run_dir = tmp_path_factory.mktemp("short_run")
    proc = run_cli(
        "train",
        f"data.root={demo_root}",
        f"hydra.run.dir={run_dir}",
        "trainer.epochs=3",
        "schedule.milestones=[2]",
        "stabilizer.warmup_epochs=1",
        "logging.progress=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_training_run_learns_well_above_chance(short_run: Path):
    val = [r for r in read_metrics(short_run) if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3]
    assert val[-1]["top1"] > 0.6  # chance is 0.1
    train = [r for r in read_metrics(short_run) if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]


def test_run_directory_holds_config_git_metrics_tensorboard_and_checkpoint(short_run: Path):
    assert (short_run / "config.yaml").read_text().count("lr_per_256") == 1
    info = json.loads((short_run / "run.json").read_text())
    assert set(info["git"]) == {"commit", "dirty"}
    assert info["derived"]["global_batch"] == 64
    assert info["derived"]["peak_lr"] == pytest.approx(0.05)  # lr_per_256 0.2 at batch 64
    assert (short_run / "checkpoints" / "last.pt").is_file()
    assert list((short_run / "tb").glob("events.out.tfevents.*"))
    for row in read_metrics(short_run):
        assert {"epoch", "split", "loss", "top1", "lr"} <= set(row)
        assert 0.0 <= row["top1"] <= 1.0
        if row["split"] == "val":
            assert 0.0 <= row["top5"] <= 1.0 and row["num_samples"] == 360


def test_eval_of_last_checkpoint_reproduces_final_val_top1_exactly(short_run: Path, demo_root: Path):
    proc = run_cli("eval", f"checkpoint={short_run}/checkpoints/last.pt", f"data.root={demo_root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    final = [r for r in read_metrics(short_run) if r["split"] == "val"][-1]
    assert result["num_samples"] == 360
    assert result["top1"] == final["top1"]
    assert result["top5"] == final["top5"]
    assert result["loss"] == pytest.approx(final["loss"], rel=1e-6)


@pytest.mark.parametrize(
    ("overrides", "protocol", "images"),
    [
        (["eval.protocol=ten_crop"], "ten_crop", 360),
        # one image and 3 sizes a forward pass: a quarter of the split says as much, 4x sooner
        (["eval.protocol=multiscale", "eval.scales=[32,40,48]", "data.max_eval_images=90"], "multiscale", 90),
    ],
)
def test_eval_under_ten_crop_and_multiscale_prints_a_json_line_naming_the_protocol(
    short_run: Path, demo_root: Path, overrides: list[str], protocol: str, images: int
):
    proc = run_cli(
        "eval", f"checkpoint={short_run}/checkpoints/last.pt", f"data.root={demo_root}", *overrides
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["protocol"] == protocol and result["num_samples"] == images
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0 and math.isfinite(result["loss"])


def test_eval_with_a_normalization_on_the_command_line_uses_it_instead_of_the_stored_one(
    short_run: Path, demo_root: Path
):
    proc = run_cli(
        "eval",
        f"checkpoint={short_run}/checkpoints/last.pt",
        f"data.root={demo_root}",
        "data.normalization=none",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NOTE normalization none from the command line" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    final = [r for r in read_metrics(short_run) if r["split"] == "val"][-1]
    assert result["num_samples"] == 360 and result["loss"] != pytest.approx(final["loss"], rel=1e-3)


def test_final_evaluation_runs_each_configured_protocol_names_each_and_eval_repeats_them(
    demo_root: Path, tmp_path: Path
):
    # multiscale at the 32 px training size without flips sees exactly the centre protocol's image,
    # and so do the five crops of ten_crop without flips (the demo's crop_ratio is 1: each is whole)
    run_dir = tmp_path / "run"
    protocol = ["eval.protocol=[multiscale,ten_crop]", "eval.scales=[32]", "eval.hflip=false"]
    proc = run_cli(
        "train",
        f"data.root={demo_root}",
        f"hydra.run.dir={run_dir}",
        "trainer.epochs=1",
        "trainer.max_steps_per_epoch=3",
        "stabilizer.warmup_epochs=0",
        "logging.progress=false",
        "data.max_eval_images=60",  # 6 per class: the protocols' bookkeeping, not their cost, is tested
        *protocol,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["protocol"] == "multiscale" and final["num_samples"] == 60
    assert final["top1"] == final["center"]["top1"] and final["top5"] == final["center"]["top5"]
    assert final["loss"] == pytest.approx(final["center"]["loss"], rel=1e-4)
    for name in ("multiscale", "ten_crop"):  # each protocol by name, beside the centre crop
        assert final[name]["protocol"] == name and final[name]["top1"] == final["center"]["top1"], name
    assert [r["split"] for r in read_metrics(run_dir)][-2:] == ["val-multiscale", "val-ten_crop"]

    # `resnet-repro eval` without eval.* overrides measures the way the run's final evaluation did
    proc = run_cli("eval", f"checkpoint={run_dir}/checkpoints/last.pt", f"data.root={demo_root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "protocol multiscale, ten_crop from the checkpoint's run" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["protocol"], result["top1"], result["num_samples"]) == ("multiscale", final["top1"], 60)
    assert result["ten_crop"]["top1"] == final["ten_crop"]["top1"]


def test_eval_without_data_overrides_measures_the_checkpoint_on_its_runs_data(
    short_run: Path, tmp_path: Path
):
    # a different cache location: only the checkpoint's own config can point at the demo data
    env_cwd = tmp_path / "elsewhere"
    env_cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_repro", "eval", f"checkpoint={short_run}/checkpoints/last.pt"],
        capture_output=True,
        text=True,
        cwd=env_cwd,
        env={**os.environ, "RESNET_REPRO_CACHE": str(tmp_path / "empty-cache"), "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data from the checkpoint's run" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    final = [r for r in read_metrics(short_run) if r["split"] == "val"][-1]
    assert result["num_samples"] == 360 and result["top1"] == final["top1"]


def test_resuming_a_finished_run_trains_no_further_and_reports_final_metrics(
    short_run: Path, demo_root: Path
):
    before = (short_run / "metrics.jsonl").read_text()
    proc = run_cli(
        "train",
        f"data.root={demo_root}",
        f"hydra.run.dir={short_run}",
        "trainer.epochs=3",
        "schedule.milestones=[2]",
        "stabilizer.warmup_epochs=1",
        "logging.progress=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (short_run / "metrics.jsonl").read_text() == before
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    assert final["top1"] == [r for r in read_metrics(short_run) if r["split"] == "val"][-1]["top1"]


def test_a_non_finite_stop_leaves_finite_batchnorm_statistics_in_last_pt(demo_root: Path, tmp_path: Path):
    """A std of 1e-40 makes every normalized pixel inf: the first forward puts NaN into the BatchNorm
    running statistics before the guard stops the run; last.pt must not keep them."""
    import torch

    from resnet_repro import checkpoint

    proc = run_cli(
        "train",
        f"data.root={demo_root}",
        f"hydra.run.dir={tmp_path}",
        "data.normalization=published",
        "data.std=[1e-40,1e-40,1e-40]",
        "trainer.epochs=2",
        "logging.progress=false",
    )
    assert proc.returncode == 2 and "non-finite loss or gradient" in proc.stderr, proc.stderr[-3000:]
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 0
    running = {k: v for k, v in state["model"].items() if "running_" in k}
    assert running and all(torch.isfinite(v).all() for v in running.values())


def test_eval_refuses_data_whose_class_names_are_not_the_checkpoints(
    short_run: Path, demo_root: Path, tmp_path: Path
):
    # the same images under other folder names: as many classes, but not the ones the model learnt
    # (a review scored the digits' checkpoint on CIFAR-10 this way: exit 0, top-1 0.095)
    other = tmp_path / "renamed"
    for split in ("train", "val"):
        for folder in sorted((demo_root / split).iterdir()):
            (other / split).mkdir(parents=True, exist_ok=True)
            (other / split / f"class_{folder.name}").symlink_to(folder)
    (other / ".complete").write_text("")  # the demo's own marker: the folder counts as built
    proc = run_cli("eval", f"checkpoint={short_run}/checkpoints/last.pt", f"data.root={other}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert "was trained on other classes" in error and "class_0" in error and str(other) in error


def test_eval_of_a_checkpoint_without_class_names_assumes_the_datas_and_says_so(
    short_run: Path, demo_root: Path, tmp_path: Path
):
    import torch

    older = tmp_path / "older.pt"
    state = torch.load(short_run / "checkpoints" / "last.pt", weights_only=False)
    assert state["classes"] == sorted(p.name for p in (demo_root / "train").iterdir())
    del state["classes"]  # as earlier versions wrote it
    torch.save(state, older)
    proc = run_cli("eval", f"checkpoint={older}", f"data.root={demo_root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "holds no class names" in proc.stderr
    final = [r for r in read_metrics(short_run) if r["split"] == "val"][-1]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["top1"] == final["top1"]


@pytest.mark.parametrize(
    "entry", [{}, {"mean": [0.5, 0.5], "std": [0.2] * 3}, {"mean": ["a"] * 3, "std": [0.2] * 3}]
)
def test_eval_of_a_checkpoint_with_a_damaged_normalization_entry_is_one_line(
    short_run: Path, demo_root: Path, tmp_path: Path, entry: dict
):
    import torch

    edited = tmp_path / "edited.pt"
    state = torch.load(short_run / "checkpoints" / "last.pt", weights_only=False)
    state["normalization"] = entry
    torch.save(state, edited)
    proc = run_cli("eval", f"checkpoint={edited}", f"data.root={demo_root}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and f"checkpoint {edited}: its normalization" in error
