"""File lists of ImageNet-layout folders, and which indices each rank reads."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import make_image_folder

from resnet_repro.config import UserError
from resnet_repro.data.sharding import eval_indices, steps_per_epoch, train_indices
from resnet_repro.data.splits import list_split

TINY = [(8, 8), (12, 6)]

# ------------------------------------------------------------------------------------------ list_split


def test_list_split_sorts_classes_and_labels_files_by_class_position(tmp_path):
    classes = {"n02": 2, "n01": 3, "b": 1, "a2": 1, "a10": 12}
    written = make_image_folder(tmp_path, "train", classes, sizes=TINY)

    fl = list_split(tmp_path, "train")

    assert fl.split == "train"
    assert fl.classes == ("a10", "a2", "b", "n01", "n02")  # plain string order, like sorted wnids
    assert fl.files == tuple(str(p) for p in written)
    assert len(fl) == 19
    expected = [fl.classes.index(name) for name in sorted(classes) for _ in range(classes[name])]
    assert list(fl.labels) == expected
    # labels follow the folder each file is in
    for path, label in zip(fl.files, fl.labels, strict=True):
        assert path.split("/")[-2] == fl.classes[label]


def test_list_split_reads_jpg_and_png_and_skips_other_files_and_hidden_folders(tmp_path):
    make_image_folder(tmp_path, "train", {"cat": 1, "dog": 1}, sizes=TINY)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "cat" / "x.jpg").write_bytes((tmp_path / "train" / "cat" / "0.JPEG").read_bytes())
    (tmp_path / "train" / "dog" / "y.PNG").write_bytes(b"png")
    (tmp_path / "train" / ".cache").mkdir()

    fl = list_split(tmp_path, "train")

    assert fl.classes == ("cat", "dog")
    assert [p.split("/")[-1] for p in fl.files] == ["0.JPEG", "x.jpg", "0.JPEG", "y.PNG"]
    assert fl.labels == (0, 0, 1, 1)


def test_list_split_skips_hidden_files_as_it_skips_hidden_folders(tmp_path):
    # macOS leaves `._<name>` AppleDouble files beside each image on some file systems: not images
    make_image_folder(tmp_path, "train", {"cat": 1, "dog": 1}, sizes=TINY)
    (tmp_path / "train" / "cat" / "._0.JPEG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "train" / "dog" / ".1.jpg").write_bytes(b"")

    fl = list_split(tmp_path, "train")

    assert [p.split("/")[-2:] for p in fl.files] == [["cat", "0.JPEG"], ["dog", "0.JPEG"]]


@pytest.mark.parametrize("where", ["image", "class folder"])
def test_a_name_that_is_not_utf8_is_one_error_naming_its_bytes(tmp_path, where):
    # DALI and the run's fingerprint need text names: train crashed (UnicodeEncodeError) on these
    import os

    make_image_folder(tmp_path, "train", {"cat": 1, "dog": 1}, sizes=TINY)
    latin1 = os.fsdecode(b"caf\xe9")  # "cafe" with an accented e, in Latin-1: not UTF-8
    if where == "image":
        (tmp_path / "train" / "cat" / "0.JPEG").rename(tmp_path / "train" / "cat" / f"{latin1}.JPEG")
    else:
        (tmp_path / "train" / "dog").rename(tmp_path / "train" / latin1)

    with pytest.raises(UserError) as raised:
        list_split(tmp_path, "train")

    message = str(raised.value)
    assert "caf\\xe9" in message and "not valid UTF-8" in message and "\n" not in message
    message.encode("utf-8")  # printable as it is: no lone surrogate


def test_val_split_labels_follow_the_training_classes(tmp_path):
    make_image_folder(tmp_path, "train", {"a": 1, "b": 1, "c": 1}, sizes=TINY)
    make_image_folder(tmp_path, "val", {"c": 2, "a": 1}, sizes=TINY)  # "b" has no val images

    train = list_split(tmp_path, "train")
    val = list_split(tmp_path, "val", classes=train.classes)

    assert val.classes == ("a", "b", "c")
    assert val.labels == (0, 2, 2)


def test_missing_root_is_a_user_error_naming_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=re.escape(str(missing))):
        list_split(missing, "train")


def test_root_that_is_a_file_is_a_user_error_naming_the_path(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match=re.escape(str(f))):
        list_split(f, "train")


def test_missing_split_folder_is_a_user_error_naming_the_path(tmp_path):
    make_image_folder(tmp_path, "train", {"a": 1}, sizes=TINY)
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "val"))):
        list_split(tmp_path, "val")


def test_split_folder_without_class_subfolders_is_a_user_error_naming_the_path(tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    (split / "0.JPEG").write_bytes(b"loose image, no class folder")
    with pytest.raises(UserError, match=re.escape(str(split))):
        list_split(tmp_path, "train")


def test_empty_class_folder_is_a_user_error_naming_the_path(tmp_path):
    make_image_folder(tmp_path, "train", {"a": 1, "c": 1}, sizes=TINY)
    empty = tmp_path / "train" / "b"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match=re.escape(str(empty))):
        list_split(tmp_path, "train")


def test_val_class_not_in_training_classes_is_a_user_error_naming_the_path_and_class(tmp_path):
    make_image_folder(tmp_path, "train", {"a": 1, "b": 1}, sizes=TINY)
    make_image_folder(tmp_path, "val", {"a": 1, "zebra": 1}, sizes=TINY)
    train = list_split(tmp_path, "train")
    with pytest.raises(UserError, match="zebra") as info:
        list_split(tmp_path, "val", classes=train.classes)
    assert str(tmp_path / "val") in str(info.value)


# ------------------------------------------------------------------------------------------ sharding


@pytest.mark.parametrize(("n", "batch"), [(100, 8), (103, 5), (64, 16)])
def test_two_ranks_read_exactly_what_one_rank_with_double_batch_reads(n, batch):
    for epoch in (0, 3):
        single = train_indices(n, epoch=epoch, seed=7, batch_size=2 * batch, rank=0, world_size=1)
        r0 = train_indices(n, epoch=epoch, seed=7, batch_size=batch, rank=0, world_size=2)
        r1 = train_indices(n, epoch=epoch, seed=7, batch_size=batch, rank=1, world_size=2)
        steps = steps_per_epoch(n, 2 * batch)
        assert len(r0) == len(r1) == steps * batch
        merged = np.concatenate(
            [
                np.concatenate([r0[s * batch : (s + 1) * batch], r1[s * batch : (s + 1) * batch]])
                for s in range(steps)
            ]
        )
        np.testing.assert_array_equal(merged, single)


def test_train_indices_are_distinct_valid_and_drop_only_the_incomplete_last_batch():
    n, batch, world = 103, 4, 3
    parts = [
        train_indices(n, epoch=1, seed=0, batch_size=batch, rank=r, world_size=world) for r in range(world)
    ]
    allidx = np.concatenate(parts)
    assert len(allidx) == (n // (batch * world)) * batch * world
    assert len(np.unique(allidx)) == len(allidx)
    assert allidx.min() >= 0 and allidx.max() < n


def test_train_order_changes_with_epoch_and_seed_and_repeats_for_the_same_seed_and_epoch():
    def order(epoch, seed):
        return train_indices(1000, epoch=epoch, seed=seed, batch_size=10, rank=0, world_size=1)

    np.testing.assert_array_equal(order(2, 5), order(2, 5))
    assert not np.array_equal(order(2, 5), order(3, 5))
    assert not np.array_equal(order(2, 5), order(2, 6))
    # every epoch is a permutation of the same images
    assert sorted(order(2, 5)) == sorted(order(3, 5)) == list(range(1000))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_eval_indices_partition_every_image_exactly_once(world_size):
    n = 103
    parts = [eval_indices(n, rank=r, world_size=world_size) for r in range(world_size)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_eval_indices_with_more_ranks_than_images_still_cover_each_image_once():
    parts = [eval_indices(3, rank=r, world_size=8) for r in range(8)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(3))


@pytest.mark.parametrize("where", ["split", "class"])
def test_a_folder_the_user_may_not_read_is_one_error_naming_it(tmp_path, monkeypatch, where):
    """chmod 000 on the split or a class folder (here as the OS answers it: tests run as root, who
    reads everything): one line naming the folder, not a PermissionError traceback."""
    import os

    make_image_folder(tmp_path, "train", {"ant": 2, "bee": 2})
    locked = tmp_path / "train" if where == "split" else tmp_path / "train" / "bee"
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(
        UserError, match=rf"^cannot read the folder {re.escape(str(locked))}: Permission denied"
    ):
        list_split(tmp_path, "train")


def test_an_empty_data_root_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch):
    """`data.root=` (or an sbatch script's data.root="$DATA" with DATA unset) is an empty string,
    which Path() reads as "." (here a folder that has a train split)."""
    make_image_folder(tmp_path, "train", {"ant": 2})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^data.root is empty: pass data.root=DIR"):
        list_split("", "train")
