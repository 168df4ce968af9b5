"""CIFAR-10: the official Python archive to PNG folders, the CIFAR stem, the cifar10_resnet18 preset.

The tests write a small archive in the official format themselves: pickled (protocol 2, bytes keys,
as the Python 2 originals) batch dicts with b"data" uint8 [N, 3072] in R, G, B planes and b"labels".
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_repro.config import UserError
from resnet_repro.data.cifar10 import prepare_cifar10

CLASSES = ["airplane", "bird", "cat"]  # alphabetical, as the official ten are
TRAIN_BATCHES, PER_BATCH, TEST_IMAGES = 5, 8, 12


def _batch(rng: np.random.Generator, n: int, num_classes: int) -> dict[bytes, object]:
    labels = [i % num_classes for i in range(n)]  # every class in every batch
    return {
        b"batch_label": b"training batch",
        b"labels": labels,
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar_archive(path: Path, *, seed: int = 0, skip: str | None = None) -> dict[str, dict]:
    """An archive in the official layout; returns the batch dicts by member name."""
    rng = np.random.default_rng(seed)
    members: dict[str, dict] = {
        "batches.meta": {
            b"label_names": [c.encode() for c in CLASSES],
            b"num_cases_per_batch": PER_BATCH,
            b"num_vis": 3072,
        }
    }
    for i in range(1, TRAIN_BATCHES + 1):
        members[f"data_batch_{i}"] = _batch(rng, PER_BATCH, len(CLASSES))
    members["test_batch"] = _batch(rng, TEST_IMAGES, len(CLASSES))
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            if name == skip:
                continue
            # the official pickles name numpy 1's module (numpy 2 writes numpy._core)
            data = pickle.dumps(obj, protocol=2).replace(
                b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"
            )
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return members


def _plane_pixels(row: np.ndarray) -> np.ndarray:
    """The official row layout decoded by hand: 1024 R values, 1024 G, 1024 B, each row-major 32x32."""
    r, g, b = row[:1024], row[1024:2048], row[2048:]
    return np.stack([c.reshape(32, 32) for c in (r, g, b)], axis=-1)


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    path = tmp_path / "cifar-10-python.tar.gz"
    return path, write_cifar_archive(path)


def test_prepare_cifar10_writes_class_folders_counts_and_exact_pixels(tmp_path, archive):
    path, members = archive
    with tarfile.open(path) as tar:  # the archive is in numpy 1's pickle dialect, as the official one
        assert b"cnumpy.core.multiarray\n" in tar.extractfile("cifar-10-batches-py/data_batch_1").read()
    out = tmp_path / "cifar10"
    summary = prepare_cifar10(path, out, progress=False)

    assert summary["classes"] == CLASSES
    assert summary["train"] == {"images": TRAIN_BATCHES * PER_BATCH, "written": 40, "skipped": False}
    assert summary["val"]["images"] == TEST_IMAGES
    for split in ("train", "val"):
        assert sorted(p.name for p in (out / split).iterdir()) == CLASSES
    train_labels = [y for i in range(1, 6) for y in members[f"data_batch_{i}"][b"labels"]]
    for c, name in enumerate(CLASSES):
        assert len(list((out / "train" / name).glob("*.png"))) == train_labels.count(c)
        assert len(list((out / "val" / name).glob("*.png"))) == TEST_IMAGES // len(CLASSES)
    assert not (out / ".partial").exists()

    # byte-exact round trip: image k of the split is the k-th row of the concatenated batches
    train_rows = np.concatenate([members[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    for k in (0, 9, 17, 39):  # in batch 1, 2, 3 and 5
        png = out / "train" / CLASSES[train_labels[k]] / f"{k:05d}.png"
        with Image.open(png) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
            assert np.array_equal(np.asarray(im), _plane_pixels(train_rows[k]))
    test = members["test_batch"]
    k = 7
    with Image.open(out / "val" / CLASSES[test[b"labels"][k]] / f"{k:05d}.png") as im:
        assert np.array_equal(np.asarray(im), _plane_pixels(test[b"data"][k]))


def test_prepared_cifar10_is_listed_by_the_data_pipeline_with_official_labels(tmp_path, archive):
    from resnet_repro.data.splits import list_split

    path, members = archive
    out = tmp_path / "cifar10"
    prepare_cifar10(path, out, progress=False)
    train = list_split(out, "train")
    val = list_split(out, "val", classes=train.classes)
    assert len(train) == 40 and len(val) == TEST_IMAGES
    assert all(f.endswith(".png") for f in train.files)
    # the label of val image k is its official label
    by_index = {int(Path(f).stem): y for f, y in zip(val.files, val.labels, strict=True)}
    assert [by_index[k] for k in range(TEST_IMAGES)] == members["test_batch"][b"labels"]


def test_rerun_skips_finished_splits_and_resumes_an_interrupted_one(tmp_path, archive, monkeypatch):
    from resnet_repro.data import cifar10

    path, _ = archive
    out = tmp_path / "cifar10"
    real_write = cifar10._write_png
    calls = {"n": 0}

    def failing_write(pixels, target):
        calls["n"] += 1
        if calls["n"] == 45:  # after all 40 train images and 4 val images
            raise KeyboardInterrupt
        real_write(pixels, target)

    monkeypatch.setattr(cifar10, "_write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_cifar10(path, out, progress=False)
    assert (out / "train").is_dir() and not (out / "val").exists()  # val is not complete: not in place
    monkeypatch.setattr(cifar10, "_write_png", real_write)
    summary = prepare_cifar10(path, out, progress=False)
    assert summary["train"]["skipped"] and summary["train"]["images"] == 40
    assert summary["val"] == {"images": TEST_IMAGES, "written": TEST_IMAGES - 4, "skipped": False}
    again = prepare_cifar10(path, out, progress=False)
    assert again["val"] == {"images": TEST_IMAGES, "written": 0, "skipped": True}


def test_missing_damaged_or_incomplete_archives_are_one_line_errors(tmp_path, archive):
    path, _ = archive
    out = tmp_path / "out"
    with pytest.raises(UserError, match="does not exist"):
        prepare_cifar10(tmp_path / "nope.tar.gz", out)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot read the CIFAR-10 archive .*cut.tar.gz"):
        prepare_cifar10(cut, out)
    partial = tmp_path / "no_test.tar.gz"
    write_cifar_archive(partial, skip="test_batch")
    with pytest.raises(UserError, match="no cifar-10-batches-py/test_batch"):
        prepare_cifar10(partial, out)
    assert not out.exists()  # nothing written before every batch parsed


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.tar.gz"
    write_cifar_archive(path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    data = pickle.dumps({b"label_names": [b"a"], b"x": Evil()}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:  # replace the archive by one with a hostile meta file
        for name in ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
            payload = data if name == "batches.meta" else pickle.dumps({}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(UserError, match=r"refusing to build (__builtin__|builtins)\.print"):
        prepare_cifar10(path, tmp_path / "out")


def test_prepare_cifar10_command_prints_one_json_line(tmp_path, archive, capsys):
    from resnet_repro.cli import main

    path, _ = archive
    main(["prepare-cifar10", "--archive", str(path), "--out", str(tmp_path / "c"), "--no-progress"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["train"]["images"] == 40 and record["classes"] == CLASSES
    with pytest.raises(SystemExit) as e:
        main(["prepare-cifar10", "--archive", str(tmp_path / "missing.tar.gz"), "--out", str(tmp_path / "d")])
    assert e.value.code == 2
    assert "does not exist" in capsys.readouterr().err
