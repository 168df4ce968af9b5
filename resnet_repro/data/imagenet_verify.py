"""Verify a prepared image folder: count images per split and class (against ImageNet-1K's numbers
when asked), decode every image with the same DALI decoder the training pipeline uses and list the
files that fail, that it decodes only with libjpeg's warnings of damaged data, or that are not what
their name says (PNG data in a .JPEG, CMYK and grayscale JPEGs).
Preparing ImageNet from the official archives is resnet_repro.data.imagenet_prepare.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_repro.config import UserError
from resnet_repro.data.splits import IMAGE_EXTENSIONS, image_names, text_name

# ImageNet-1K (ILSVRC2012-CLS) sizes
NUM_CLASSES = 1000
TRAIN_IMAGES = 1_281_167
TRAIN_PER_CLASS = (732, 1300)  # smallest and largest training class
VAL_IMAGES = 50_000
VAL_PER_CLASS = 50

# Issue kinds from verify_data. Errors break training or evaluation, or feed it damaged pixels
# ("corrupt": DALI decodes the file with libjpeg's warning of damaged data and fills what it could
# not read); notes are files DALI decodes correctly but other tools may not (the PIL backend, a
# colour-managed viewer), or whose only warning is about bytes after the image data.
ERROR_KINDS = ("unreadable", "truncated", "undecodable", "corrupt")
NOTE_KINDS = ("wrong_format", "cmyk", "grayscale", "unusual_mode", "jpeg_warning")

_WNID = re.compile(r"n\d{8}")
# libjpeg(-turbo)'s messages about the data of a file DALI decodes all the same: the warnings of
# jerror.h (JWRN_*: "Corrupt JPEG data: ...", "Premature end of JPEG file", ...), and the errors its
# decoder prints before decoding the file another way ("Unsupported marker type", "Unsupported JPEG
# process", ...). libjpeg writes them to the standard error, not to the caller.
_LIBJPEG_MESSAGE = re.compile(
    r"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression"
    r"|Unsupported marker type|Unsupported JPEG process|Invalid JPEG file structure|Input file read error"
    r"|Bogus |Huffman table 0x|Quantization table 0x|Invalid component ID|Not a JPEG file)"
)
# Bytes between the image data and its end marker: padding some encoders leave (the same byte
# repeated: the image decodes whole) or, when they vary, data the decoder misread as it went
_TRAILING_BYTES = re.compile(r"^Corrupt JPEG data: (\d+) extraneous bytes before marker 0xd9$")
_GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")
_BATCH = 64  # images per DALI decode call
_EXAMPLES = 5  # class names a count problem lists before "..."


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------


@dataclass
class _Inspected:
    """What reading a file and parsing its header (PIL, no pixel decode) found."""

    path: str
    split: str
    data: bytes | None = None
    is_jpeg: bool = False  # JPEG data, whatever the name says
    has_eoi: bool = True
    open_error: str | None = None
    notes: list[dict[str, str]] = field(default_factory=list)


def _inspect(path: str, split: str, keep_bytes: bool) -> _Inspected:
    from PIL import Image, UnidentifiedImageError

    r = _Inspected(path, split)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        r.open_error = f"cannot read: {e}"
        return r
    r.data = data if keep_bytes else None
    if not data:
        r.open_error = "empty file"
        return r
    r.is_jpeg = data[:3] == b"\xff\xd8\xff"
    # A complete JPEG ends with the end-of-image marker FF D9 (some writers pad with zeros)
    r.has_eoi = not r.is_jpeg or data.rstrip(b"\0").endswith(b"\xff\xd9")
    try:
        im = Image.open(io.BytesIO(data))  # header only: format, mode and size
    except UnidentifiedImageError:
        r.open_error = "PIL cannot identify it: no image format it knows"
        return r
    except Exception as e:  # a damaged header: SyntaxError, OSError, ValueError ...
        r.open_error = f"PIL cannot read its header: {e}"
        return r
    fmt, mode = im.format, im.mode
    expected = "PNG" if path.lower().endswith(".png") else "JPEG"
    if fmt != expected:
        r.notes.append(_issue(r, "wrong_format", f"not a {expected}: {fmt} data, mode {mode}"))
    if mode == "CMYK":
        if "adobe" in im.info:
            detail = f"mode CMYK, Adobe marker (transform {im.info.get('adobe_transform')})"
        else:
            # No Adobe APP14 marker: PIL (and torchvision's decode_jpeg) read the channels as
            # Adobe-inverted CMYK all the same, DALI's CPU decoder as plain CMYK, so the backends
            # give different colours (measured: the inverted data PIL writes comes out black in DALI)
            detail = (
                "mode CMYK, no Adobe marker: DALI and PIL decode it to different colours (PIL "
                "assumes Adobe-inverted CMYK, DALI plain CMYK; inverted data decodes black in DALI)"
            )
        r.notes.append(_issue(r, "cmyk", detail))
    elif mode in _GRAYSCALE_MODES:
        r.notes.append(_issue(r, "grayscale", f"mode {mode}"))
    elif mode != "RGB":
        r.notes.append(_issue(r, "unusual_mode", f"mode {mode}"))
    return r


def _issue(r: _Inspected, kind: str, detail: str) -> dict[str, str]:
    return {"split": r.split, "path": r.path, "kind": kind, "detail": detail}


def _pil_load_error(data: bytes) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:
        return str(e) or type(e).__name__
    return None


def _warning_issue(r: _Inspected, warnings: list[str]) -> dict[str, str] | None:
    """The issue for libjpeg's messages while DALI decoded a file: an error, as the data is damaged
    (DALI fills what it could not read, usually with grey), unless the only message is about padding
    before the end marker (a note)."""
    if not warnings:
        return None
    said = "; ".join(dict.fromkeys(warnings))  # in order, each once
    if r.data is not None and all(_only_padding(r.data, w) for w in warnings):
        return _issue(r, "jpeg_warning", f"DALI decodes it with libjpeg's warning: {said} (padding)")
    pil = _pil_load_error(r.data) if r.data is not None else None
    return _issue(
        r,
        "corrupt",
        f"DALI decodes it with libjpeg's warnings: {said} (what it could not read comes out grey or "
        f"garbled); {f'PIL: {pil}' if pil else 'PIL decodes it'}",
    )


def _only_padding(data: bytes, warning: str) -> bool:
    """Whether `warning` is about bytes before the end marker that are one byte repeated (padding)."""
    m = _TRAILING_BYTES.match(warning)
    if not m:
        return False
    n = int(m.group(1))
    body = data.rstrip(b"\0")
    return body.endswith(b"\xff\xd9") and len(body) >= n + 2 and len(set(body[-2 - n : -2])) <= 1


def _failure(r: _Inspected, dali_error: str | None, decode: bool) -> dict[str, str] | None:
    """The error issue for a file, or None when it is usable."""
    if decode:
        if dali_error is None and r.open_error is None:
            return None
    elif r.open_error is None and r.has_eoi:
        return None
    parts = []
    if dali_error is not None:
        parts.append(f"DALI: {dali_error}")
    if r.open_error is not None:
        parts.append(r.open_error)
    elif r.data is not None:
        pil = _pil_load_error(r.data)
        parts.append(f"PIL: {pil}" if pil else "PIL decodes it")
    if not r.has_eoi:
        parts.append("no JPEG end-of-image marker (FF D9) at the end")
    if r.open_error is not None and r.open_error.startswith(("cannot read", "empty")):
        kind = "unreadable"
    elif not r.has_eoi or "truncated" in " ".join(parts).lower():
        kind = "truncated"
    else:
        kind = "undecodable"
    return _issue(r, kind, "; ".join(parts))


class _DaliDecoder:
    """Decodes batches of images with DALI on the CPU (the decoder the training pipeline uses) in a
    process of its own, and says, per file, the error that stopped it or the warnings libjpeg printed
    while decoding it.

    DALI 2.4's CPU decoder can kill its process (SIGSEGV) when one file of a batch cannot be decoded
    (resnet_repro.data.stats_process has the measurements): a non-image file or a truncated JPEG
    among good ones killed verify-data 4 times in 4. In a child, such a death costs a new child: the
    batch is bisected in fresh ones until the file is alone (DALI then raises for it, or it is the
    one the decoder crashed on). A child that cannot start (DALI broken) is an error, not a crash
    of every file. The child dies with this process and leaves Ctrl-C and SLURM's signals to it."""

    def __init__(
        self,
        batch_size: int,
        num_threads: int,
        work: Callable[[list[str]], list] | None = None,
        start: Callable[..., None] | None = None,
    ) -> None:
        import importlib.util

        if importlib.util.find_spec("nvidia.dali") is None:
            raise UserError("decoding needs NVIDIA DALI (nvidia-dali-*); or verify without decoding")
        self._args = (os.getpid(), batch_size, num_threads)
        self._work = work or _decode_in_child
        self._start_child = start or _start_child
        self._pool: ProcessPoolExecutor | None = None
        self._start()  # fail here, in one line, if the decoder cannot be built

    def _start(self) -> None:
        # PYTHONSAFEPATH: the child starts with `python -c`, which would put the working directory
        # first on its path while it imports its first modules (a socket.py there would shadow
        # the standard library's)
        saved = os.environ.get("PYTHONSAFEPATH")
        os.environ["PYTHONSAFEPATH"] = "1"
        try:
            self._pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"))
            ready = self._pool.submit(self._start_child, *self._args)  # spawns the child now
        finally:
            if saved is None:
                del os.environ["PYTHONSAFEPATH"]
            else:
                os.environ["PYTHONSAFEPATH"] = saved
        try:
            ready.result()
        except BrokenProcessPool as e:
            self.close()
            raise UserError("the decoding process died while it started; or verify without decoding") from e
        except Exception as e:  # what building DALI's pipeline raised there, sent back
            self.close()
            raise UserError(
                f"the decoding process cannot build DALI's decoder ({type(e).__name__}: {e}); reinstall "
                "nvidia-dali-cuda130, or verify without decoding (--no-decode)"
            ) from e

    def problems(self, paths: list[str]) -> list[tuple[str | None, list[str]]]:
        """Per file: the error DALI stopped on (or None), and libjpeg's warnings."""
        if not paths:
            return []
        if self._pool is None:
            self._start()
        assert self._pool is not None
        try:
            return self._pool.submit(self._work, paths).result()
        except BrokenProcessPool:
            self.close()  # the child died: the next call starts another
            if len(paths) == 1:
                return [("DALI's decoder crashed decoding it (the process died)", [])]
        mid = len(paths) // 2
        return self.problems(paths[:mid]) + self.problems(paths[mid:])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class _InProcessDecoder:
    """The child's DALI pipeline: a batch that fails or warns is bisected until the files behind it
    are isolated (DALI fails a whole batch on one bad file, and libjpeg's warnings name no file)."""

    def __init__(self, batch_size: int, num_threads: int) -> None:
        from nvidia.dali import fn, pipeline_def, types

        def define():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            # Only the shapes leave the pipeline: decoding is the test, the pixels are not needed.
            return fn.decoders.image(encoded, device="cpu", output_type=types.RGB).shape()

        self._make = lambda: pipeline_def(define)(
            batch_size=batch_size, num_threads=num_threads, device_id=None, prefetch_queue_depth=1
        )
        self._pipe = self._build()

    def _build(self):
        pipe = self._make()
        pipe.build()
        return pipe

    def problems(self, datas: list[bytes]) -> list[tuple[str | None, list[str]]]:
        import numpy as np

        if not datas:
            return []
        printed: list[str] = []
        try:
            with _libjpeg_warnings(printed):
                self._pipe.run(encoded=[np.frombuffer(d, dtype=np.uint8) for d in datas])
        except Exception as e:  # DALI raises RuntimeError (sometimes others) for any failed sample
            self._pipe = self._build()  # a pipeline that raised is no longer valid
            if len(datas) == 1:
                return [(_dali_message(e), printed)]
        else:
            if not printed:
                return [(None, [])] * len(datas)
            if len(datas) == 1:
                return [(None, printed)]
        mid = len(datas) // 2
        return self.problems(datas[:mid]) + self.problems(datas[mid:])


