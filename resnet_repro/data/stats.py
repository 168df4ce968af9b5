"""The statistics file: a JSON `StatsRecord` beside the dataset with the per-channel mean / std of
the training images, and a fingerprint of the file list it was computed on, so training can refuse
stale stats and stats that saw holdout or test images.

The numbers themselves (exact per-channel sums of the decoded pixels, merged over shards) come from
resnet_repro.data.channel_sums.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_repro.config import UserError
from resnet_repro.data.channel_sums import PartialSums, finalize, mean_stderr
from resnet_repro.data.holdout import PURPOSE_SAMPLE, allocate, stratified_indices
from resnet_repro.data.splits import FileList

STATS_DIR = ".resnet_repro_stats"
STATS_FROM = ("train", "train_minus_holdout")
FORMAT = 1
# Up to this many files the record lists a short hash of every file path (`contents`), so the
# guard can name contaminating files; above it (ImageNet train: 1.28M) the fingerprint alone guards.
CONTENTS_LIMIT = 200_000
PATH_HASH_CHARS = 12  # 48 bits: ~1e-5 chance of any collision between 200k and 50k paths


# --------------------------------------------------------------------------------------- file lists
def relative_paths(files: FileList | Sequence[str], root: str | os.PathLike) -> list[str]:
    """Paths relative to the data root, with "/" separators (the same on every machine)."""
    paths = files.files if isinstance(files, FileList) else files
    root_abs = os.path.abspath(os.path.expanduser(os.fspath(root)))
    # list_split builds paths as str(Path(root).expanduser() / ...): strip that prefix cheaply
    # (1.28M relpath calls take seconds); anything else goes through relpath
    prefixes = (os.path.join(str(Path(root).expanduser()), ""), os.path.join(root_abs, ""))
    out = []
    for f in paths:
        for p in prefixes:
            if f.startswith(p):
                rel = f[len(p) :]
                break
        else:
            rel = os.path.relpath(os.path.abspath(f), root_abs)
            if rel == ".." or rel.startswith(".." + os.sep):
                raise UserError(f"image {f} is not under data.root {root_abs}")
        out.append(rel.replace(os.sep, "/"))
    return out


def _file_sizes(paths: Sequence[str]) -> list[int]:
    """os.stat every file; threads, because on network filesystems each stat is a round trip."""

    def sizes(chunk: Sequence[str]) -> list[int]:
        try:
            return [os.stat(p).st_size for p in chunk]
        except FileNotFoundError as e:
            raise UserError(f"image {e.filename} is listed in the split but no longer exists") from e

    chunks = [paths[i : i + 4096] for i in range(0, len(paths), 4096)]
    if len(chunks) <= 1:
        return sizes(paths)
    with ThreadPoolExecutor(max_workers=min(16, len(chunks))) as pool:
        return [s for part in pool.map(sizes, chunks) for s in part]


def fingerprint(files: FileList | Sequence[str], root: str | os.PathLike) -> str:
    """sha256 over the sorted "<path relative to root>\\t<size in bytes>" lines of the files.

    Equal on two machines with the same data layout, whatever the absolute root; changes when a
    file is added, removed, renamed or replaced by one of another size.
    """
    paths = files.files if isinstance(files, FileList) else list(files)
    lines = sorted(
        f"{rel}\t{size}\n" for rel, size in zip(relative_paths(paths, root), _file_sizes(paths), strict=True)
    )
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
    return h.hexdigest()


def path_hash(relative_path: str) -> str:
    return hashlib.sha256(relative_path.encode()).hexdigest()[:PATH_HASH_CHARS]


def contents_of(files: FileList | Sequence[str], root: str | os.PathLike) -> list[str] | None:
    """Sorted short path hashes of the files, or None above CONTENTS_LIMIT files."""
    paths = files.files if isinstance(files, FileList) else files
    if len(paths) > CONTENTS_LIMIT:
        return None
    return sorted(path_hash(r) for r in relative_paths(paths, root))


def stratified_sample(files: FileList, max_images: int, seed: int) -> FileList:
    """At most `max_images` of `files`, each class in proportion to its size (largest-remainder
    rounding), chosen by a seeded permutation inside each class; original order kept."""
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise UserError(f"data.stats.max_images={max_images!r} must be a positive number of images or null")
    if max_images >= len(files):
        return files
    counts_by_label: dict[int, int] = {}
    for label in files.labels:
        counts_by_label[label] = counts_by_label.get(label, 0) + 1
    labels = sorted(counts_by_label)
    counts = [counts_by_label[lb] for lb in labels]
    alloc = allocate(counts, max_images, counts)
    chosen = stratified_indices(files.labels, dict(zip(labels, alloc, strict=True)), seed, PURPOSE_SAMPLE)
    return FileList(
        split=files.split,
        files=tuple(files.files[i] for i in chosen),
        labels=tuple(files.labels[i] for i in chosen),
        classes=files.classes,
    )


# ------------------------------------------------------------------------------------ the stats file
@dataclass
class StatsRecord:
    """What `resnet-repro stats` writes. `fingerprint`, `file_count` and `contents` describe the
    selection the images were drawn from (all of it, or a sample of `max_images` of it)."""

    mean: list[float]  # per channel (R, G, B), [0, 1] pixel scale
    std: list[float]  # population std over all pixels
    num_images: int  # images actually read (< file_count when sampled)
    num_pixels: int  # pixels per channel
    split: str  # "train" or "train_minus_holdout"
    fingerprint: str  # fingerprint() of the selection
    file_count: int  # images in the selection
    holdout: dict[str, Any] | None  # {"size": ..., "seed": ...} of the holdout carved out, or null
    version: str  # resnet_repro.__version__ that wrote it
    elapsed_s: float
    resize_shorter: int | None = None
    decoder: str = "dali"  # what decoded the images: dali, or torchvision's pil / decode_jpeg
    max_images: int | None = None  # null: every image of the selection
    sample_seed: int | None = None
    mean_stderr: list[float] | None = None  # per channel, when sampled
    # sorted path_hash() of the selection's files; null above CONTENTS_LIMIT files
    contents: list[str] | None = None
    format: int = FORMAT
    created: str = field(default="")  # UTC ISO time


def build_record(
    sums: PartialSums,
    *,
    selection: FileList,
    root: str | os.PathLike,
    split: str,
    holdout: dict[str, Any] | None,
    elapsed_s: float,
    resize_shorter: int | None,
    max_images: int | None = None,
    sample_seed: int | None = None,
    decoder: str = "dali",
    selection_fingerprint: str | None = None,
) -> StatsRecord:
    """The record for sums computed over `selection` (or a `stratified_sample` of it).
    `selection_fingerprint`: fingerprint(selection, root) when the caller has it already (it stats
    every file: seconds for ImageNet on a local disk, minutes on network storage)."""
    import datetime

    from resnet_repro import __version__

    if split not in STATS_FROM:
        raise ValueError(f"split={split!r} is not one of {STATS_FROM}")
    mean, std = finalize(sums)
    sampled = max_images is not None and sums.num_images < len(selection)
    if selection_fingerprint is None:
        selection_fingerprint = fingerprint(selection, root)
    return StatsRecord(
        mean=mean,
        std=std,
        num_images=sums.num_images,
        num_pixels=sums.num_pixels,
        split=split,
        fingerprint=selection_fingerprint,
        file_count=len(selection),
        holdout=holdout,
        version=__version__,
        elapsed_s=round(elapsed_s, 3),
        resize_shorter=resize_shorter,
        decoder=decoder,
        max_images=max_images if sampled else None,
        sample_seed=sample_seed if sampled else None,
        mean_stderr=mean_stderr(sums) if sampled else None,
        contents=contents_of(selection, root),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def default_stats_path(root: str | os.PathLike, fingerprint: str) -> Path:
    """<root>/.resnet_repro_stats/<fingerprint[:16]>.json: beside the data, one file per selection.
    (Hidden, so list_split never mistakes it for a split or a class.)"""
    return Path(root).expanduser() / STATS_DIR / f"{fingerprint[:16]}.json"


def write_stats_file(path: str | os.PathLike, record: StatsRecord) -> Path:
    """Write atomically (temporary file in the same folder, then rename): a reader never sees half a file."""
    from resnet_repro.checkpoint import write_text_atomic

    path = Path(path).expanduser()
    text = json.dumps(dataclasses.asdict(record), indent=1) + "\n"
    try:
        # atomic, and readable by the group like a plain file: other users of a shared dataset
        # copy read the same stats file
        write_text_atomic(path, text)
    except OSError as e:  # read-only mount, permissions, disk full: keep the numbers of the pass
        raise UserError(
            f"cannot write the stats file {path} ({e.strerror or e}); the pass found mean={record.mean} "
            f"std={record.std}; set data.stats.path to a writable file and rerun"
        ) from e
    return path


def check_writable(path: str | os.PathLike) -> None:
    """Fail before an hours-long pass, not after it, when the stats file cannot be written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(
            f"data.stats.path={path} is a folder: name a file (e.g. data.stats.path={path / 'stats.json'})"
        )
    in_a_file = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if in_a_file is not None:
        raise UserError(
            f"data.stats.path={path}: {in_a_file} is a file, not a folder; name a file in a folder"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"cannot write the stats file {path} ({e.strerror or e}); the dataset folder may be read-only: "
            "set data.stats.path to a writable file (e.g. data.stats.path=~/imagenet_stats.json)"
        ) from e


