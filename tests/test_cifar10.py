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


@pytest.mark.parametrize(
    ("backend", "decoder"), [("dali", "pil"), ("torchvision", "pil"), ("torchvision", "decode_jpeg")]
)
def test_both_backends_decode_the_pngs_to_the_archive_pixels(tmp_path, archive, backend, decoder):
    import torch

    from resnet_repro.config import DataConfig
    from resnet_repro.data.loaders import build_loader
    from resnet_repro.data.splits import list_split

    path, members = archive
    out = tmp_path / "cifar10"
    prepare_cifar10(path, out, progress=False)
    val = list_split(out, "val")
    cfg = DataConfig(
        name="cifar10",
        root=str(out),
        backend=backend,
        decoder=decoder,
        image_size=32,
        crop_ratio=1.0,
        num_threads=1,
    )
    loader = build_loader(
        cfg,
        val.files,
        val.labels,
        train=False,
        batch_size=4,
        seed=0,
        device=torch.device("cpu"),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    images = torch.cat([x for x, _ in loader])  # [0, 1] scale, NCHW, in the order of val.files
    rows = members["test_batch"][b"data"]
    expected = torch.stack(
        [torch.from_numpy(_plane_pixels(rows[int(Path(f).stem)])).permute(2, 0, 1) for f in val.files]
    )
    # eval at 32 px with crop ratio 1 is the identity: the decoded pixels are the archive's
    assert torch.allclose(images * 255, expected.float(), atol=1e-3)


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


def test_an_interrupted_split_resumed_from_another_archive_starts_that_split_afresh(tmp_path, monkeypatch):
    """Images of the first archive were kept beside the second's: the same index in two class
    folders, a split of 10,401 files reported as 7,500. A different archive now restarts the split;
    a finished split of another archive is refused."""
    from resnet_repro.data import cifar10

    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    write_cifar_archive(first, seed=1)
    members = write_cifar_archive(second, seed=2)
    out = tmp_path / "cifar10"
    real_write = cifar10._write_png
    calls = {"n": 0}

    def failing_write(pixels, target):
        calls["n"] += 1
        if calls["n"] == 25:  # midway through train
            raise KeyboardInterrupt
        real_write(pixels, target)

    monkeypatch.setattr(cifar10, "_write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_cifar10(first, out, progress=False)
    monkeypatch.setattr(cifar10, "_write_png", real_write)

    summary = prepare_cifar10(second, out, progress=False)

    assert summary["train"] == {"images": 40, "written": 40, "skipped": False}
    train_rows = np.concatenate([members[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    train_labels = [y for i in range(1, 6) for y in members[f"data_batch_{i}"][b"labels"]]
    found = sorted((out / "train").rglob("*"))
    assert len([p for p in found if p.is_file()]) == 40  # no leftovers, hidden ones included
    for k, label in enumerate(train_labels):
        with Image.open(out / "train" / CLASSES[label] / f"{k:05d}.png") as im:
            assert np.array_equal(np.asarray(im), _plane_pixels(train_rows[k]))

    with pytest.raises(UserError, match=f"{out / 'train'} was prepared from another archive"):
        prepare_cifar10(first, out, progress=False)


def test_a_file_where_a_split_folder_goes_is_one_error(tmp_path, archive):
    path, _ = archive
    out = tmp_path / "cifar10"
    out.mkdir()
    (out / "train").write_text("not a folder\n")
    with pytest.raises(UserError, match=f"{out / 'train'} is a file; expected the train folder"):
        prepare_cifar10(path, out, progress=False)
    assert not (out / ".partial").exists()


def test_missing_damaged_or_incomplete_archives_are_one_line_errors(tmp_path, archive):
    path, _ = archive
    out = tmp_path / "out"
    with pytest.raises(UserError, match="does not exist"):
        prepare_cifar10(tmp_path / "nope.tar.gz", out)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot read the CIFAR-10 archive .*cut.tar.gz"):
        prepare_cifar10(cut, out)
    for name, data in (("notes.tar.gz", b"not an archive"), ("empty.tar.gz", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError) as refused:  # tarfile lists each compression it tried, a line each
            prepare_cifar10(tmp_path / name, out)
        assert len(str(refused.value).splitlines()) == 1 and name in str(refused.value)
    with pytest.raises(UserError, match="is a folder, not the archive"):
        prepare_cifar10(tmp_path, out)
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


# ------------------------------------------------------------------------------------- model.stem=cifar
def _stage1_side(stem: str) -> tuple[int, tuple[int, ...]]:
    import torch

    from resnet_repro.config import ModelConfig
    from resnet_repro.models import build_model

    model = build_model(ModelConfig(name="resnet18", stem=stem), num_classes=10).eval()
    seen = {}

    def record(_m, _i, out) -> None:  # a hook that returns nothing leaves the output alone
        seen["side"] = out.shape[-1]

    model.layer1.register_forward_hook(record)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 32))
    return seen["side"], tuple(out.shape)


def test_cifar_stem_is_a_3x3_stride_1_conv_without_max_pool_keeping_32px_in_stage_1():
    import torch.nn as nn

    from resnet_repro.config import ModelConfig
    from resnet_repro.models import build_model

    model = build_model(ModelConfig(name="resnet18", stem="cifar"), num_classes=10)
    assert (
        model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    )
    assert model.conv1.bias is None and tuple(model.conv1.weight.shape) == (64, 3, 3, 3)
    assert isinstance(model.maxpool, nn.Identity)
    assert _stage1_side("cifar") == (32, (2, 10))
    assert _stage1_side("imagenet") == (8, (2, 10))  # 7x7 stride 2 + max pool: a quarter


def test_unknown_stem_is_refused_naming_the_choices():
    from conftest import compose

    from resnet_repro.config import to_dataclass, validate

    cfg = to_dataclass(compose(["model.stem=cifar100"]))
    with pytest.raises(UserError, match=r"model.stem='cifar100' is not one of imagenet, cifar"):
        validate(cfg)


# ---------------------------------------------------------------------------- experiment=cifar10_resnet18
def test_cifar10_resnet18_preset_is_the_common_recipe(tmp_path):
    from conftest import compose

    from resnet_repro.config import per_device_batch, to_dataclass, validate
    from resnet_repro.training.optim import peak_lr

    cfg = to_dataclass(compose(["experiment=cifar10_resnet18", f"data.root={tmp_path}"]))
    validate(cfg)
    assert (cfg.model.name, cfg.model.stem) == ("resnet18", "cifar")
    assert (cfg.data.name, cfg.data.image_size, cfg.data.crop_ratio) == ("cifar10", 32, 1.0)
    assert (cfg.data.augment.pad_crop, cfg.data.augment.hflip, cfg.data.augment.random_resized_crop) == (
        4,
        True,
        False,
    )
    assert cfg.data.normalization == "computed"
    batch = per_device_batch(cfg.trainer, 1)
    assert batch == 128 and peak_lr(cfg.optim, batch) == pytest.approx(0.1)
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.9, 5e-4)
    assert (cfg.schedule.name, cfg.schedule.final_lr_factor, cfg.trainer.epochs) == ("cosine", 0.0, 200)
    assert cfg.stabilizer.warmup_epochs == 0 and cfg.stabilizer.max_norm is None


@pytest.mark.slow
def test_cifar10_resnet18_trains_a_few_steps_on_a_prepared_archive(tmp_path, archive):
    import subprocess
    import sys

    path, _ = archive
    root = tmp_path / "cifar10"
    prepare_cifar10(path, root, progress=False)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnet_repro",
            "train",
            "experiment=cifar10_resnet18",
            f"data.root={root}",
            f"hydra.run.dir={run_dir}",
            "trainer.epochs=1",
            "trainer.max_steps_per_epoch=2",
            "trainer.global_batch=8",
            "trainer.device=cpu",
            "data.num_threads=1",
            "logging.progress=false",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows if r["epoch"] == 1 and r["split"] in ("train", "val")] == [
        "train",
        "val",
    ]
    val = next(r for r in rows if r["split"] == "val")
    assert val["num_samples"] == TEST_IMAGES  # every test image evaluated once
    config = (run_dir / "config.yaml").read_text()
    assert "stem: cifar" in config and "name: cifar10" in config
