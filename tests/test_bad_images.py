"""A broken image never passes silently: training names it, and an exclude list skips it."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, run_cli

from resnet_repro.config import DataConfig, UserError
from resnet_repro.data import dali
from resnet_repro.data.dali import DaliLoader, Transform
from resnet_repro.data.splits import list_split
from resnet_repro.training.run_data import load_file_lists


@pytest.fixture
def root_with_truncated_jpeg(tmp_path: Path) -> tuple[Path, Path]:
    make_image_folder(tmp_path, "train", {"a": 6, "b": 6})
    make_image_folder(tmp_path, "val", {"a": 2, "b": 2})
    bad = tmp_path / "train" / "b" / "3.JPEG"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return tmp_path, bad


def test_a_truncated_jpeg_stops_the_loader_with_a_message_naming_it(root_with_truncated_jpeg):
    root, bad = root_with_truncated_jpeg
    files = list_split(root, "train")
    transform = Transform(train=True, image_size=16, crop_ratio=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)
    loader = DaliLoader(
        files.files, files.labels, transform, batch_size=4, num_threads=1, seed=0, device=torch.device("cpu")
    )
    with pytest.raises(UserError, match=str(bad)) as info:
        for _ in loader:
            pass
    assert "data.exclude_files" in str(info.value)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_a_truncated_jpeg_in_the_first_batch_stops_the_loader_with_a_message_naming_it(
    root_with_truncated_jpeg, train: bool
):
    """DALI's iterator decodes its first batch when it is built: the error comes from there."""
    root, bad = root_with_truncated_jpeg
    files = list_split(root, "train")
    transform = Transform(train=train, image_size=16, crop_ratio=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(UserError, match=str(bad)):
        loader = DaliLoader(
            files.files,
            files.labels,
            transform,
            batch_size=12,
            num_threads=1,
            seed=0,
            device=torch.device("cpu"),
        )
        for _ in loader:
            pass


def test_a_jpeg_broken_between_passes_is_found_where_the_reader_is_without_checking_every_file(
    tmp_path, monkeypatch
):
    """DALI's reader carries on across passes (30 files in batches of 4: the second pass starts at
    file 2, and the broken file 0 is in its last batch), so the file that failed is looked for from
    the reader's real position, wrapping around the list, among the batches DALI may have in
    flight: never a check of every file (hours on ImageNet)."""
    make_image_folder(tmp_path, "train", {"a": 15, "b": 15})
    files = list_split(tmp_path, "train")
    transform = Transform(train=False, image_size=16, crop_ratio=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)
    loader = DaliLoader(
        files.files, files.labels, transform, batch_size=4, num_threads=1, seed=0, device=torch.device("cpu")
    )
    assert sum(len(y) for _, y in loader) == 30
    # broken by a new file under the same name (a truncation in place would hit DALI's mmap)
    bad = Path(files.files[0])
    replacement = bad.with_suffix(".tmp")
    replacement.write_bytes(bad.read_bytes()[:200])
    replacement.replace(bad)
    checked: list[str] = []
    real_check = dali.undecodable_reason
    monkeypatch.setattr(dali, "undecodable_reason", lambda f: checked.append(f) or real_check(f))
    with pytest.raises(UserError, match=str(bad)):
        for _ in loader:
            pass
    assert 0 < len(checked) <= 4 * 3  # batch x (prefetch 2 + the failing one), of 30 files


@pytest.mark.slow
def test_a_broken_jpeg_met_by_the_training_loader_is_named_or_its_crash_says_segmentation_fault(tmp_path):
    """With no statistics pass first (published normalization), the training loader meets the
    broken file; DALI 2.4 then often kills the process (4 of 6 runs of this command here), from a
    decoder thread working ahead while the main thread trains. Either the one line names the file,
    or the dying process says what killed it and where each Python thread was (faulthandler)."""
    make_image_folder(tmp_path, "train", {"a": 100, "b": 100}, sizes=[(40, 30)])
    make_image_folder(tmp_path, "val", {"a": 2, "b": 2}, sizes=[(40, 30)])
    bad = tmp_path / "train" / "b" / "3.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"not a JPEG body" * 20)
    for seed in (1, 2):
        run = run_cli(
            "train",
            "data=folder",
            f"data.root={tmp_path}",
            "data.normalization=published",
            "model=resnet18",
            "data.image_size=16",
            "trainer.batch_size=64",
            "trainer.epochs=1",
            f"trainer.seed={seed}",
            "stabilizer.warmup_epochs=0",
            "logging.progress=false",
            "logging.tensorboard=false",
            "data.num_threads=1",
            "data.max_eval_images=3",
            f"hydra.run.dir={tmp_path / f'run{seed}'}",
            timeout=300,
        )
        if run.returncode == 2:
            assert f"resnet-repro: error: cannot decode {bad} (" in run.stderr, run.stderr[-2000:]
        else:
            assert run.returncode == -signal.SIGSEGV, (run.returncode, run.stderr[-2000:])
            assert "Fatal Python error: Segmentation fault" in run.stderr, run.stderr[-2000:]
            assert "most recent call first" in run.stderr, run.stderr[-2000:]


def test_exclude_files_leaves_the_listed_image_out_of_every_split(root_with_truncated_jpeg, tmp_path: Path):
    root, bad = root_with_truncated_jpeg
    listing = tmp_path / "bad_files.txt"
    listing.write_text("# from verify-data\ntrain/b/3.JPEG\n")
    splits = load_file_lists(DataConfig(name="folder", root=str(root), exclude_files=str(listing)))
    assert str(bad) not in splits.train.files and len(splits.train) == 11
    with pytest.raises(UserError, match="does not exist"):
        load_file_lists(DataConfig(name="folder", root=str(root), exclude_files=str(tmp_path / "nope.txt")))


def test_an_exclude_list_matches_however_the_root_is_spelled(root_with_truncated_jpeg, tmp_path, monkeypatch):
    root, bad = root_with_truncated_jpeg
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(root, target_is_directory=True)
    monkeypatch.chdir(root.parent)
    listings = {
        "absolute": str(bad),
        "relative to the working directory": f"{root.name}/train/b/3.JPEG",
        "through a symlink": str(link / "train" / "b" / "3.JPEG"),
    }
    for spelling, line in listings.items():
        listing = tmp_path / "list.txt"
        listing.write_text(line + "\n")
        for data_root in (str(root), root.name, str(link)):  # absolute, relative, symlinked root
            splits = load_file_lists(DataConfig(name="folder", root=data_root, exclude_files=str(listing)))
            assert len(splits.train) == 11, (spelling, data_root)


def test_exclude_entries_that_match_nothing_are_warned_about(root_with_truncated_jpeg, tmp_path, caplog):
    root, _ = root_with_truncated_jpeg
    listing = tmp_path / "list.txt"
    listing.write_text("train/b/3.JPEG\ntrain/a/999.JPEG\n")
    with caplog.at_level("WARNING", logger="resnet_repro"):
        splits = load_file_lists(DataConfig(name="folder", root=str(root), exclude_files=str(listing)))
    assert len(splits.train) == 11
    assert "1 of 2 listed files" in caplog.text and "train/a/999.JPEG" in caplog.text
