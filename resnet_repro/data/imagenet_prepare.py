"""ImageNet-1K (ILSVRC2012): prepare the folder layout from the official archives.

`prepare_imagenet` writes `<out>/train/<wnid>/*.JPEG` from ILSVRC2012_img_train.tar (a tar of 1000
per-class tars) and `<out>/val/<wnid>/*.JPEG` from the flat validation images (the archive or an
extracted folder), labelled by the devkit (meta.mat + ground-truth txt) or Kaggle's
LOC_val_solution.csv. Class index everywhere = position of the wnid in sorted order (splits.py).
Checking the result (counts, decodability) is resnet_repro.data.imagenet_verify.

Why not torchvision.datasets.imagenet's parse_*_archive: they MD5 the archives first (minutes of
hashing 147 GB, and a repacked archive is rejected), extract everything before moving anything (an
interrupted run restarts from zero and can leave a folder that looks complete), and pair val images
with labels by sorted position. Their meta.mat / ground-truth parsers are nested inside
parse_devkit_archive and cannot be imported; `_leaf_synsets` reads meta.mat the same way
(scipy.io.loadmat(squeeze_me=True)["synsets"], leaves = num_children == 0).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from resnet_repro.config import UserError
from resnet_repro.data.splits import IMAGE_EXTENSIONS

DEVKIT_DIR = "ILSVRC2012_devkit_t12"
DEVKIT_META = "data/meta.mat"
DEVKIT_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"

# Work in progress lives here (hidden: splits.find_classes skips dot folders) and is renamed into
# <out>/train/<wnid> or <out>/val once complete, so a half-written class never looks finished.
PARTIAL_DIR = ".partial"


# --------------------------------------------------------------------------------------------------
# Labels for the validation images
# --------------------------------------------------------------------------------------------------


def _val_name(i: int) -> str:
    """File name of the i-th (1-based) validation image; line i of the ground truth labels it."""
    return f"ILSVRC2012_val_{i:08d}.JPEG"


def _read_devkit_file(devkit: Path, rel: str) -> bytes:
    """`rel` (e.g. data/meta.mat) from the devkit archive, or from an extracted devkit folder (the
    ILSVRC2012_devkit_t12 folder itself or its parent)."""
    if devkit.is_dir():
        for base in (devkit, devkit / DEVKIT_DIR):
            if (base / rel).is_file():
                return (base / rel).read_bytes()
        raise UserError(f"devkit folder {devkit} has no {rel} (nor {DEVKIT_DIR}/{rel})")
    wanted = f"{DEVKIT_DIR}/{rel}"
    try:
        with tarfile.open(devkit, "r:*") as tar:
            for m in tar:
                if m.isfile() and _strip_dot_slash(m.name) == wanted:
                    f = tar.extractfile(m)
                    assert f is not None  # a regular file always has data
                    return f.read()
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:  # EOFError: a cut-off .gz
        raise UserError(
            f"cannot read the devkit archive {devkit} ({type(e).__name__}: {first_line(e)}); expected "
            "ILSVRC2012_devkit_t12.tar.gz, downloaded whole"
        ) from e
    raise UserError(f"devkit archive {devkit} has no {wanted}; is it ILSVRC2012_devkit_t12.tar.gz?")


def _leaf_synsets(meta_mat: bytes, source: str) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid for the leaf synsets (num_children == 0: the 1000 classes) of meta.mat."""
    try:
        import scipy.io
    except ImportError as e:
        raise UserError("reading the devkit's meta.mat needs scipy: pip install scipy") from e
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"]
        ids, wnids, children = synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"]
    except Exception as e:  # scipy raises several types for a malformed file
        raise UserError(f"{source} is not the ILSVRC2012 meta.mat (a 'synsets' struct array): {e}") from e
    leaves = {
        int(i): str(w)
        for i, w, n in zip(ids.reshape(-1), wnids.reshape(-1), children.reshape(-1), strict=True)
        if int(n) == 0
    }
    if not leaves:
        raise UserError(f"{source} has no leaf synsets (num_children == 0)")
    return leaves


