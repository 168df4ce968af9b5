"""The embedded digits demo dataset: deterministic, complete, stratified, atomic."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from resnet_repro.data.demo import build_demo_dataset, is_built

CLASSES = [str(d) for d in range(10)]


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    # the images and the marker; not the stats files that training runs add beside the data
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".resnet_repro_stats" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def _images(root: Path, split: str) -> list[Path]:
    return sorted((root / split).glob("*/*.JPEG"))


def test_demo_dataset_is_byte_identical_across_builds(demo_root, tmp_path):
    second = build_demo_dataset(tmp_path / "again" / "digits")
    assert second == tmp_path / "again" / "digits"
    assert _tree_digest(second) == _tree_digest(demo_root)
    # the build wrote into a temporary sibling and renamed it: nothing else is left beside it
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["digits"]


def test_demo_dataset_has_all_1797_digits_in_ten_class_folders_per_split(demo_root):
    for split in ("train", "val"):
        folders = sorted(p.name for p in (demo_root / split).iterdir() if p.is_dir())
        assert folders == CLASSES, split
    train, val = _images(demo_root, "train"), _images(demo_root, "val")
    assert len(train) + len(val) == 1797
    assert len(val) == 360  # 20 % of 1797, rounded up by scikit-learn


def test_demo_splits_are_disjoint_and_each_image_keeps_its_digit_label(demo_root):
    from sklearn.datasets import load_digits

    target = load_digits().target
    seen: set[int] = set()
    for split in ("train", "val"):
        for path in _images(demo_root, split):
            index = int(path.stem)
            assert index not in seen, f"{path} appears in both splits"
            seen.add(index)
            assert int(path.parent.name) == target[index], path
    assert seen == set(range(1797))


def test_demo_val_split_is_stratified(demo_root):
    for digit in CLASSES:
        n_val = len(list((demo_root / "val" / digit).glob("*.JPEG")))
        n_train = len(list((demo_root / "train" / digit).glob("*.JPEG")))
        assert 30 <= n_val <= 42, (digit, n_val)
        assert abs(n_val / (n_val + n_train) - 0.2) < 0.01, (digit, n_val, n_train)


def test_demo_images_are_32x32_rgb_jpegs(demo_root):
    paths = _images(demo_root, "train") + _images(demo_root, "val")
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "JPEG", path
            assert img.mode == "RGB", path
            assert img.size == (32, 32), path


def test_demo_digits_are_dark_ink_on_white_paper(demo_root):
    import numpy as np

    with Image.open(_images(demo_root, "train")[0]) as img:
        pixels = np.asarray(img, dtype=np.float32)
    # the corners of a digit scan are blank paper
    assert pixels[0, 0].min() > 200 and pixels[-1, -1].min() > 200
    assert pixels.min() < 100


def test_complete_demo_dataset_is_reused_not_rebuilt(demo_root):
    assert is_built(demo_root)
    before = {p: p.stat().st_mtime_ns for p in demo_root.rglob("*") if p.is_file()}
    assert build_demo_dataset(demo_root) == demo_root
    after = {p: p.stat().st_mtime_ns for p in demo_root.rglob("*") if p.is_file()}
    assert after == before


def test_a_folder_that_is_not_the_demo_dataset_is_refused_and_left_untouched(tmp_path):
    import pytest

    from resnet_repro.config import UserError

    root = tmp_path / "mydata"
    (root / "important").mkdir(parents=True)
    (root / "important" / "thesis.txt").write_text("years of work")
    with pytest.raises(UserError, match=f"{root} exists and is not the demo dataset"):
        build_demo_dataset(root)
    assert (root / "important" / "thesis.txt").read_text() == "years of work"
    assert not list(tmp_path.glob(".mydata-*"))  # no temporary folder left beside it


def test_an_empty_folder_becomes_the_demo_dataset(demo_root, tmp_path):
    root = tmp_path / "digits"
    root.mkdir()
    assert build_demo_dataset(root) == root
    assert _tree_digest(root) == _tree_digest(demo_root)


def test_the_digits_cache_folder_is_where_the_composed_config_puts_data_root(tmp_path, monkeypatch):
    # the oracle is Hydra's composition of conf/data/demo.yaml, with and without RESNET_REPRO_CACHE
    from conftest import compose

    from resnet_repro.data.demo import default_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for cache in (str(tmp_path / "cache"), None):
        if cache is None:
            monkeypatch.delenv("RESNET_REPRO_CACHE", raising=False)
        else:
            monkeypatch.setenv("RESNET_REPRO_CACHE", cache)
        assert default_root() == Path(compose([]).data.root)
