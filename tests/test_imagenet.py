"""ImageNet preparation from (fake) official archives, and verification of a prepared folder.

The archives are built here with the official structure: a train tar of per-class `<wnid>.tar`, a flat
validation tar of ILSVRC2012_val_<8 digits>.JPEG, and the devkit tar.gz with data/meta.mat (a `synsets`
struct array, written with scipy.io.savemat the way torchvision's parser reads it) and the ground truth.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from resnet_repro.config import UserError
from resnet_repro.data import imagenet_prepare, imagenet_verify
from resnet_repro.data.imagenet_prepare import prepare_imagenet
from resnet_repro.data.imagenet_verify import verify_data
from resnet_repro.data.splits import list_split

# ILSVRC2012_IDs deliberately not in sorted-wnid order: id 1 is the last wnid, as in the real devkit
# (id 1 is n02119789 there), so a label read as "position in sorted order" would be caught.
ID_TO_WNID = {1: "n01484850", 2: "n01440764", 3: "n01443537"}
WNIDS = sorted(ID_TO_WNID.values())
TRAIN_PER_CLASS = {"n01440764": 3, "n01443537": 2, "n01484850": 4}
# Ground-truth ILSVRC2012_ID of validation images 1..7
VAL_IDS = [1, 2, 3, 2, 1, 3, 3]


def _jpeg(seed: int, size: tuple[int, int] = (8, 6)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            _add(tar, name, data)
    return buf.getvalue()


def _train_images() -> dict[str, dict[str, bytes]]:
    return {
        wnid: {f"{wnid}_{k}.JPEG": _jpeg(10 * c + k) for k in range(n)}
        for c, (wnid, n) in enumerate(TRAIN_PER_CLASS.items())
    }


def _val_images() -> dict[str, bytes]:
    return {f"ILSVRC2012_val_{i:08d}.JPEG": _jpeg(100 + i) for i in range(1, len(VAL_IDS) + 1)}


def _meta_mat() -> bytes:
    import scipy.io

    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    leaf = np.zeros((0,), np.uint8)
    rows = [(i, w, f"words {w}", f"gloss {w}", 0, leaf, 0, 3) for i, w in ID_TO_WNID.items()]
    # An inner node (num_children > 0), as the real meta.mat has 860 of them: it is not a class
    rows.append((1001, "n00001740", "entity", "that which exists", 3, np.array([1, 2, 3], np.uint8), 2, 9))
    synsets = np.empty((len(rows),), dtype=[(f, object) for f in fields])
    for k, row in enumerate(rows):
        synsets[k] = row
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def _ground_truth_txt() -> str:
    return "".join(f"{i}\n" for i in VAL_IDS)


def _expected_val() -> dict[str, str]:
    return {f"ILSVRC2012_val_{i:08d}.JPEG": ID_TO_WNID[gt] for i, gt in enumerate(VAL_IDS, start=1)}


@pytest.fixture
def archives(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "downloads"
    src.mkdir()
    train = {f"{wnid}.tar": _tar_bytes(images) for wnid, images in _train_images().items()}
    (src / "ILSVRC2012_img_train.tar").write_bytes(_tar_bytes(train))
    (src / "ILSVRC2012_img_val.tar").write_bytes(_tar_bytes(_val_images()))
    devkit = {
        "ILSVRC2012_devkit_t12/data/meta.mat": _meta_mat(),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": _ground_truth_txt().encode(),
    }
    (src / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(_tar_bytes(devkit, mode="w:gz"))
    return {
        "train_tar": src / "ILSVRC2012_img_train.tar",
        "val_tar": src / "ILSVRC2012_img_val.tar",
        "devkit": src / "ILSVRC2012_devkit_t12.tar.gz",
    }


def _tree(root: Path) -> dict[str, dict[str, bytes]]:
    return {d.name: {f.name: f.read_bytes() for f in sorted(d.iterdir())} for d in sorted(root.iterdir())}


def _assert_prepared(out: Path) -> None:
    assert _tree(out / "train") == _train_images()
    val = _tree(out / "val")
    assert {name: wnid for wnid, files in val.items() for name in files} == _expected_val()
    assert all(data == _val_images()[name] for files in val.values() for name, data in files.items())
    assert not (out / imagenet_prepare.PARTIAL_DIR).exists()


def test_prepare_from_official_archives_labels_val_by_ground_truth(tmp_path, archives):
    out = tmp_path / "imagenet"
    summary = prepare_imagenet(out, **archives, progress=False)

    _assert_prepared(out)
    assert summary["train"] == {"classes": 3, "images": 9, "extracted_classes": 3, "skipped_classes": 0}
    assert summary["val"]["images"] == len(VAL_IDS)
    # Class index = position in sorted wnids, the same for train and val
    train = list_split(out, "train")
    val = list_split(out, "val", classes=train.classes)
    assert train.classes == tuple(WNIDS)
    for path, label in zip(val.files, val.labels, strict=True):
        assert WNIDS[label] == _expected_val()[Path(path).name]

    # A second run changes nothing
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = prepare_imagenet(out, **archives, progress=False)
    assert again["train"]["skipped_classes"] == 3 and again["val"]["skipped"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes


def test_a_separate_ground_truth_file_labels_val_as_the_devkits_own(tmp_path, archives):
    """--val-ground-truth (documented) crashed on every call: ValueError: too many values to unpack."""
    truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text(_ground_truth_txt())
    out = tmp_path / "imagenet"
    prepare_imagenet(out, **archives, val_ground_truth=truth, progress=False)
    _assert_prepared(out)


def test_a_cut_off_devkit_is_one_error_naming_it(tmp_path, archives):
    cut = tmp_path / "devkit_cut.tar.gz"
    data = archives["devkit"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=f"cannot read the devkit archive {cut}.*(EOFError|truncated|ended)"):
        prepare_imagenet(
            tmp_path / "out", train_tar=None, val_tar=archives["val_tar"], devkit=cut, progress=False
        )


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_file_where_a_split_folder_goes_is_one_error_before_any_extraction(tmp_path, archives, split):
    out = tmp_path / "imagenet"
    out.mkdir()
    (out / split).write_text("not a folder\n")
    with pytest.raises(UserError, match=f"{out / split} is a file; expected the {split} folder"):
        prepare_imagenet(out, **archives, progress=False)
    assert not (out / imagenet_prepare.PARTIAL_DIR).exists()  # nothing extracted first


def test_a_file_that_is_no_tar_archive_is_one_line(tmp_path):
    not_tar = tmp_path / "LOC_val_solution.csv"
    not_tar.write_text("ImageId,PredictionString\n")
    with pytest.raises(UserError) as info:
        prepare_imagenet(tmp_path / "out", train_tar=not_tar, val_tar=None, devkit=None, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(not_tar) in message and "ILSVRC2012_img_train.tar" in message


def test_interrupted_prepare_resumes_without_reextracting(tmp_path, archives, monkeypatch):
    out = tmp_path / "imagenet"
    real = imagenet_prepare._extract_class_tar
    calls: list[Path] = []

    def killed_during_second_class(fileobj, archive, dest):
        calls.append(dest)
        if len(calls) == 2:
            real(fileobj, archive, dest)  # every file of the class written, folder not yet renamed
            raise KeyboardInterrupt("simulated kill")
        return real(fileobj, archive, dest)

    monkeypatch.setattr(imagenet_prepare, "_extract_class_tar", killed_during_second_class)
    with pytest.raises(KeyboardInterrupt):
        prepare_imagenet(out, **archives, progress=False)
    # Only the finished class looks complete; the interrupted one is still under .partial
    assert [d.name for d in (out / "train").iterdir()] == [WNIDS[0]]
    assert not (out / "val").exists()
    first_class = {p: p.stat().st_mtime_ns for p in (out / "train" / WNIDS[0]).iterdir()}
    partial_files = {p.name: p.stat().st_mtime_ns for p in calls[1].iterdir()}
    assert len(partial_files) == TRAIN_PER_CLASS[WNIDS[1]]

    calls.clear()
    written: list[Path] = []
    real_write = imagenet_prepare._write_atomic
    monkeypatch.setattr(imagenet_prepare, "_extract_class_tar", lambda *a: calls.append(a[2]) or real(*a))
    monkeypatch.setattr(
        imagenet_prepare, "_write_atomic", lambda src, t: written.append(t) or real_write(src, t)
    )
    summary = prepare_imagenet(out, **archives, progress=False)

    _assert_prepared(out)
    assert [d.name for d in calls] == WNIDS[1:]  # the finished class was not opened again
    assert summary["train"]["skipped_classes"] == 1 and summary["train"]["extracted_classes"] == 2
    assert {p: p.stat().st_mtime_ns for p in (out / "train" / WNIDS[0]).iterdir()} == first_class
    # Files of the interrupted class were already complete: none was written twice
    assert {p.name for p in written} & set(partial_files) == set()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "train" / WNIDS[1]).iterdir()} == partial_files


def test_a_truncated_val_archive_is_an_error_and_a_complete_one_finishes_the_split(tmp_path, archives):
    out = tmp_path / "imagenet"
    images = _val_images()
    first_half = dict(list(images.items())[: len(images) // 2])
    short = tmp_path / "short_val.tar"
    short.write_bytes(_tar_bytes(first_half))
    args = dict(train_tar=None, devkit=archives["devkit"], progress=False)
    with pytest.raises(UserError, match=f"lacks {len(images) - len(first_half)} of the {len(images)}"):
        prepare_imagenet(out, val_tar=short, **args)
    assert not (out / "val").exists()  # not mistaken for a complete split
    summary = prepare_imagenet(out, val_tar=archives["val_tar"], **args)
    assert summary["val"]["images"] == len(images) and not summary["val"]["skipped"]


def test_a_cut_off_train_archive_is_one_error_naming_it(tmp_path, archives):
    data = archives["train_tar"].read_bytes()
    cut = tmp_path / "cut_train.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])  # ends inside a member's data
    with pytest.raises(UserError, match="cut_train.tar is damaged or truncated"):
        prepare_imagenet(tmp_path / "imagenet", train_tar=cut, val_tar=None, devkit=None, progress=False)


def test_a_train_archive_cut_between_two_class_tars_is_one_error_not_fewer_classes(tmp_path, archives):
    # a download that stopped at a member boundary reads as a complete, smaller archive: it
    # "succeeded" with fewer classes; only tar's end-of-archive marker (zero blocks) tells them apart
    with tarfile.open(archives["train_tar"]) as tar:
        members = tar.getmembers()
    end_of_second = members[1].offset_data + -(-members[1].size // 512) * 512
    cut = tmp_path / "cut_train.tar"
    cut.write_bytes(archives["train_tar"].read_bytes()[:end_of_second])
    out = tmp_path / "imagenet"
    with pytest.raises(
        UserError, match=r"cut_train\.tar ends after 2 members .* without tar's end-of-archive"
    ):
        prepare_imagenet(out, train_tar=cut, val_tar=None, devkit=None, progress=False)
    assert not (out / "train").exists()


@pytest.mark.parametrize("which", ["loc_val_solution", "val_ground_truth"])
def test_a_binary_label_file_is_one_error_naming_it(tmp_path, archives, which):
    flat = tmp_path / "val"
    flat.mkdir()
    for name, data in _val_images().items():
        (flat / name).write_bytes(data)
    labels = tmp_path / f"{which}.bin"
    labels.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    given = {"loc_val_solution": labels} if which == "loc_val_solution" else {"val_ground_truth": labels}
    devkit = archives["devkit"] if which == "val_ground_truth" else None
    with pytest.raises(UserError, match=f"{labels} is not a text file"):
        prepare_imagenet(
            tmp_path / "imagenet",
            train_tar=None,
            val_tar=None,
            devkit=devkit,
            val_dir=flat,
            progress=False,
            **given,
        )


def test_interrupted_val_extraction_resumes(tmp_path, archives, monkeypatch):
    out = tmp_path / "imagenet"
    args = dict(train_tar=None, val_tar=archives["val_tar"], devkit=archives["devkit"], progress=False)
    real_write = imagenet_prepare._write_atomic
    written: list[str] = []

    def killed_at_third_file(src, target):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill")
        real_write(src, target)
        written.append(target.name)

    monkeypatch.setattr(imagenet_prepare, "_write_atomic", killed_at_third_file)
    with pytest.raises(KeyboardInterrupt):
        prepare_imagenet(out, **args)
    assert not (out / "val").exists()  # the split appears only when complete
    first = list(written)

    written.clear()
    monkeypatch.setattr(
        imagenet_prepare, "_write_atomic", lambda s, t: written.append(t.name) or real_write(s, t)
    )
    prepare_imagenet(out, **args)

    val = _tree(out / "val")
    assert {name: wnid for wnid, files in val.items() for name in files} == _expected_val()
    assert sorted(first + written) == sorted(_val_images())  # each file written exactly once


def test_val_images_left_under_another_label_by_an_earlier_run_are_not_kept_twice(tmp_path, archives):
    out = tmp_path / "imagenet"
    name = sorted(_val_images())[0]
    wrong = next(w for w in WNIDS if w != _expected_val()[name])
    stale = out / imagenet_prepare.PARTIAL_DIR / "val" / wrong / name
    stale.parent.mkdir(parents=True)
    stale.write_bytes(_val_images()[name])  # filed under another class by a run with other labels
    prepare_imagenet(
        out, train_tar=None, val_tar=archives["val_tar"], devkit=archives["devkit"], progress=False
    )
    val = _tree(out / "val")
    assert {n: w for w, files in val.items() for n in files} == _expected_val()
    assert sum(len(files) for files in val.values()) == len(_val_images())


@pytest.mark.parametrize("bom", ["", "\ufeff"], ids=["plain", "byte_order_mark"])
def test_val_folder_with_loc_val_solution_csv(tmp_path, bom):
    flat = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    flat.mkdir(parents=True)
    for name, data in _val_images().items():
        (flat / name).write_bytes(data)
    csv_path = tmp_path / "LOC_val_solution.csv"
    rows = [
        f"{name[: -len('.JPEG')]},{wnid} 1 2 30 40 {wnid} 5 6 7 8"
        for name, wnid in reversed(list(_expected_val().items()))  # Kaggle's rows are not in order
    ]
    csv_path.write_text(bom + "ImageId,PredictionString\n" + "\n".join(rows) + "\n")  # BOM: Excel's
    out = tmp_path / "imagenet"

    summary = prepare_imagenet(
        out,
        train_tar=None,
        val_tar=None,
        devkit=None,
        val_dir=flat,
        loc_val_solution=csv_path,
        progress=False,
    )

    val = _tree(out / "val")
    assert {name: wnid for wnid, files in val.items() for name in files} == _expected_val()
    assert summary["val"]["classes"] == 3 and summary["train"] is None
    assert sorted(p.name for p in flat.iterdir()) == sorted(_val_images())  # the input is left as it was


def test_devkit_and_loc_csv_must_agree(tmp_path, archives):
    csv_path = tmp_path / "LOC_val_solution.csv"
    wrong = {**_expected_val(), "ILSVRC2012_val_00000001.JPEG": "n01440764"}
    csv_path.write_text(
        "ImageId,PredictionString\n" + "".join(f"{n[:-5]},{w} 0 0 1 1\n" for n, w in wrong.items())
    )
    with pytest.raises(UserError, match="disagree on 1 validation images, e.g. ILSVRC2012_val_00000001"):
        prepare_imagenet(
            tmp_path / "out",
            train_tar=None,
            val_tar=archives["val_tar"],
            devkit=archives["devkit"],
            loc_val_solution=csv_path,
            progress=False,
        )


@pytest.mark.parametrize("name", ["../evil.JPEG", "/tmp/evil.JPEG", "sub/../../evil.JPEG"])
def test_prepare_refuses_path_traversal_in_archives(tmp_path, name):
    evil_class = _tar_bytes({name: _jpeg(0)})
    train_tar = tmp_path / "train.tar"
    train_tar.write_bytes(_tar_bytes({"n01440764.tar": evil_class}))
    out = tmp_path / "deep" / "out"

    with pytest.raises(UserError, match="points outside the extraction folder"):
        prepare_imagenet(out, train_tar=train_tar, val_tar=None, devkit=None, progress=False)
    assert not list(tmp_path.rglob("evil.JPEG"))
    assert not (out / "train" / "n01440764").exists()


def test_prepare_refuses_class_names_that_leave_the_val_folder(tmp_path, archives):
    csv_path = tmp_path / "LOC_val_solution.csv"
    csv_path.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,../../evil 0 0 1 1\n")
    with pytest.raises(UserError, match="cannot be folder names: ../../evil"):
        prepare_imagenet(
            tmp_path / "out",
            train_tar=None,
            val_tar=archives["val_tar"],
            devkit=None,
            loc_val_solution=csv_path,
        )
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_links_in_archives(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("ILSVRC2012_val_00000001.JPEG")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    val_tar = tmp_path / "val.tar"
    val_tar.write_bytes(buf.getvalue())
    csv_path = tmp_path / "loc.csv"
    csv_path.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 0 0 1 1\n")
    with pytest.raises(UserError, match="is a link or special file"):
        prepare_imagenet(
            tmp_path / "out", train_tar=None, val_tar=val_tar, devkit=None, loc_val_solution=csv_path
        )
    assert not list((tmp_path / "out").rglob("ILSVRC2012_val_*"))


# --------------------------------------------------------------------------------------------------
# Unusual files through DALI, and verify_data
# --------------------------------------------------------------------------------------------------

S = 32  # image side; the eval transform with crop_ratio 1 then neither resizes nor crops


def _smooth(channels: int, seed: int) -> np.ndarray:
    """Smooth random content: JPEG keeps it within a few levels, while a wrong colour convention
    (inverted CMYK, swapped channels) moves pixels by tens of levels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S] / (S - 1)
    planes = []
    for _ in range(channels):
        a, b, c = rng.uniform(0, 1, 3)
        planes.append(255 * (a * xx + (1 - a) * yy) * b + 255 * c * (1 - b) * 0.5)
    return np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)