def _labels_from_devkit(devkit: Path, ground_truth: Path | None) -> dict[str, str]:
    """Validation file name -> wnid. The ground truth holds one 1-based ILSVRC2012_ID per line in image
    order; meta.mat maps those IDs (not sorted-wnid positions) to wnids."""
    id_to_wnid = _leaf_synsets(_read_devkit_file(devkit, DEVKIT_META), f"{devkit}:{DEVKIT_META}")
    if ground_truth is not None:
        source = str(ground_truth)
        text = _text(ground_truth.read_bytes(), source, "ILSVRC2012_validation_ground_truth.txt")
    else:
        source = f"{devkit}:{DEVKIT_GROUND_TRUTH}"
        text = _text(_read_devkit_file(devkit, DEVKIT_GROUND_TRUTH), source, "one ILSVRC2012_ID per line")
    labels: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            wnid = id_to_wnid[int(line)]
        except (ValueError, KeyError):
            raise UserError(
                f"{source} line {lineno}: {line.strip()!r} is not an ILSVRC2012_ID of a class in meta.mat "
                f"(expected an integer in 1..{len(id_to_wnid)})"
            ) from None
        labels[_val_name(lineno)] = wnid
    if not labels:
        raise UserError(f"{source} is empty")
    return labels


def _text(data: bytes, source: str, expected: str) -> str:
    """A label file's bytes as text; a binary file (a wrong download, an image) is one error."""
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (a file re-saved by Excel) is not text
    except UnicodeDecodeError as e:
        raise UserError(
            f"{source} is not a text file (byte {e.start} is {data[e.start : e.start + 1]!r}, not UTF-8); "
            f"expected {expected}"
        ) from None
    if "\x00" in text:
        raise UserError(f"{source} is not a text file (it holds NUL bytes); expected {expected}")
    return text


def _labels_from_loc_csv(path: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: ImageId,PredictionString; the first token of PredictionString
    (a list of `wnid x_min y_min x_max y_max` boxes) is the image's class."""
    labels: dict[str, str] = {}
    text = _text(path.read_bytes(), str(path), "Kaggle's LOC_val_solution.csv (ImageId,PredictionString)")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
        raise UserError(
            f"{path} has columns {reader.fieldnames}; expected ImageId,PredictionString "
            "(Kaggle's LOC_val_solution.csv)"
        )
    for row in reader:
        tokens = (row["PredictionString"] or "").split()
        if not row["ImageId"] or not tokens:
            raise UserError(f"{path} line {reader.line_num}: empty ImageId or PredictionString")
        labels[row["ImageId"] + ".JPEG"] = tokens[0]
    if not labels:
        raise UserError(f"{path} has no rows")
    return labels


def _val_labels(
    devkit: Path | None, val_ground_truth: Path | None, loc_val_solution: Path | None
) -> tuple[dict[str, str], str]:
    """Labels and a description of where they came from; with both sources given they must agree."""
    from_devkit = _labels_from_devkit(devkit, val_ground_truth) if devkit is not None else None
    from_csv = _labels_from_loc_csv(loc_val_solution) if loc_val_solution is not None else None
    if from_devkit is not None and from_csv is not None:
        differ = sorted(
            n for n in from_devkit.keys() | from_csv.keys() if from_devkit.get(n) != from_csv.get(n)
        )
        if differ:
            n = differ[0]
            raise UserError(
                f"the devkit and {loc_val_solution} disagree on {len(differ)} validation images, e.g. {n}: "
                f"{from_devkit.get(n)} vs {from_csv.get(n)}; pass only one of them"
            )
    for labels, source in ((from_devkit, devkit), (from_csv, loc_val_solution)):
        # Each label becomes a folder name under <out>/val
        bad = sorted({w for w in (labels or {}).values() if not _is_folder_name(w)})
        if bad:
            raise UserError(f"{source} has class names that cannot be folder names: {', '.join(bad[:5])}")
    if from_devkit is not None:
        return from_devkit, f"devkit {devkit}" + (f" with {val_ground_truth}" if val_ground_truth else "")
    assert from_csv is not None
    return from_csv, str(loc_val_solution)


def _is_folder_name(name: str) -> bool:
    # Not hidden either: splits.find_classes skips dot folders
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


def _strip_dot_slash(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _member_name(archive: str, m: tarfile.TarInfo) -> str:
    """The plain file name of a regular-file member of a flat archive, or a UserError: the official
    archives hold no folders, links or absolute paths, so anything else is refused rather than
    written outside the target folder."""
    name = _strip_dot_slash(m.name)
    parts = name.replace("\\", "/").split("/")
    if m.name.startswith("/") or ".." in parts:
        raise UserError(f"{archive}: member {m.name!r} points outside the extraction folder; refusing it")
    if not m.isfile():
        raise UserError(f"{archive}: member {m.name!r} is a link or special file; refusing it")
    if len(parts) != 1 or not name:
        raise UserError(
            f"{archive}: member {m.name!r} is inside a folder; the official ILSVRC2012 archives are flat"
        )
    return name


def _write_atomic(src: IO[bytes], target: Path) -> None:
    # Written under a hidden temporary name and renamed: a file with its final name is complete,
    # which is what lets a resumed run skip it.
    tmp = target.with_name(f".{target.name}.part")
    with tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, target)


def _is_complete(target: Path, size: int) -> bool:
    try:
        return target.stat().st_size == size
    except FileNotFoundError:
        return False


def _extract_class_tar(fileobj: IO[bytes], archive: str, dest: Path) -> int:
    """Stream one per-class tar into `dest`; returns its number of images. Files already in `dest`
    (from an interrupted run) are complete and skipped."""
    n = 0
    with tarfile.open(fileobj=fileobj, mode="r|") as inner:
        for m in inner:
            if m.isdir():
                continue
            target = dest / _member_name(archive, m)
            if not _is_complete(target, m.size):
                src = inner.extractfile(m)
                assert src is not None
                _write_atomic(src, target)
            n += 1
    return n


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)  # a folder too: Linux syncs its entries this way
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(work: Path, final: Path) -> None:
    """Rename the finished `work` folder to `final`, its files and folders synced to disk first.

    A rerun skips a folder that has its final name, so what it holds must survive a power loss:
    without the sync, the rename can reach the disk before the data and leave a complete-looking
    class of empty or zero-filled files. Threads, because fsync releases the GIL and the file system
    merges concurrent syncs into fewer journal commits (one class: ~1300 files).
    """
    files, folders = [], []
    for dirpath, _, filenames in os.walk(work):
        folders.append(dirpath)
        files += [os.path.join(dirpath, f) for f in filenames]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(_fsync, files))
    for folder in reversed(folders):  # deepest first
        _fsync(folder)
    work.rename(final)
    _fsync(str(final.parent))  # the rename itself