def read_stats_file(path: str | os.PathLike) -> StatsRecord:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"stats file {path} does not exist; compute it with `resnet-repro stats`")
    try:
        data = json.loads(path.read_text())
    except PermissionError as e:
        raise UserError(
            f"stats file {path} is not readable (permission denied); ask its owner to make it readable, "
            "or set data.stats.path to a file of your own"
        ) from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"stats file {path} is not valid JSON ({e}); recompute with `resnet-repro stats`"
        ) from e
    if not isinstance(data, dict):
        raise UserError(f"stats file {path} does not hold a JSON object; recompute with `resnet-repro stats`")
    _check_values(data, path)
    if data.get("format", FORMAT) > FORMAT:
        raise UserError(
            f"stats file {path} has format {data['format']}, newer than this resnet-repro reads ({FORMAT})"
        )
    names = {f.name for f in dataclasses.fields(StatsRecord)}
    required = {f.name for f in dataclasses.fields(StatsRecord) if f.default is dataclasses.MISSING}
    required -= {"created"}
    missing = sorted(required - data.keys())
    if missing:
        raise UserError(f"stats file {path} lacks {', '.join(missing)}; recompute with `resnet-repro stats`")
    record = StatsRecord(**{k: v for k, v in data.items() if k in names})
    if record.split not in STATS_FROM:
        raise UserError(f"stats file {path} has split={record.split!r}, not one of {', '.join(STATS_FROM)}")
    return record