def _write_unusual(folder: Path) -> dict[str, Path]:
    """RGB (the control), CMYK (PIL writes Adobe-inverted CMYK with an APP14 marker), grayscale, and
    PNG data in a file named .JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"{k}.JPEG" for k in ("rgb", "cmyk", "gray", "png")}
    Image.fromarray(_smooth(3, 0)).save(paths["rgb"], format="JPEG", quality=95)
    Image.fromarray(_smooth(4, 1), mode="CMYK").save(paths["cmyk"], format="JPEG", quality=95)
    Image.fromarray(_smooth(1, 2)[..., 0], mode="L").save(paths["gray"], format="JPEG", quality=95)
    Image.fromarray(_smooth(3, 3)).save(paths["png"], format="PNG")
    return paths


def _dali_eval_pixels(paths: list[Path]) -> list[np.ndarray]:
    """Images through the DALI evaluation pipeline as HWC 0-255 floats."""
    pytest.importorskip("nvidia.dali")
    from resnet_repro.data.dali import DaliLoader, Transform

    # mean 0 and std 1/255 on the [0, 1] scale: DALI subtracts 0 and divides by 1 on its 0-255 scale
    t = Transform(train=False, image_size=S, crop_ratio=1.0, mean=(0.0,) * 3, std=(1 / 255,) * 3)
    loader = DaliLoader(
        [str(p) for p in paths],
        list(range(len(paths))),
        t,
        batch_size=len(paths),
        num_threads=1,
        seed=0,
        device=torch.device("cpu"),
        prefetch=1,
    )
    (images, labels), *_ = list(loader)
    assert labels.tolist() == list(range(len(paths)))
    return [x.permute(1, 2, 0).numpy() for x in images]


def test_dali_eval_pipeline_decodes_cmyk_grayscale_and_png_as_rgb(tmp_path):
    paths = _write_unusual(tmp_path / "images")
    names = list(paths)
    for name, got in zip(names, _dali_eval_pixels(list(paths.values())), strict=True):
        with Image.open(paths[name]) as im:
            want = np.asarray(im.convert("RGB"), dtype=np.float32)
        diff = np.abs(got - want)
        # Same libjpeg-turbo IDCT in PIL and DALI: RGB, grayscale and PNG decode identically (0 seen);
        # CMYK -> RGB rounds differently (max 1 level seen). 2 levels leaves room for library updates
        # while an inverted-CMYK or channel-order mistake is off by tens of levels.
        assert diff.max() <= 2, f"{name}: DALI differs from PIL convert('RGB') by up to {diff.max()}"
        assert diff.mean() <= 0.5, name


def _strip_adobe_marker(data: bytes) -> bytes:
    at = data.index(b"\xff\xee")  # APP14 "Adobe"
    length = int.from_bytes(data[at + 2 : at + 4], "big")
    return data[:at] + data[at + 2 + length :]


def test_cmyk_jpeg_without_adobe_marker_decodes_inverted_in_dali(tmp_path):
    """Characterises a DALI/PIL disagreement verify_data warns about: for a CMYK JPEG with no Adobe
    APP14 marker, PIL takes the channels as plain CMYK while DALI (nvImageCodec) still treats them as
    Adobe-inverted, like Photoshop's files. With the marker (every Photoshop file) they agree."""
    path = tmp_path / "data" / "train" / "c" / "cmyk_no_adobe.JPEG"
    path.parent.mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(_smooth(4, 1), mode="CMYK").save(buf, format="JPEG", quality=95)
    path.write_bytes(_strip_adobe_marker(buf.getvalue()))

    (got,) = _dali_eval_pixels([path])
    with Image.open(path) as im:
        assert "adobe" not in im.info
        plain = np.asarray(im.convert("RGB"), dtype=np.float32)
        inverted = Image.fromarray(255 - np.asarray(im), mode="CMYK").convert("RGB")
    assert np.abs(got - np.asarray(inverted, dtype=np.float32)).max() <= 2
    assert np.abs(got - plain).mean() > 20

    summary = verify_data(
        tmp_path / "data", expect_imagenet=False, num_threads=1, progress=False, summary_path=None
    )
    (issue,) = summary["issues"]
    assert issue["kind"] == "cmyk" and "no Adobe marker" in issue["detail"]