def _count_images(folder: Path) -> int:
    return sum(1 for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def _progress(iterable: Iterable[Any], enabled: bool, **kwargs: Any):
    from tqdm import tqdm

    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)


ARCHIVE_NAMES = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}


def first_line(e: BaseException) -> str:
    """An exception's first line: tarfile lists every compression it tried, one line each."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":")


def _open_tar(path: Path, what: str) -> tarfile.TarFile:
    # Random-access mode, not streaming: resuming seeks past finished members instead of reading them.
    try:
        return tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(
            f"cannot read the {what} archive {path} ({first_line(e)}); expected {ARCHIVE_NAMES[what]}"
        ) from e


@contextlib.contextmanager
def _truncation_is_a_user_error(archive: Path | None) -> Iterator[None]:
    """A damaged or cut-off archive, found while reading it: one line naming it (what was extracted
    so far stays under .partial/ and a rerun continues)."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(
            f"{archive} is damaged or truncated ({type(e).__name__}: {e}); download it again and rerun: "
            "finished classes are kept"
        ) from e


def _check_end_marker(tar: tarfile.TarFile, path: Path, members: int) -> None:
    """A tar ends with zero blocks after its last member; an uncompressed archive cut exactly between
    two members (a stopped download) reads as a complete, smaller one without them. (Compressed
    archives are checked by their own format's end.)"""
    raw = tar.fileobj
    if raw is None or type(raw).__module__ not in ("io", "_io"):
        return
    raw.seek(tar.offset)
    if raw.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise UserError(
            f"{path} ends after {members} members ({tar.offset:,} bytes) without tar's end-of-archive "
            "marker: the file was cut short (ILSVRC2012_img_train.tar holds 1,000 class tars); "
            "download it again"
        )