_child_decoder: _InProcessDecoder | None = None


def _start_child(parent: int, batch_size: int, num_threads: int) -> None:
    """The child's first call: it dies with its parent, leaves the parent's signals to it, and
    builds the pipeline (what that raises goes back to the parent)."""
    from resnet_repro.data.stats_process import leave_signals_to_parent

    global _child_decoder
    leave_signals_to_parent(parent)
    _child_decoder = _InProcessDecoder(batch_size, num_threads)


def _decode_in_child(paths: list[str]) -> list[tuple[str | None, list[str]]]:
    """In the child: the files read again (the parent read them a moment ago: from the page cache)
    and decoded."""
    assert _child_decoder is not None
    datas = []
    for path in paths:
        with open(path, "rb") as f:
            datas.append(f.read())
    return _child_decoder.problems(datas)


@contextlib.contextmanager
def _libjpeg_warnings(found: list[str]):
    """Collects into `found` the libjpeg warnings written to the standard error (file descriptor 2:
    the decoder's C code writes there directly) inside the block; every other line written there
    meanwhile is written back when the block ends."""
    import sys

    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            others = []
            for line in captured.read().decode(errors="replace").splitlines():
                (found if _LIBJPEG_MESSAGE.match(line.strip()) else others).append(line.strip() or line)
            if others:
                sys.stderr.write("\n".join(others) + "\n")
                sys.stderr.flush()


