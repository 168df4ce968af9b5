"""CIFAR-10 from the official Python archive into the ImageNet folder layout, as lossless PNGs.

cifar-10-python.tar.gz holds `cifar-10-batches-py/` with pickled `data_batch_1` .. `data_batch_5`
(the 50,000 training images), `test_batch` (the 10,000 test images) and `batches.meta` (the class
names). Each batch is a dict with b"data", uint8 [N, 3072] (a 32x32 R plane, then G, then B, row by
row) and b"labels", N integers indexing batches.meta's b"label_names".

`prepare_cifar10` writes `<out>/train/<class name>/<index>.png` and `<out>/val/<class name>/<index>.png`
(val = the official test set; index = position in the official order, zero-padded so that sorted
names keep it). The official class names are in alphabetical order, so the class index (position
of the folder name in sorted order, resnet_repro/data/splits.py) equals the official label. Each
split is written under `<out>/.partial/` and renamed into place when complete, each file under a
temporary name, so a rerun after an interruption continues and a split folder with its final name
is always complete.

The pickles are read with an unpickler that only builds plain containers and numpy arrays: a pickle
can run arbitrary code, and an archive is outside input. torchvision.datasets.CIFAR10 reads the
same files with a plain pickle.load and keeps the images in memory; here they become files that the
DALI and torchvision backends read like any ImageNet-layout folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from resnet_repro.config import UserError
from resnet_repro.data.imagenet_prepare import (
    PARTIAL_DIR,
    _is_folder_name,
    _progress,
    _remove_empty_dirs,
    first_line,
    refuse_files_where_folders_go,
)

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
SIDE = 32
# CIFAR-10's sizes: the summary says when an archive holds other counts (e.g. a test archive)
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """numpy's array reconstruction, under the module names numpy 1 (numpy.core) and numpy 2
    (numpy._core) write into pickles, and bytes: nothing else may be built from the archive's pickles."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    import codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes into a protocol-2 pickle as _codecs.encode(text, "latin1")
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _allowed_globals().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to build {module}.{name}: not part of a numpy array")
        return found


def _load(data: bytes, where: str) -> dict[bytes, Any]:
    try:
        # encoding="bytes": the official pickles come from Python 2 (str keys become bytes)
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # pickle raises many types for damaged data
        raise UserError(f"{where} is not a CIFAR-10 batch pickle: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise UserError(f"{where} holds a {type(obj).__name__}, not the dict of a CIFAR-10 batch")
    return obj


def _class_names(meta: dict[bytes, Any], where: str) -> list[str]:
    names = meta.get(b"label_names")
    if not isinstance(names, list) or not names:
        raise UserError(f"{where} has no b'label_names' list")
    out = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    bad = [n for n in out if not _is_folder_name(n)]
    if bad or len(set(out)) != len(out):
        raise UserError(f"{where}: class names {out} must be distinct folder names (no '/', no leading '.')")
    return out


def _images_and_labels(batch: dict[bytes, Any], where: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """uint8 [N, 32, 32, 3] RGB images and their labels."""
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * SIDE**2
    ):
        shape = getattr(data, "shape", None)
        raise UserError(
            f"{where}: b'data' must be a uint8 array [N, {3 * SIDE**2}], got {type(data).__name__} {shape}"
        )
    if not isinstance(labels, list) or len(labels) != len(data):
        raise UserError(f"{where}: b'labels' must be a list of {len(data)} integers (one per image)")
    if any(not isinstance(y, int) or not 0 <= y < num_classes for y in labels):
        raise UserError(f"{where}: a label is outside 0..{num_classes - 1} (the classes of {META})")
    # each row: the R plane, then G, then B, each 32 rows of 32 pixels
    return data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1), labels


def _read_members(archive: Path) -> dict[str, bytes]:
    """The batch files of the archive by name (about 180 MB in memory for the real one)."""
    wanted = {f"{FOLDER}/{n}": n for n in (*TRAIN_BATCHES, TEST_BATCH, META)}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                name = wanted.get(m.name.removeprefix("./"))
                if name is not None and m.isfile():
                    f = tar.extractfile(m)
                    assert f is not None  # a regular file always has data
                    found[name] = f.read()
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(
            f"cannot read the CIFAR-10 archive {archive} ({type(e).__name__}: {first_line(e)}); "
            "download it again"
        ) from e
    missing = [n for n in wanted.values() if n not in found]
    if missing:
        raise UserError(
            f"{archive} has no {FOLDER}/{missing[0]}"
            + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; expected the official cifar-10-python.tar.gz"
        )
    return found