def test_verify_data_reports_unusual_and_truncated_files(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root, "train", {"a": 20, "b": 20}, sizes=[(S, S)])
    make_image_folder(root, "val", {"a": 2, "b": 2}, sizes=[(S, S)])
    unusual = _write_unusual(root / "train" / "b")
    unusual.pop("rgb").unlink()
    truncated = root / "train" / "a" / "7.JPEG"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    summary_path = tmp_path / "reports" / "verify.json"

    summary = verify_data(
        root, expect_imagenet=False, num_threads=2, progress=False, summary_path=summary_path
    )

    by_path = {(i["path"], i["kind"]): i["detail"] for i in summary["issues"]}
    assert set(by_path) == {
        (str(truncated), "truncated"),
        (str(unusual["png"]), "wrong_format"),
        (str(unusual["cmyk"]), "cmyk"),
        (str(unusual["gray"]), "grayscale"),
    }
    assert "not a JPEG: PNG data" in by_path[str(unusual["png"]), "wrong_format"]
    assert by_path[str(unusual["cmyk"]), "cmyk"].startswith("mode CMYK, Adobe marker")
    assert by_path[str(unusual["gray"]), "grayscale"] == "mode L"
    assert "DALI:" in by_path[str(truncated), "truncated"]  # and the good files of its batch pass
    assert summary["issue_counts"] == {"truncated": 1, "wrong_format": 1, "cmyk": 1, "grayscale": 1}
    assert not summary["ok"] and summary["problems"] == []
    assert summary["splits"]["train"]["per_class"] == {"a": 20, "b": 23}
    assert summary["images"] == 47
    # train and val speeds apart, each from its own images
    assert set(summary["images_per_s"]) == {"train", "val"} and min(summary["images_per_s"].values()) > 0
    for split in ("train", "val"):
        s = summary["splits"][split]
        assert s["images_per_s"] == summary["images_per_s"][split]
        assert s["images_per_s"] == pytest.approx(s["images"] / s["seconds"], rel=1e-3)
    assert json.loads(summary_path.read_text()) == summary

    # Without decoding, the missing end-of-image marker still gives the truncated file away
    quick = verify_data(
        root, expect_imagenet=False, num_threads=2, decode=False, progress=False, summary_path=None
    )
    assert [(i["path"], i["kind"]) for i in quick["issues"] if i["kind"] in imagenet_verify.ERROR_KINDS] == [
        (str(truncated), "truncated")
    ]