def _dali_message(e: Exception) -> str:
    """The informative lines of a DALI error (it repeats a pipeline traceback around them)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if "encountered:" in lines:
        lines = lines[lines.index("encountered:") + 1 :]
    lines = [ln for ln in lines if not ln.startswith(("Current pipeline object", "C++ context"))]
    return " ".join(lines[:2]).rstrip(" :") or type(e).__name__


def _scan_split(split_dir: Path) -> tuple[dict[str, list[str]], int]:
    """Image paths per class folder, and the number of images lying directly in the split folder."""
    per_class: dict[str, list[str]] = {}
    loose = 0
    for e in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if e.name.startswith("."):
            continue
        if e.is_dir():
            per_class[text_name(split_dir, e.name)] = [os.path.join(e.path, n) for n in image_names(e.path)]
        elif e.name.lower().endswith(IMAGE_EXTENSIONS):
            loose += 1
    return per_class, loose


def _names(items: list[str], k: int = _EXAMPLES) -> str:
    return ", ".join(items[:k]) + (", ..." if len(items) > k else "")


def _layout_problems(splits: dict[str, dict[str, Any]]) -> list[str]:
    """Problems of any folder: loose images, empty classes, evaluation classes unknown to train."""
    problems: list[str] = []
    for split, s in splits.items():
        if s["loose_images"]:
            problems.append(
                f"{split}: {s['loose_images']} images lie outside class folders; "
                "expected <split>/<class>/<image> (prepare-imagenet sorts the flat validation set)"
            )
        empty = [c for c, n in s["per_class"].items() if n == 0]
        if empty:  # one line per split, not per class: a miniature of 1000 classes gives 1000
            problems.append(f"{split}: {len(empty)} empty class folders: {_names(empty)}")
    train = splits.get("train")
    for split, s in splits.items():
        if split == "train" or train is None:
            continue
        extra = sorted(set(s["per_class"]) - set(train["per_class"]))
        if extra:
            problems.append(f"{split}: {len(extra)} classes not in train: {_names(extra, 10)}")
    return problems


def _imagenet_problems(splits: dict[str, dict[str, Any]], subset: bool = False) -> list[str]:
    """Where the train and val splits differ from ImageNet-1K's numbers, one line per split and kind
    (`subset`: a class subset, whose totals are not ImageNet's)."""
    problems: list[str] = []
    expected = {
        "train": (TRAIN_IMAGES, TRAIN_PER_CLASS, "732 to 1300"),
        "val": (VAL_IMAGES, (VAL_PER_CLASS, VAL_PER_CLASS), str(VAL_PER_CLASS)),
    }
    for split, (total, (lo, hi), per_class_text) in expected.items():
        s = splits.get(split)
        if s is None:
            problems.append(f"{split}: split folder is missing")
            continue
        if s["classes"] != NUM_CLASSES and not subset:
            problems.append(f"{split}: {s['classes']} classes, expected {NUM_CLASSES}")
        if s["images"] != total and not subset:
            problems.append(f"{split}: {s['images']:,} images, expected {total:,}")
        not_wnid = [c for c in s["per_class"] if not _WNID.fullmatch(c)]
        if not_wnid:
            problems.append(f"{split}: {len(not_wnid)} folders are not wnids: {_names(not_wnid, 10)}")
        off = [f"{c} ({n})" for c, n in s["per_class"].items() if n and not lo <= n <= hi]
        if off:  # the per-class numbers are all in the summary's splits.<split>.per_class
            problems.append(f"{split}: {len(off)} classes do not have {per_class_text} images: {_names(off)}")
    train = splits.get("train")
    if train is not None and "val" in splits:
        missing = sorted(set(train["per_class"]) - set(splits["val"]["per_class"]))
        if missing:
            problems.append(f"val: {len(missing)} train classes missing: {_names(missing, 10)}")
    return problems


def _count_problems(
    splits: dict[str, dict[str, Any]], expect_imagenet: bool, subset: bool = False
) -> list[str]:
    return _layout_problems(splits) + (_imagenet_problems(splits, subset) if expect_imagenet else [])


def _presence_problems(root: Path, splits: dict[str, dict[str, Any]], required: Sequence[str]) -> list[str]:
    """Splits with no image at all, and required splits missing: nothing to train on or to evaluate
    is not a dataset that checks out (train, stats and eval refuse it)."""
    problems = [
        f"{split}: no folder {root / split}" for split in dict.fromkeys(required) if split not in splits
    ]
    for split, s in splits.items():
        if s["images"] == 0 and s["loose_images"] == 0:
            problems.append(f"{split}: no images; expected {root / split}/<class>/<image>")
    return problems


def _split_names(root: Path, expect_imagenet: bool) -> list[str]:
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist or is not a folder")
    if expect_imagenet:
        names = [s for s in ("train", "val") if (root / s).is_dir()]
    else:
        names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise UserError(f"{root} has no split folders; expected {root}/<split>/<class>/<image>")
    return names


def _scan(
    root: Path, split_names: list[str], classes: Sequence[str] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Per-split counts (the summary's `splits`) and the image paths of each split (of `classes`
    only, when given)."""
    splits: dict[str, dict[str, Any]] = {}
    paths: dict[str, list[str]] = {}
    for split in split_names:
        per_class, loose = _scan_split(root / split)
        if classes is not None:
            kept = set(classes)
            per_class = {c: p for c, p in per_class.items() if c in kept}
        counts = {c: len(p) for c, p in per_class.items()}
        splits[split] = {
            "images": sum(counts.values()),
            "classes": len(counts),
            "loose_images": loose,
            "per_class": counts,
        }
        paths[split] = [p for class_paths in per_class.values() for p in class_paths]
    return splits, paths


def _decode_problems(
    decoder: _DaliDecoder | None, inspected: list[_Inspected]
) -> list[tuple[str | None, list[str]]]:
    problems: list[tuple[str | None, list[str]]] = [(None, [])] * len(inspected)
    if decoder is None:
        return problems
    usable = [k for k, r in enumerate(inspected) if r.data]  # empty files never reach DALI
    for k, found in zip(usable, decoder.problems([inspected[k].path for k in usable]), strict=True):
        problems[k] = found
    return problems


def _check_split(
    split: str, paths: list[str], pool: ThreadPoolExecutor, decoder: _DaliDecoder | None, bar: Any
) -> list[dict[str, str]]:
    """The issues of one split's files: files are read and their headers parsed in `pool`, the next
    batch while DALI decodes this one."""
    decode = decoder is not None

    def submit(batch: list[str]) -> list[Future[_Inspected]]:
        return [pool.submit(_inspect, p, split, decode) for p in batch]

    issues: list[dict[str, str]] = []
    pending = submit(paths[:_BATCH])
    for start in range(0, len(paths), _BATCH):
        inspected = [f.result() for f in pending]
        pending = submit(paths[start + _BATCH : start + 2 * _BATCH])
        for r, (err, warnings) in zip(inspected, _decode_problems(decoder, inspected), strict=True):
            issues += r.notes
            failure = _failure(r, err, decode) or (None if err else _warning_issue(r, warnings))
            if failure is not None:
                issues.append(failure)
        bar.update(len(inspected))
    return issues


def _check_files(
    splits: dict[str, dict[str, Any]],
    paths: dict[str, list[str]],
    num_threads: int,
    decode: bool,
    progress: bool,
) -> list[dict[str, str]]:
    """Every file's issues, split by split; adds each split's `seconds` and `images_per_s` to `splits`
    (train and val may differ: another disk, other image sizes)."""
    from tqdm import tqdm

    total = sum(len(p) for p in paths.values())
    decoder = _DaliDecoder(_BATCH, num_threads) if decode and total else None
    issues: list[dict[str, str]] = []
    bar = tqdm(total=total, disable=not progress, dynamic_ncols=True, desc="verify", unit="img")
    try:
        with ThreadPoolExecutor(num_threads) as pool, bar:
            for split, split_paths in paths.items():
                started = time.perf_counter()
                issues += _check_split(split, split_paths, pool, decoder, bar)
                seconds = time.perf_counter() - started
                splits[split]["seconds"] = round(seconds, 6)  # a small split takes a millisecond
                splits[split]["images_per_s"] = round(len(split_paths) / seconds, 1) if split_paths else None
    finally:
        if decoder is not None:
            decoder.close()
    return issues


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def verify_data(
    root: Path,
    *,
    expect_imagenet: bool,
    num_threads: int,
    decode: bool = True,
    progress: bool = True,
    summary_path: Path | None,
    classes: Sequence[str] | None = None,
    required_splits: Sequence[str] = (),
) -> dict[str, Any]:
    """Count and check every image under `<root>/<split>/<class>/`; returns (and writes to `summary_path`
    as JSON) the summary: per-split counts and speed, count `problems`, per-file `issues` and `ok`.

    expect_imagenet: check the splits train and val against ImageNet-1K's numbers (1000 classes;
    1,281,167 train images, 732 to 1300 per class; 50,000 val images, 50 per class); otherwise every
    sub-folder of root is a split and only consistency is checked.
    decode: decode every image with DALI on the CPU, in a child process, `num_threads` threads;
    without it only headers and the JPEG end marker are read. Issues name the path; kinds
    "unreadable", "truncated", "undecodable" and "corrupt" (decoded with libjpeg's warnings of damaged
    data) are errors, "wrong_format" (e.g. PNG data named .JPEG), "cmyk", "grayscale",
    "unusual_mode" (DALI decodes them to RGB) and "jpeg_warning" (padding before the end marker) are
    notes.
    classes: a class subset (data.subset): only these class folders are counted and checked, and
    ImageNet's totals (classes, images per split) are not expected; its per-class counts still are.
    required_splits: split folders that must exist (a run's train and eval splits; with
    expect_imagenet, train and val always); a split with no image is a problem too.
    """
    root = Path(root).expanduser()
    if num_threads < 1:
        raise UserError(f"num_threads is {num_threads}; it must be at least 1")
    splits, paths = _scan(root, _split_names(root, expect_imagenet), classes)
    required = ("train", "val", *required_splits) if expect_imagenet else tuple(required_splits)
    problems = _presence_problems(root, splits, required) + _count_problems(
        splits, expect_imagenet, subset=classes is not None
    )
    started = time.perf_counter()
    issues = _check_files(splits, paths, num_threads, decode, progress)
    issue_counts = Counter(i["kind"] for i in issues)
    summary: dict[str, Any] = {
        "root": str(root),
        "expect_imagenet": expect_imagenet,
        "subset_classes": None if classes is None else len(classes),
        "decoded": decode,
        "images": sum(s["images"] for s in splits.values()),
        "splits": splits,
        "problems": problems,
        "issue_counts": {k: issue_counts[k] for k in ERROR_KINDS + NOTE_KINDS if issue_counts[k]},
        "issues": issues,
        "seconds": round(time.perf_counter() - started, 3),
        # per split, not one number over all: train and val are read and decoded at different speeds
        "images_per_s": {split: s["images_per_s"] for split, s in splits.items()},
        "ok": not problems and sum(issue_counts[k] for k in ERROR_KINDS) == 0,
    }
    if summary_path is not None:
        _write_json(summary_path, summary)
    return summary