def _check_values(data: dict[str, Any], path: Path) -> None:
    """Every value a pass writes has its type and range: one line naming the first that does not
    (a hand edit, another tool's file), not a TypeError later or a run normalized by nonsense."""

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def three(low: float, high: float, open_low: bool = False) -> Any:
        def ok(v: Any) -> bool:
            inside = (lambda x: low < x <= high) if open_low else (lambda x: low <= x <= high)
            return isinstance(v, list) and len(v) == 3 and all(number(x) and inside(x) for x in v)

        return ok

    rules = {
        "mean": (three(0.0, 1.0), "3 numbers in [0, 1] (pixel scale)"),
        # the population std of values in [0, 1] is at most 0.5
        "std": (three(0.0, 0.5, open_low=True), "3 numbers in (0, 0.5] (pixel scale)"),
        "format": (whole, "a whole number"),
        "fingerprint": (lambda v: isinstance(v, str), "text"),
        "split": (lambda v: isinstance(v, str), "text"),
        "num_images": (whole, "a whole number >= 0"),
        "num_pixels": (whole, "a whole number >= 0"),
        "file_count": (whole, "a whole number >= 0"),
    }
    for key, (ok, expected) in rules.items():
        if key in data and not ok(data[key]):
            raise UserError(
                f"stats file {path} has {key}={data[key]!r}: {expected} expected; "
                "recompute with `resnet-repro stats`"
            )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _first(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def check_stats_file(
    record: StatsRecord,
    *,
    train_selection: FileList,
    test: FileList,
    holdout: FileList | None,
    stats_from: str,
    root: str | os.PathLike,
    allow_mismatch: bool = False,
    path: str | os.PathLike | None = None,
    expected_fingerprint: str | None = None,
) -> list[str]:
    """Refuse stats that saw images they must not have, or that belong to another file list.
    `expected_fingerprint`: fingerprint(train_selection, root) when the caller has it already.

    `train_selection` is what the stats must have been computed on: the training split, or the
    training split minus the holdout when `stats_from="train_minus_holdout"`.
    1. Contamination: when the record lists its files (`contents`, up to CONTENTS_LIMIT files), any
       test image in it, or any holdout image under train_minus_holdout, is an error naming them.
       Under stats_from="train" the holdout images are in the stats on purpose.
    2. Staleness / another selection: the record's fingerprint must equal the fingerprint of
       `train_selection` (paths and sizes). For ImageNet train (1.28M files > CONTENTS_LIMIT) this
       equality is the whole guard: the record has no file list, so a mismatch cannot say which files
       differ, but equality proves the stats came from exactly the expected files.
    `allow_mismatch=True` turns a fingerprint mismatch into a returned warning (contamination stays
    an error). Returns the warnings (empty when all is well). Messages are one line.
    """
    label = f"stats file {path}" if path is not None else "the stats file"
    if stats_from not in STATS_FROM:
        raise UserError(f"data.holdout.stats_from={stats_from!r} is not one of {', '.join(STATS_FROM)}")
    if stats_from == "train_minus_holdout" and holdout is None:
        raise UserError("data.holdout.stats_from=train_minus_holdout needs a holdout; set data.holdout.size")
    contents = set(record.contents) if record.contents is not None else None
    if contents is not None:
        groups = [("test", test)]
        if stats_from == "train_minus_holdout" and holdout is not None:
            groups.append(("holdout", holdout))
        for name, files in groups:
            hits = [r for r in relative_paths(files, root) if path_hash(r) in contents]
            if hits:
                raise UserError(
                    f"{label} includes {_count(len(hits), 'image')} of the {name} split ({_first(hits)}); "
                    f"recompute with `resnet-repro stats`"
                )
    expected = expected_fingerprint or fingerprint(train_selection, root)
    if record.fingerprint == expected:
        return []
    detail = ""
    if contents is not None:
        rel = relative_paths(train_selection, root)
        absent = [r for r in rel if path_hash(r) not in contents]
        extra = len(contents) - (len(rel) - len(absent))
        parts = []
        if absent:
            parts.append(
                f"{_count(len(absent), 'file')} of the {stats_from} selection not in it: {_first(absent)}"
            )
        if extra > 0:
            parts.append(f"{_count(extra, 'file')} in it not in the selection")
        detail = "; " + "; ".join(parts) if parts else "; same paths, different file sizes"
    msg = (
        f"{label} was computed on a different file list (fingerprint {record.fingerprint[:12]} != "
        f"{expected[:12]}{detail}): stale or for another selection (it is for split "
        f"{record.split!r}, {record.file_count} files; expected {stats_from!r}, {len(train_selection)} "
        f"files); recompute with `resnet-repro stats` or set data.stats.allow_mismatch=true"
    )
    if allow_mismatch:
        if contents is None:
            msg += " (without a file list in the record, holdout/test images in it cannot be ruled out)"
        return [msg]
    raise UserError(msg)


def record_settings(
    *, resize_shorter: int | None, max_images: int | None, sample_seed: int, decoder: str, selection_size: int
) -> dict[str, Any]:
    """The settings a record computed with these options holds, as `build_record` writes them: a
    sample no smaller than the selection is the whole selection (max_images and seed recorded null)."""
    sampled = max_images is not None and max_images < selection_size
    return {
        "resize_shorter": resize_shorter,
        "max_images": max_images if sampled else None,
        "sample_seed": sample_seed if sampled else None,
        "decoder": decoder,
    }


# the config key each recorded setting comes from, for the error message
SETTING_KEYS = {
    "resize_shorter": "data.stats.resize",
    "max_images": "data.stats.max_images",
    "sample_seed": "data.stats.seed",
    "decoder": "decoder (data.backend / data.decoder)",
}


def check_settings(
    record: StatsRecord, expected: dict[str, Any], path: str | os.PathLike | None = None
) -> None:
    """Refuse a record computed with other settings (`record_settings` of the run) than the run asks
    for: statistics at another resolution, on another sample or from another decoder are other numbers."""
    label = f"stats file {path}" if path is not None else "the stats file"
    for name, want in expected.items():
        have = getattr(record, name)
        if have != want:
            raise UserError(
                f"{label} was computed with {SETTING_KEYS[name]}={have}, but this run asks for "
                f"{SETTING_KEYS[name]}={want}; recompute it with `resnet-repro stats` (same overrides; it "
                "replaces the file) or point data.stats.path at another file"
            )