def _prepare_train(train_tar: Path, out: Path, progress: bool) -> dict[str, int]:
    train_dir, partial = out / "train", out / PARTIAL_DIR / "train"
    with _open_tar(train_tar, "train") as tar:
        class_tars: list[tuple[str, tarfile.TarInfo]] = []
        for m in tar.getmembers():  # reads only the ~1000 member headers
            if m.isdir():
                continue
            name = _member_name(str(train_tar), m)
            if not name.endswith(".tar") or name.startswith("."):
                raise UserError(
                    f"{train_tar}: member {name!r} is not a per-class <wnid>.tar; "
                    "is this ILSVRC2012_img_train.tar?"
                )
            class_tars.append((name[: -len(".tar")], m))
        if not class_tars:
            raise UserError(f"train archive {train_tar} holds no per-class tars")
        _check_end_marker(tar, train_tar, len(class_tars))
        train_dir.mkdir(parents=True, exist_ok=True)
        counts = {"classes": len(class_tars), "images": 0, "extracted_classes": 0, "skipped_classes": 0}
        bar = _progress(class_tars, progress, desc="train", unit="class")
        for wnid, m in bar:
            final = train_dir / wnid
            if final.is_dir():  # renamed into place only when complete
                counts["skipped_classes"] += 1
                counts["images"] += _count_images(final)
            else:
                work = partial / wnid
                work.mkdir(parents=True, exist_ok=True)
                f = tar.extractfile(m)
                assert f is not None
                with f:
                    counts["images"] += _extract_class_tar(f, f"{train_tar}:{m.name}", work)
                _publish(work, final)
                counts["extracted_classes"] += 1
            bar.set_postfix(images=f"{counts['images']:,}")  # tqdm would show 40000 as 4e+4
    return counts


def _val_sources(val_tar: Path | None, val_dir: Path | None) -> Iterator[tuple[str, int, Any]]:
    """(file name, size, opener) of each flat validation image; opener() gives a readable file,
    or for a folder the source path (hard-linked rather than copied where possible)."""
    if val_tar is not None:
        with _open_tar(val_tar, "validation") as tar:
            for m in tar:  # iterating seeks past the data of members we do not read
                if m.isdir():
                    continue
                yield _member_name(str(val_tar), m), m.size, (lambda m=m: tar.extractfile(m))
    else:
        assert val_dir is not None
        for e in sorted(os.scandir(val_dir), key=lambda e: e.name):
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS):
                yield e.name, e.stat().st_size, Path(e.path)


def _drop_mislabelled_leftovers(work: Path, labels: dict[str, str]) -> None:
    """A previous, interrupted run may have filed images under other labels (another label source):
    an image must end up in exactly one class, the one `labels` gives it."""
    if not work.is_dir():
        return
    for class_dir in os.scandir(work):
        if not class_dir.is_dir():
            continue
        for e in os.scandir(class_dir.path):
            if labels.get(e.name.removeprefix(".").removesuffix(".part")) != class_dir.name:
                os.unlink(e.path)


def _prepare_val(
    out: Path, val_tar: Path | None, val_dir: Path | None, labels: dict[str, str], source: str, progress: bool
) -> dict[str, Any]:
    val_final, work = out / "val", out / PARTIAL_DIR / "val"
    if val_final.is_dir():  # the whole split is renamed into place at the end, so it is complete
        classes = [e for e in os.scandir(val_final) if e.is_dir() and not e.name.startswith(".")]
        return {
            "classes": len(classes),
            "images": sum(_count_images(Path(e.path)) for e in classes),
            "skipped": True,
            "labels": source,
        }
    origin = str(val_tar if val_tar is not None else val_dir)
    _drop_mislabelled_leftovers(work, labels)
    seen: set[str] = set()
    bar = _progress(_val_sources(val_tar, val_dir), progress, desc="val", unit="img", total=len(labels))
    for name, size, src in bar:
        wnid = labels.get(name)
        if wnid is None:
            raise UserError(
                f"{origin}: {name} has no label in {source}; is this the ILSVRC2012 validation set "
                "(ILSVRC2012_val_00000001.JPEG ...)?"
            )
        target = work / wnid / name
        if not _is_complete(target, size):
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, Path):
                _link_or_copy(src, target)
            else:
                with src() as f:
                    _write_atomic(f, target)
        seen.add(name)
    if not seen:
        raise UserError(f"{origin} holds no validation images")
    missing = sorted(set(labels) - seen)
    if missing:  # a truncated archive ends quietly at a member boundary: never call that complete
        raise UserError(
            f"{origin} lacks {len(missing)} of the {len(labels)} labelled validation images "
            f"(e.g. {', '.join(missing[:3])}): a truncated download? The {len(seen)} extracted ones are "
            f"kept in {work}; rerun with the complete archive to finish"
        )
    classes = sorted({labels[n] for n in seen})
    _publish(work, val_final)
    return {"classes": len(classes), "images": len(seen), "skipped": False, "labels": source}


def _link_or_copy(src: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)  # same file system: no second copy of 6.4 GB
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, target)