def test_verify_data_checks_imagenet_counts(tmp_path):
    make_image_folder(tmp_path, "train", {"n01440764": 2, "n01443537": 1, "junk": 1}, sizes=[(8, 8)])
    make_image_folder(tmp_path, "val", {"n01440764": 1, "n09999999": 1}, sizes=[(8, 8)])
    (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(_jpeg(0))

    summary = verify_data(tmp_path, expect_imagenet=True, num_threads=1, decode=False, summary_path=None)

    problems = summary["problems"]
    assert "train: 3 classes, expected 1000" in problems
    assert "train: 4 images, expected 1,281,167" in problems
    assert (
        "train: 3 classes do not have 732 to 1300 images: junk (1), n01440764 (2), n01443537 (1)" in problems
    )
    assert "train: 1 folders are not wnids: junk" in problems
    assert "val: 2 classes do not have 50 images: n01440764 (1), n09999999 (1)" in problems
    assert "val: 1 classes not in train: n09999999" in problems
    assert "val: 2 train classes missing: junk, n01443537" in problems
    assert any(p.startswith("val: 1 images lie outside class folders") for p in problems)
    assert not summary["ok"] and summary["issues"] == []


def test_verify_data_summarizes_per_class_count_problems_in_one_line_per_split(tmp_path):
    """A miniature of many classes (a subset, or the first images of each ImageNet class) gives one
    line per split and kind, not one per class; the per-class numbers stay in the summary."""
    wnids = [f"n{i:08d}" for i in range(12)]
    make_image_folder(tmp_path, "train", dict.fromkeys(wnids, 1), sizes=[(8, 8)])
    make_image_folder(tmp_path, "val", dict.fromkeys(wnids, 1), sizes=[(8, 8)])
    for c in wnids[:7]:  # empty class folders are summarized the same way
        (tmp_path / "train" / f"{c}x").mkdir()

    summary = verify_data(tmp_path, expect_imagenet=True, num_threads=1, decode=False, summary_path=None)

    problems = summary["problems"]
    listed = ", ".join(f"{c} (1)" for c in wnids[:5])
    assert f"train: 12 classes do not have 732 to 1300 images: {listed}, ..." in problems
    assert f"val: 12 classes do not have 50 images: {listed}, ..." in problems
    empty = ", ".join(f"{c}x" for c in wnids[:5])
    assert f"train: 7 empty class folders: {empty}, ..." in problems
    # and per split: classes and images against ImageNet's; train: 7 folders not wnids; val: 7 missing
    assert len(problems) == 9, problems
    assert summary["splits"]["val"]["per_class"] == dict.fromkeys(wnids, 1)


def test_verify_data_command_can_skip_decoding(tmp_path, monkeypatch, capsys):
    from resnet_repro.cli import main

    root = tmp_path / "data"
    make_image_folder(root, "train", {"a": 2, "b": 2}, sizes=[(8, 8)])
    make_image_folder(root, "val", {"a": 1, "b": 1}, sizes=[(8, 8)])
    monkeypatch.chdir(tmp_path)  # Hydra's run directory: runs/verify-data/<time>
    decoders: list[int] = []
    monkeypatch.setattr(imagenet_verify, "_DaliDecoder", lambda *a: decoders.append(1))

    main(["verify-data", "--no-decode", "data=folder", f"data.root={root}", "logging.progress=false"])

    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] and result["images"] == 6 and set(result["images_per_s"]) == {"train", "val"}
    assert decoders == []  # no DALI decoder was even built
    (summary_file,) = tmp_path.glob("runs/verify-data/*/verify_data.json")
    assert json.loads(summary_file.read_text())["decoded"] is False