# beside each split folder (hidden, outside it: the split holds class folders only), the sha256 of
# the batches it was written from: <out>/.train.sha256, and <out>/.partial/train.sha256 while writing
def _source_record(out: Path, split: str, *, partial: bool) -> Path:
    return out / PARTIAL_DIR / f"{split}.sha256" if partial else out / f".{split}.sha256"


def _digest(members: dict[str, bytes], names: tuple[str, ...]) -> str:
    """The sha256 of a split's batch files, in order: which archive a split folder came from."""
    h = hashlib.sha256()
    for name in names:
        h.update(members[name])
    return h.hexdigest()


def _recorded_source(record: Path) -> str | None:
    try:
        return record.read_text().strip()
    except OSError:
        return None


def _write_png(pixels: np.ndarray, target: Path) -> None:
    from PIL import Image

    # a hidden temporary name, then a rename: a file with its final name is complete
    tmp = target.with_name(f".{target.name}.part")
    Image.fromarray(pixels).save(tmp, format="PNG")  # uint8 [32, 32, 3]: an RGB image
    os.replace(tmp, target)


def _split_arrays(
    members: dict[str, bytes], names: tuple[str, ...], archive: Path, num_classes: int
) -> tuple[np.ndarray, list[int]]:
    """The images and labels of the named batches, in the official order."""
    images, labels = [], []
    for name in names:
        where = f"{archive}:{FOLDER}/{name}"
        x, y = _images_and_labels(_load(members[name], where), where, num_classes)
        images.append(x)
        labels.extend(y)
    return np.ascontiguousarray(np.concatenate(images)), labels


def _write_split(
    work: Path, images: np.ndarray, labels: list[int], classes: list[str], progress: bool
) -> int:
    """Image i -> work/<class>/<i>.png, skipping files a previous run finished; returns how many it wrote."""
    for c in classes:  # every class, even one without images here: labels follow sorted folder names
        (work / c).mkdir(parents=True, exist_ok=True)
    written = 0
    for i in _progress(range(len(labels)), progress, desc=work.name, unit="img"):
        target = work / classes[labels[i]] / f"{i:05d}.png"
        if not target.exists():
            _write_png(images[i], target)
            written += 1
    return written


def prepare_cifar10(archive: Path, out: Path, progress: bool = True) -> dict[str, Any]:
    """Write `<out>/train/<class>/<index>.png` (data_batch_1..5) and `<out>/val/<class>/<index>.png`
    (test_batch) from the official Python archive; returns summary counts. Resumable and idempotent."""
    archive, out = Path(archive).expanduser(), Path(out).expanduser()
    if not archive.is_file():
        what = "is a folder, not the archive" if archive.is_dir() else "does not exist"
        raise UserError(f"CIFAR-10 archive {archive} {what} (expected cifar-10-python.tar.gz)")
    members = _read_members(archive)
    meta = f"{archive}:{FOLDER}/{META}"
    classes = _class_names(_load(members[META], meta), meta)
    # every batch is parsed before anything is written: a damaged test_batch fails in seconds
    splits = {
        split: _split_arrays(members, names, archive, len(classes))
        for split, names in (("train", TRAIN_BATCHES), ("val", (TEST_BATCH,)))
    }
    sources = {
        split: _digest(members, names) for split, names in (("train", TRAIN_BATCHES), ("val", (TEST_BATCH,)))
    }
    del members
    refuse_files_where_folders_go(out, ["train", "val"])
    summary: dict[str, Any] = {"out": str(out), "classes": classes}
    for split, (images, labels) in splits.items():
        final, work = out / split, out / PARTIAL_DIR / split
        done_record, work_record = (_source_record(out, split, partial=p) for p in (False, True))
        if final.is_dir():  # renamed into place only when complete
            recorded = _recorded_source(done_record)
            if recorded is not None and recorded != sources[split]:
                raise UserError(
                    f"{final} was prepared from another archive (its batches' sha256 {recorded[:12]}, "
                    f"{archive}'s {sources[split][:12]}); remove it or choose another --out"
                )
            summary[split] = {"images": sum(1 for _ in final.glob("*/*.png")), "written": 0, "skipped": True}
            continue
        if work.is_dir() and _recorded_source(work_record) != sources[split]:
            # an interrupted split of another archive (or of a version that did not record one):
            # its images are not this archive's, so the split starts afresh
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        work_record.write_text(sources[split] + "\n")
        written = _write_split(work, images, labels, classes, progress)
        for stray in work.glob("*/.*.part"):  # a temporary file of an interrupted write
            stray.unlink()
        work.rename(final)
        os.replace(work_record, done_record)
        summary[split] = {"images": len(labels), "written": written, "skipped": False}
    _remove_empty_dirs(out / PARTIAL_DIR)
    return summary
