"""How a training run gets its normalization: train-only stats, computed once, checked for leakage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import DataConfig, HoldoutConfig, StatsConfig, UserError
from resnet_repro.data import stats, stats_process
from resnet_repro.data.normalization import compute_record, resolve
from resnet_repro.data.selection import stats_selection
from resnet_repro.training.run_data import load_file_lists

CPU = torch.device("cpu")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_image_folder(tmp_path, "train", {"a": 12, "b": 12}, grayscale_every=5)
    make_image_folder(tmp_path, "val", {"a": 4, "b": 4}, seed=1)
    return tmp_path


def data_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="folder", root=str(root), num_threads=1, **kw)


def reference(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate(
        [np.asarray(Image.open(f).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255 for f in files]
    )
    return pixels.mean(0), pixels.std(0)


def test_computed_stats_are_written_once_then_loaded_and_cover_only_training_images(root: Path):
    cfg = data_cfg(root)
    splits = load_file_lists(cfg)
    first, _ = resolve(cfg, splits, DistEnv(), CPU)
    assert first.source == "computed" and "computed now" in first.detail
    second, _ = resolve(cfg, splits, DistEnv(), CPU)
    assert "loaded" in second.detail and second.mean == first.mean
    mean, std = reference(list(splits.train_full.files))
    # DALI's and PIL's JPEG decoders may round a few pixels differently
    np.testing.assert_allclose(first.mean, mean, atol=2e-3)
    np.testing.assert_allclose(first.std, std, atol=2e-3)


def test_torchvision_backend_computes_stats_with_its_own_decoder_where_dali_is_missing(
    root: Path, monkeypatch
):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("nvidia.dali") else real_find_spec(name, *a),
    )
    cfg = data_cfg(root, backend="torchvision", decoder="pil")
    splits = load_file_lists(cfg)
    record = compute_record(cfg, splits, DistEnv(), CPU)
    assert record.decoder == "pil" and record.num_images == 24
    mean, std = reference(list(splits.train_full.files))
    np.testing.assert_allclose(record.mean, mean, atol=1e-6)  # the same decoder as the reference: exact
    np.testing.assert_allclose(record.std, std, atol=1e-6)
    with pytest.raises(UserError, match="data.backend=dali needs NVIDIA DALI"):
        compute_record(data_cfg(root), splits, DistEnv(), CPU)


def test_holdout_images_enter_the_stats_under_train_and_not_under_train_minus_holdout(root: Path):
    for stats_from, expected in (("train", 24), ("train_minus_holdout", 18)):
        cfg = data_cfg(root, holdout=HoldoutConfig(size=6, seed=0, stats_from=stats_from))
        splits = load_file_lists(cfg)
        assert len(splits.holdout) == 6 and len(splits.train) == 18
        record = compute_record(cfg, splits, DistEnv(), CPU)
        assert record.num_images == expected
        selection, _ = stats_selection(cfg, splits)
        assert record.fingerprint == stats.fingerprint(selection, cfg.root)
        if stats_from == "train_minus_holdout":
            held = {stats.path_hash(p) for p in stats.relative_paths(splits.holdout, root)}
            assert not held & set(record.contents)


def test_training_refuses_a_stats_file_that_saw_test_images(root: Path, tmp_path_factory):
    path = tmp_path_factory.mktemp("stats") / "leaky.json"
    cfg = data_cfg(root, stats=StatsConfig(path=str(path)))
    splits = load_file_lists(cfg)
    # stats over train + val: the leak this tool promises never to allow
    leaky = dataclasses.replace(
        splits.train_full,
        files=splits.train_full.files + splits.test.files,
        labels=splits.train_full.labels + splits.test.labels,
    )
    sums = stats_process.compute_stats(
        list(leaky.files), resize_shorter=None, num_threads=1, batch_size=8, device="cpu"
    )
    record = stats.build_record(
        sums, selection=leaky, root=root, split="train", holdout=None, elapsed_s=0.0, resize_shorter=None
    )
    stats.write_stats_file(path, record)
    with pytest.raises(UserError, match="test split"):
        resolve(cfg, splits, DistEnv(), CPU)


def test_training_refuses_stale_stats_after_a_training_image_is_added(root: Path):
    cfg = data_cfg(root, stats=StatsConfig(path=str(root / "pinned.json")))
    resolve(cfg, load_file_lists(cfg), DistEnv(), CPU)
    make_image_folder(root, "train", {"c": 2}, seed=7)
    with pytest.raises(UserError, match="different file list"):
        resolve(cfg, load_file_lists(cfg), DistEnv(), CPU)
    relaxed = data_cfg(root, stats=StatsConfig(path=str(root / "pinned.json"), allow_mismatch=True))
    norm, warnings = resolve(relaxed, load_file_lists(relaxed), DistEnv(), CPU)
    assert warnings and norm.source == "computed"


def test_published_and_none_normalizations_are_recorded_as_such(root: Path):
    cfg = data_cfg(root, normalization="published")
    norm, _ = resolve(cfg, load_file_lists(cfg), DistEnv(), CPU)
    assert norm.mean == (0.485, 0.456, 0.406) and norm.source == "published"
    cfg = data_cfg(root, normalization="none")
    norm, _ = resolve(cfg, load_file_lists(cfg), DistEnv(), CPU)
    assert norm.mean == (0.0, 0.0, 0.0) and norm.std == (1.0, 1.0, 1.0)


def test_an_unwritable_stats_location_fails_before_the_pass(root: Path, tmp_path_factory, monkeypatch):
    import resnet_repro.data.normalization as normalization

    blocker = tmp_path_factory.mktemp("ro") / "not-a-folder"
    blocker.write_text("a file where the stats folder would go")  # (root may write anywhere: no chmod)
    cfg = data_cfg(root, stats=StatsConfig(path=str(blocker / "stats.json")))
    monkeypatch.setattr(normalization, "compute_record", lambda *a: pytest.fail("the pass ran"))
    with pytest.raises(UserError, match=r"data.stats.path=.*: .*not-a-folder is a file, not a folder"):
        resolve(cfg, load_file_lists(cfg), DistEnv(), CPU)


def test_a_stats_file_computed_at_resize_64_is_refused_when_the_run_asks_for_resize_128(root: Path):
    path = root / "pinned.json"
    at_64 = data_cfg(root, stats=StatsConfig(path=str(path), resize=64))
    resolve(at_64, load_file_lists(at_64), DistEnv(), CPU)
    assert stats.read_stats_file(path).resize_shorter == 64
    at_128 = data_cfg(root, stats=StatsConfig(path=str(path), resize=128))
    with pytest.raises(UserError, match=r"data.stats.resize=64, but this run asks for data.stats.resize=128"):
        resolve(at_128, load_file_lists(at_128), DistEnv(), CPU)
    # not a fingerprint question: allowing a file-list mismatch does not let other settings through
    relaxed = data_cfg(root, stats=StatsConfig(path=str(path), resize=128, allow_mismatch=True))
    with pytest.raises(UserError, match="data.stats.resize=64"):
        resolve(relaxed, load_file_lists(relaxed), DistEnv(), CPU)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (dict(stats=StatsConfig(max_images=10, seed=1)), "data.stats.seed=0, but this run asks for .*seed=1"),
        (dict(stats=StatsConfig(max_images=12)), "data.stats.max_images=10, but .*max_images=12"),
        (
            dict(backend="torchvision", decoder="pil", stats=StatsConfig(max_images=10)),
            "decoder .*=dali, but this run asks for .*=pil",
        ),
    ],
    ids=["seed", "max_images", "decoder"],
)
def test_a_stats_file_with_other_sample_or_decoder_settings_is_refused(root: Path, second, message):
    path = str(root / "pinned.json")
    first = data_cfg(root, stats=StatsConfig(path=path, max_images=10, seed=0))
    resolve(first, load_file_lists(first), DistEnv(), CPU)
    second = data_cfg(root, **{**second, "stats": dataclasses.replace(second["stats"], path=path)})
    with pytest.raises(UserError, match=message):
        resolve(second, load_file_lists(second), DistEnv(), CPU)


def test_default_stats_file_names_differ_by_resize_sample_seed_and_decoder(root: Path):
    from resnet_repro.data.normalization import stats_path

    variants = [
        data_cfg(root),
        data_cfg(root, stats=StatsConfig(resize=64)),
        data_cfg(root, stats=StatsConfig(max_images=10, seed=0)),
        data_cfg(root, stats=StatsConfig(max_images=10, seed=1)),
        data_cfg(root, backend="torchvision", decoder="pil"),
        data_cfg(root, backend="torchvision", decoder="decode_jpeg"),
    ]
    names = [stats_path(cfg, "f" * 64).name for cfg in variants]
    assert len(set(names)) == len(names), names
    assert names[0] == "ffffffffffffffff.json"  # the default settings keep the plain name
    assert names[3] == "ffffffffffffffff-n10-s1.json" and names[4] == "ffffffffffffffff-pil.json"


def test_the_file_list_fingerprint_is_computed_once_per_start(root: Path, monkeypatch):
    """Fingerprinting stats every file (seconds for ImageNet, minutes on network storage): looking
    for the file, checking it and writing a fresh record share one computation."""
    from resnet_repro.data.normalization import compute_and_save

    real = stats.fingerprint
    calls = []
    monkeypatch.setattr(stats, "fingerprint", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = data_cfg(root)
    splits = load_file_lists(cfg)
    _, _ = resolve(cfg, splits, DistEnv(), CPU)  # no file yet: look, compute, write, check
    assert len(calls) == 1
    calls.clear()
    norm, _ = resolve(cfg, splits, DistEnv(), CPU)  # the file exists: look, load, check
    assert "loaded" in norm.detail and len(calls) == 1
    calls.clear()
    compute_and_save(cfg, splits, DistEnv(), CPU)  # `resnet-repro stats`
    assert len(calls) == 1


@pytest.mark.slow
def test_the_stats_command_shares_the_pass_over_trainer_nproc_local_processes(root: Path, tmp_path_factory):
    """`resnet-repro stats trainer.nproc=2` runs two processes as `train trainer.nproc=2` does (it
    ran one before, silently), and their merged sums are the one-process numbers exactly."""
    from conftest import run_cli

    results = {}
    for nproc in (1, 2):
        work = tmp_path_factory.mktemp(f"stats{nproc}")
        done = run_cli(
            "stats", "data=folder", f"data.root={root}", "data.num_threads=1",
            "trainer.device=cpu", f"trainer.nproc={nproc}", f"data.stats.path={work / 'stats.json'}",
            f"hydra.run.dir={work / 'run'}",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]  # printed once
        results[nproc] = json.loads(line)
        # rank 0's progress line (the other ranks log warnings only, as in train)
        (share,) = [ln for ln in (done.stdout + done.stderr).splitlines() if "this process's share" in ln]
        assert f"statistics pass: {24 // nproc} images (this process's share)" in share
    assert results[2]["mean"] == results[1]["mean"] and results[2]["std"] == results[1]["std"]
    assert results[2]["num_images"] == results[1]["num_images"] == 24


@pytest.mark.slow
def test_a_stats_error_on_two_processes_is_the_workers_line_and_the_launchers_without_a_traceback(tmp_path):
    from conftest import run_cli

    (tmp_path / "data" / "train" / "a").mkdir(parents=True)  # an empty class folder
    (tmp_path / "data" / "val" / "a").mkdir(parents=True)
    done = run_cli(
        "stats", "data=folder", f"data.root={tmp_path / 'data'}", "trainer.device=cpu", "trainer.nproc=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("resnet-repro: error: a statistics worker failed (rank "), lines[-3:]
    assert any("has no images" in ln and ln.startswith("resnet-repro: error:") for ln in lines), lines