def test_prepare_progress_shows_image_counts_as_integers(tmp_path, archives, monkeypatch, capsys):
    # 20,000 images per class without writing them: tqdm's own number format would show 4e+4
    monkeypatch.setattr(imagenet_prepare, "_extract_class_tar", lambda fileobj, archive, dest: 20_000)
    prepare_imagenet(tmp_path / "imagenet", train_tar=archives["train_tar"], val_tar=None, devkit=None)

    err = capsys.readouterr().err
    assert "images=60,000" in err and "e+" not in err


def test_prepare_syncs_a_class_to_disk_before_renaming_it_into_place(tmp_path, archives, monkeypatch):
    """A rerun skips a folder with its final name: its files must be on disk before the rename, or a
    power loss can leave a complete-looking class of empty files."""
    import os

    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(self: Path, target):
        events.append(("rename", str(self)))
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    out = (tmp_path / "imagenet").resolve()
    prepare_imagenet(out, **archives, progress=False)

    _assert_prepared(out)
    renames = [k for k, (kind, _) in enumerate(events) if kind == "rename"]
    assert len(renames) == len(WNIDS) + 1  # each train class, then the whole val split
    partial = out / imagenet_prepare.PARTIAL_DIR
    published = [(partial / "train" / w, out / "train" / w) for w in WNIDS] + [(partial / "val", out / "val")]
    for k, (work, final) in zip(renames, published, strict=True):
        assert events[k] == ("rename", str(work))
        synced_before = {path for kind, path in events[:k] if kind == "fsync"}
        on_disk = {str(work / p.relative_to(final)) for p in final.rglob("*")}
        assert on_disk and on_disk | {str(work)} <= synced_before
        assert events[k + 1] == ("fsync", str(final.parent))  # the rename itself