def _remove_empty_dirs(folder: Path) -> None:
    if not folder.is_dir():
        return
    for sub in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def refuse_files_where_folders_go(out: Path, splits: list[str]) -> None:
    """Before anything is extracted: a file where <out>/<split> or <out>/.partial must go is one
    error (it would fail only at the split's final rename, after the whole extraction)."""
    for name in (*splits, PARTIAL_DIR):
        path = out / name
        if path.exists() and not path.is_dir():
            raise UserError(
                f"{path} is a file; expected the {name} folder (written as {path}/<class>/): move the "
                "file away and rerun"
            )


def _require(path: Path | None, what: str, kind: str = "file") -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser()
    ok = path.is_dir() if kind == "folder" else path.exists()
    if not ok:
        raise UserError(f"{what} {path} does not exist" + (" or is not a folder" if kind == "folder" else ""))
    return path


def prepare_imagenet(
    out: Path,
    *,
    train_tar: Path | None,
    val_tar: Path | None,
    devkit: Path | None,
    val_dir: Path | None = None,
    val_ground_truth: Path | None = None,
    loc_val_solution: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write `<out>/train/<wnid>/*.JPEG` and/or `<out>/val/<wnid>/*.JPEG`; returns summary counts.

    train_tar: ILSVRC2012_img_train.tar (a tar of per-class `<wnid>.tar`).
    val_tar or val_dir: ILSVRC2012_img_val.tar, or a folder of the same flat ILSVRC2012_val_*.JPEG.
    Validation labels: `devkit` (ILSVRC2012_devkit_t12.tar.gz or its extracted folder; `val_ground_truth`
    replaces its ILSVRC2012_validation_ground_truth.txt) and/or Kaggle's `loc_val_solution` csv.

    Idempotent and resumable: a train class is extracted under <out>/.partial and renamed into place
    when complete, the validation split likewise as a whole; files are written under temporary names,
    so a rerun after an interruption skips finished classes and files and extracts nothing twice.
    """
    out = Path(out).expanduser()
    train_tar = _require(train_tar, "train archive")
    val_tar = _require(val_tar, "validation archive")
    val_dir = _require(val_dir, "validation folder", kind="folder")
    devkit = _require(devkit, "devkit")
    val_ground_truth = _require(val_ground_truth, "validation ground truth")
    loc_val_solution = _require(loc_val_solution, "LOC_val_solution.csv")
    if train_tar is None and val_tar is None and val_dir is None:
        raise UserError("nothing to prepare: give the train archive and/or the validation archive or folder")
    if val_tar is not None and val_dir is not None:
        raise UserError(f"give the validation images once: archive {val_tar} or folder {val_dir}, not both")
    has_val = val_tar is not None or val_dir is not None
    if has_val and devkit is None and loc_val_solution is None:
        raise UserError(
            "validation images need labels: the devkit (ILSVRC2012_devkit_t12.tar.gz) or LOC_val_solution.csv"
        )
    if val_ground_truth is not None and devkit is None:
        raise UserError(
            f"{val_ground_truth} holds ILSVRC2012_IDs, which the devkit's meta.mat maps to wnids: "
            "give the devkit too (archive or extracted folder)"
        )
    if not has_val and (devkit is not None or val_ground_truth is not None or loc_val_solution is not None):
        raise UserError("validation labels were given without validation images (the archive or folder)")
    if val_dir is not None and val_dir.resolve() == (out / "val").resolve():
        raise UserError(f"validation folder {val_dir} is <out>/val itself; move it or choose another out")

    # Labels first: a bad devkit should fail before hours of train extraction, not after.
    labels, label_source = _val_labels(devkit, val_ground_truth, loc_val_solution) if has_val else ({}, "")
    out.mkdir(parents=True, exist_ok=True)
    refuse_files_where_folders_go(
        out, [s for s, wanted in (("train", train_tar), ("val", has_val)) if wanted]
    )
    summary: dict[str, Any] = {"out": str(out), "train": None, "val": None}
    if train_tar is not None:
        with _truncation_is_a_user_error(train_tar):
            summary["train"] = _prepare_train(train_tar, out, progress)
    if has_val:
        with _truncation_is_a_user_error(val_tar or val_dir):
            summary["val"] = _prepare_val(out, val_tar, val_dir, labels, label_source, progress)
    _remove_empty_dirs(out / PARTIAL_DIR)
    return summary
