"""Class subsets and per-class caps: deterministic, identical across splits, stratified, and the
statistics of a subset never see its test images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_folder, run_cli

from resnet_repro.config import DataConfig, SubsetConfig, UserError
from resnet_repro.training.run_data import load_file_lists

CLASSES = {f"n{i:02d}": 6 + i % 3 for i in range(10)}  # 10 classes of 6-8 images


@pytest.fixture
def folder(tmp_path) -> Path:
    small = ((12, 12), (16, 10))
    make_image_folder(tmp_path, "train", CLASSES, sizes=small)
    make_image_folder(tmp_path, "val", {c: 3 for c in CLASSES}, sizes=small, seed=1)
    return tmp_path


def lists(folder: Path, **subset_args) -> object:
    cfg = DataConfig(name="folder", root=str(folder), subset=SubsetConfig(**subset_args))
    return load_file_lists(cfg)


def test_a_class_count_is_a_seeded_choice_kept_identically_in_every_split(folder):
    a, b = lists(folder, classes=4, seed=3), lists(folder, classes=4, seed=3)
    assert a.train.classes == b.train.classes and a.train.files == b.train.files  # deterministic
    assert len(a.train.classes) == 4 and list(a.train.classes) == sorted(a.train.classes)
    assert lists(folder, classes=4, seed=4).train.classes != a.train.classes  # the seed chooses
    assert a.test.classes == a.train.classes
    kept = set(a.train.classes)
    for split in (a.train, a.test):
        names = {Path(f).parent.name for f in split.files}
        assert names == kept  # every kept class, nothing else
        # labels follow the kept classes' order: the model has 4 outputs
        assert all(
            split.classes[label] == Path(f).parent.name
            for f, label in zip(split.files, split.labels, strict=True)
        )
    assert len(a.test) == 4 * 3


def test_a_class_file_keeps_exactly_the_listed_classes(folder, tmp_path):
    listed = tmp_path / "classes.txt"
    listed.write_text("# ImageNet-100 style\nn07\nn02\n\n")
    got = lists(folder, classes=str(listed))
    assert got.train.classes == ("n02", "n07")
    listed.write_text("n02\nn99\n")
    with pytest.raises(UserError, match=r"data.subset.classes=.*not in the training split \(e.g. n99\)"):
        lists(folder, classes=str(listed))
    with pytest.raises(UserError, match="neither a class count nor an existing file"):
        lists(folder, classes=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="data.subset.classes=11 must be between 1 and the 10 classes"):
        lists(folder, classes=11)


def test_a_per_class_cap_is_stratified_and_stable_when_other_classes_change(folder):
    capped = lists(folder, per_class=5, seed=0)
    counts = {c: sum(1 for label in capped.train.labels if capped.train.classes[label] == c) for c in CLASSES}
    assert counts == {c: 5 for c in CLASSES}  # 5 of each, whatever the class size
    assert all(n == 3 for n in (capped.test.labels.count(i) for i in range(10)))  # below the cap: all
    # a class keeps the same images whichever other classes are kept
    both = lists(folder, classes=4, per_class=5, seed=0)
    for name in both.train.classes:
        assert [f for f in both.train.files if f"/{name}/" in f] == [
            f for f in capped.train.files if f"/{name}/" in f
        ]


def test_the_holdout_is_carved_from_the_subset(folder):
    cfg = DataConfig(name="folder", root=str(folder), subset=SubsetConfig(classes=3, seed=1))
    cfg.holdout.size = 6
    splits = load_file_lists(cfg)
    assert len(splits.holdout) == 6
    assert set(splits.holdout.classes) == set(splits.train.classes) and len(splits.train.classes) == 3
    assert not set(splits.holdout.files) & set(splits.train.files)


@pytest.mark.slow
def test_subset_statistics_exclude_val_and_other_classes_and_the_run_saves_its_classes(folder, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        "data=folder",
        f"data.root={folder}",
        "data.image_size=12",
        "data.crop_ratio=1.0",
        "data.subset.classes=3",
        "data.subset.per_class=5",
        "model=resnet18",
        "trainer.epochs=1",
        "trainer.batch_size=5",
        "stabilizer.warmup_epochs=0",
        "logging.progress=false",
        f"hydra.run.dir={run_dir}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    classes = (run_dir / "classes.txt").read_text().split()
    assert len(classes) == 3
    run = json.loads((run_dir / "run.json").read_text())
    assert run["derived"]["num_classes"] == 3 and run["derived"]["num_train"] == 15
    final = json.loads((run_dir / "final.json").read_text())
    assert final["num_samples"] == 9  # 3 classes x 3 val images
    assert "subset           3 classes" in proc.stdout + proc.stderr
    # the statistics were computed over exactly the 15 kept training images
    stats_files = list((folder / ".resnet_repro_stats").glob("*.json"))
    assert len(stats_files) == 1
    record = json.loads(stats_files[0].read_text())
    assert record["num_images"] == 15
    assert not any("/val/" in f for f in record.get("files", []))


def test_an_evaluation_cap_keeps_evenly_spaced_images_of_every_class(folder):
    cfg = DataConfig(name="folder", root=str(folder), max_eval_images=10)
    cfg.holdout.size = 20
    splits = load_file_lists(cfg)
    assert len(splits.test) == 10 and len(splits.holdout) == 10
    assert set(splits.test.labels) == set(range(10))  # 30 images of 10 classes: every class kept
    full = load_file_lists(DataConfig(name="folder", root=str(folder)))
    assert set(splits.test.files) <= set(full.test.files)
    assert len(load_file_lists(DataConfig(name="folder", root=str(folder), max_eval_images=100)).test) == 30


@pytest.mark.slow
def test_a_demo_sweep_on_a_class_subset_runs_end_to_end_and_reports(demo_root: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    common = [sys.executable, "-m", "resnet_repro"]
    proc = subprocess.run(
        [
            *common,
            "train",
            "-m",
            f"data.root={demo_root}",
            "data.subset.classes=4",
            "data.subset.per_class=40",
            "trainer.epochs=1",
            "trainer.batch_size=16",
            "trainer.max_steps_per_epoch=2",
            "stabilizer.warmup_epochs=0",
            "logging.progress=false",
            "optim.weight_decay=1e-4,5e-4",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2
    for job in jobs:
        kept = (job / "classes.txt").read_text().split()
        assert len(kept) == 4
        val_images = sum(len(list((demo_root / "val" / c).glob("*.JPEG"))) for c in kept)
        assert json.loads((job / "final.json").read_text())["num_samples"] == val_images  # those classes only
    assert len({(job / "classes.txt").read_text() for job in jobs}) == 1  # the same seeded classes
    report = subprocess.run([*common, "report", str(sweep)], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "optim.weight_decay" in report.stdout and report.stdout.count("done") == 2