def test_verify_data_of_a_class_subset_checks_only_its_classes(tmp_path, monkeypatch, capsys):
    from resnet_repro.cli import main

    root = tmp_path / "data"
    wnids = {f"n{i:08d}": 2 for i in range(6)}
    make_image_folder(root, "train", wnids, sizes=[(8, 8)])
    make_image_folder(root, "val", {w: 1 for w in wnids}, sizes=[(8, 8)])
    monkeypatch.chdir(tmp_path)

    # a subset of ImageNet: its totals are not ImageNet's, its per-class counts still are checked
    summary = imagenet_verify.verify_data(
        root,
        expect_imagenet=True,
        num_threads=1,
        decode=False,
        progress=False,
        summary_path=None,
        classes=("n00000001", "n00000004"),
    )
    assert summary["splits"]["train"]["classes"] == 2 and summary["images"] == 6
    assert summary["subset_classes"] == 2
    assert not any("expected 1000" in p or "images, expected" in p for p in summary["problems"])
    assert any("2 classes do not have 732 to 1300 images" in p for p in summary["problems"])

    main(
        [
            "verify-data",
            "--no-decode",
            "data=folder",
            f"data.root={root}",
            "data.subset.classes=3",
            "logging.progress=false",
        ]
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 3 * 3 and result["ok"]  # the 3 seeded classes: 2 train + 1 val each


def _photo_like_jpeg() -> tuple[bytes, np.ndarray]:
    """A 256x192 JPEG with gradients and noise (enough entropy-coded data to damage in its middle),
    and the pixels PIL decodes from it intact."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:192, 0:256]
    pixels = np.stack([(xx + yy) % 256, (2 * xx) % 256, (3 * yy) % 256], axis=-1)
    pixels = (pixels + rng.integers(0, 30, pixels.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return buf.getvalue(), np.asarray(im.convert("RGB"), dtype=np.int16)


def _pil_pixels(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.int16)
    except OSError:
        return None


def test_verify_data_reports_jpegs_whose_data_is_damaged_though_dali_decodes_them(tmp_path):
    """DALI's CPU decoder (libjpeg-turbo) decodes damaged entropy-coded data without an error: it
    prints a warning and fills what it could not read, so a decode-only check passed such files while
    the run trained on grey blocks (and the torchvision backend refused some of them). The oracle is
    PIL against the intact image: its pixels are far off for the two damaged files and equal for the
    one with padding before its end marker, which is therefore only a note."""
    intact, want = _photo_like_jpeg()
    n = len(intact)
    damaged = {
        # an end-of-image marker in the middle of the scan: PIL decodes it, the lower half grey
        "eoi_in_scan": intact[: n // 2] + b"\xff\xd9" + intact[n // 2 + 2 :],
        # marker bytes in the scan: PIL refuses it ("broken data stream"), DALI decodes it
        "ff_run_in_scan": intact[: n // 2] + b"\xff" * 64 + intact[n // 2 + 64 :],
    }
    padded = intact[:-2] + b"\0" * 10 + b"\xff\xd9"  # padding an encoder left before the end marker
    assert np.abs(_pil_pixels(damaged["eoi_in_scan"]) - want).mean() > 10
    assert _pil_pixels(damaged["ff_run_in_scan"]) is None
    assert np.array_equal(_pil_pixels(padded), want)

    root = tmp_path / "data"
    make_image_folder(root, "train", {"a": 70, "b": 2}, sizes=[(S, S)])  # more than one DALI batch
    make_image_folder(root, "val", {"a": 1, "b": 1}, sizes=[(S, S)])
    paths = {k: root / "train" / "a" / f"{k}.JPEG" for k in (*damaged, "padded", "intact")}
    for k, data in {**damaged, "padded": padded, "intact": intact}.items():
        paths[k].write_bytes(data)

    summary = verify_data(root, expect_imagenet=False, num_threads=2, progress=False, summary_path=None)

    found = {(Path(i["path"]).stem, i["kind"]): i["detail"] for i in summary["issues"]}
    assert set(found) == {
        ("eoi_in_scan", "corrupt"),
        ("ff_run_in_scan", "corrupt"),
        ("padded", "jpeg_warning"),
    }
    assert "premature end of data segment" in found["eoi_in_scan", "corrupt"]
    assert "PIL decodes it" in found["eoi_in_scan", "corrupt"]
    assert "PIL: broken data stream" in found["ff_run_in_scan", "corrupt"]
    assert "extraneous bytes before marker 0xd9" in found["padded", "jpeg_warning"]
    assert summary["issue_counts"] == {"corrupt": 2, "jpeg_warning": 1}
    assert not summary["ok"]
    assert "corrupt" in imagenet_verify.ERROR_KINDS and "jpeg_warning" in imagenet_verify.NOTE_KINDS


def test_the_standard_error_read_during_a_decode_keeps_libjpegs_warnings_and_passes_on_the_rest(capfd):
    """Nothing is lost: while a batch decodes, the standard error (file descriptor 2, where the
    decoder's C code writes) is read for libjpeg's warnings, and whatever else was written there is
    written back."""
    found: list[str] = []
    with imagenet_verify._libjpeg_warnings(found):
        os.write(2, b"Corrupt JPEG data: premature end of data segment\n")
        os.write(2, b"a line from another library\n")
        os.write(2, b"Corrupt JPEG data: 6 extraneous bytes before marker 0xd9\n")
    assert found == [
        "Corrupt JPEG data: premature end of data segment",
        "Corrupt JPEG data: 6 extraneous bytes before marker 0xd9",
    ]
    assert capfd.readouterr().err == "a line from another library\n"


def _start_that_cannot_build(parent: int, batch_size: int, num_threads: int) -> None:
    raise ImportError("libnvimgcodec.so.0: cannot open shared object file")


def test_a_decoder_that_cannot_be_built_is_one_error_not_a_crash_of_every_file():
    """A broken DALI install fails in the decoding child while it starts: one line naming why,
    not every image listed as a file the decoder crashed on."""
    with pytest.raises(UserError, match=r"cannot build DALI's decoder \(ImportError: libnvimgcodec"):
        imagenet_verify._DaliDecoder(64, 1, start=_start_that_cannot_build)


def test_the_decoding_child_dies_with_its_parent(tmp_path):
    """A parent killed outright (SIGKILL, the out-of-memory killer) cannot shut its child down: the
    child must not live on holding the parent's output open."""
    script = (
        "import os, sys\n"
        "from resnet_repro.data import imagenet_verify\n"
        "d = imagenet_verify._DaliDecoder(8, 1)\n"
        "print(*d._pool._processes, flush=True)\n"
        "os._exit(0)  # no cleanup, as after a SIGKILL\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    (child,) = (int(pid) for pid in done.stdout.split())
    deadline = time.monotonic() + 20
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists(), "the decoding child outlived its parent"


@pytest.mark.slow
def test_verify_data_run_from_a_folder_with_a_socket_py_decodes_with_the_standard_library(tmp_path):
    """The console script keeps the working directory off the path; so must its decoding child,
    which Python starts with `-c`."""
    root = tmp_path / "data"
    make_image_folder(root, "train", {"a": 2}, sizes=[(S, S)])
    make_image_folder(root, "val", {"a": 1}, sizes=[(S, S)])
    work = tmp_path / "work"
    work.mkdir()
    (work / "socket.py").write_text("raise ImportError('the socket.py of the working directory')\n")
    resnet_repro = Path(sys.executable).parent / "resnet-repro"
    done = subprocess.run(
        [str(resnet_repro), "verify-data", f"data.root={root}", "logging.progress=false", "hydra.run.dir=r"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    assert "working directory" not in done.stderr and json.loads(done.stdout.splitlines()[-1])["ok"]


def test_verify_data_of_splits_without_images_is_not_ok(tmp_path):
    """The null case: a root whose splits hold no image is not a dataset that checks out (train,
    stats and eval refuse it), nor is an ImageNet root without its val folder."""
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "n01440764").mkdir(parents=True)
    summary = verify_data(tmp_path / "empty", expect_imagenet=False, num_threads=1, summary_path=None)
    assert not summary["ok"] and summary["images"] == 0
    assert f"train: no images; expected {tmp_path / 'empty' / 'train'}/<class>/<image>" in summary["problems"]
    assert any(p.startswith("val: no images") for p in summary["problems"])

    make_image_folder(tmp_path / "trainonly", "train", {"n01440764": 1}, sizes=[(8, 8)])
    summary = verify_data(tmp_path / "trainonly", expect_imagenet=True, num_threads=1, summary_path=None)
    assert f"val: no folder {tmp_path / 'trainonly' / 'val'}" in summary["problems"] and not summary["ok"]


def test_verify_data_command_requires_the_runs_train_and_eval_splits(tmp_path, monkeypatch, capsys):
    from resnet_repro.cli import main

    make_image_folder(tmp_path / "data", "train", {"a": 2, "b": 2}, sizes=[(8, 8)])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "verify-data",
                "--no-decode",
                "data=folder",
                f"data.root={tmp_path / 'data'}",
                "logging.progress=false",
            ]
        )
    assert exit_info.value.code == 1
    assert f"problem: val: no folder {tmp_path / 'data' / 'val'}" in capsys.readouterr().out


def _decode_but_crash_on_a_batch_with_crash_files(paths: list[str]):
    """In verify-data's decoding child: what DALI 2.4's CPU decoder does when a broken file shares
    a batch with others (a SIGSEGV, at random); alone, the file is decoded (and refused) normally."""
    if len(paths) > 1 and any(Path(p).stem.startswith("crash") for p in paths):
        os.kill(os.getpid(), signal.SIGSEGV)
    return imagenet_verify._decode_in_child(paths)


def test_a_decoder_crash_costs_a_new_child_and_the_files_behind_it_are_still_named(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_image_folder(root, "train", {"a": 70, "b": 3}, sizes=[(S, S)])  # more than one batch
    make_image_folder(root, "val", {"a": 1, "b": 1}, sizes=[(S, S)])
    (root / "train" / "a" / "crash_text.JPEG").write_text("not an image\n")
    crash_jpeg = root / "train" / "b" / "crash_good.JPEG"  # decodes fine when alone
    crash_jpeg.write_bytes((root / "train" / "b" / "0.JPEG").read_bytes())
    monkeypatch.setattr(imagenet_verify, "_decode_in_child", _decode_but_crash_on_a_batch_with_crash_files)

    summary = verify_data(root, expect_imagenet=False, num_threads=2, progress=False, summary_path=None)

    assert [(Path(i["path"]).name, i["kind"]) for i in summary["issues"]] == [
        ("crash_text.JPEG", "undecodable")
    ]
    assert summary["images"] == 77 and not summary["ok"]


@pytest.mark.slow
def test_verify_data_survives_dalis_decoder_crashing_on_broken_files(tmp_path):
    """The real decoder: a non-image file and a truncated JPEG among good ones killed verify-data
    (exit 139, no list of bad files) in most runs. Three runs, each must list both and exit 1."""
    from conftest import run_cli

    from resnet_repro.data.demo import build_demo_dataset

    root = build_demo_dataset(tmp_path / "data")  # the digits as 32 px JPEGs: the crash was seen on them
    (root / "train" / "0" / "garbage.JPEG").write_bytes(b"hello world not a jpeg")
    cut = root / "train" / "1" / "0001.JPEG"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    for attempt in range(3):
        done = run_cli(
            "verify-data", "data=folder", f"data.root={root}", "logging.progress=false",
            f"hydra.run.dir={tmp_path / f'run{attempt}'}",
        )  # fmt: skip
        assert done.returncode == 1, (attempt, done.returncode, done.stderr[-1500:])
        bad = (tmp_path / f"run{attempt}" / "bad_files.txt").read_text().split()
        assert sorted(bad) == ["train/0/garbage.JPEG", "train/1/0001.JPEG"]


def test_verify_data_with_only_a_data_root_checks_that_folder(tmp_path, monkeypatch, capsys):
    """`resnet-repro verify-data data.root=DIR`, as the docs and rehearse's messages write it,
    checks DIR as a folder of images instead of refusing it as not the demo dataset."""
    from resnet_repro.cli import main

    root = tmp_path / "data"
    make_image_folder(root, "train", {"a": 2, "b": 2}, sizes=[(8, 8)])
    make_image_folder(root, "val", {"a": 1, "b": 1}, sizes=[(8, 8)])
    monkeypatch.chdir(tmp_path)

    main(["verify-data", "--no-decode", f"data.root={root}", "logging.progress=false"])

    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] and result["images"] == 6 and result["root"] == str(root)

    # an experiment's data group stays its own: ImageNet's counts are checked
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "verify-data",
                "--no-decode",
                "experiment=imagenet_paper",
                f"data.root={root}",
                "logging.progress=false",
            ]
        )
    assert exit_info.value.code == 1 and "problem: train: 2 classes, expected 1000" in capsys.readouterr().out
