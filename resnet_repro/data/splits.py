"""File lists of an ImageNet-layout folder: <root>/<split>/<class>/<image>.

Class index = position of the class folder name in sorted order (for ImageNet: sorted wnids),
taken from the training split and shared by every other split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from resnet_repro.config import UserError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class FileList:
    """Images of one split with their integer labels; `classes[label]` is the folder name."""

    split: str
    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)


def text_name(folder: str | os.PathLike, name: str) -> str:
    """`name` (an entry of `folder`) when it is valid UTF-8; a file name that is not (Latin-1 from an
    old archive) reaches Python as lone surrogates, which DALI, the fingerprint and the logs cannot
    take: a one-line error naming its bytes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(os.path.join(folder, name))
        raise UserError(
            f"{raw!r}: the name is not valid UTF-8; rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 "
            "--notest -r <data.root>) or move it out of the data folder"
        ) from None
    return name


def image_names(folder: str | os.PathLike) -> list[str]:
    """The images of a class folder (*.JPEG, *.jpg, *.png, any case), sorted; hidden files (macOS's
    `._<name>` AppleDouble files) are not images, as hidden folders are not classes."""
    return sorted(
        text_name(folder, e.name)
        for e in _entries(folder)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _entries(folder: str | os.PathLike) -> list[os.DirEntry]:
    """The entries of a data folder; one the user may not read (or gone since) is a UserError."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as e:
        raise UserError(f"cannot read the folder {os.fspath(folder)}: {e.strerror or e}") from e


def find_classes(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise UserError(
            f"split folder {split_dir} does not exist; expected <data.root>/<split>/<class>/*.JPEG"
        )
    classes = sorted(
        text_name(split_dir, e.name) for e in _entries(split_dir) if e.is_dir() and not e.name.startswith(".")
    )
    if not classes:
        raise UserError(f"{split_dir} has no class subfolders; expected {split_dir}/<class>/*.JPEG")
    return classes


def list_split(
    root: str | os.PathLike, split: str, classes: list[str] | tuple[str, ...] | None = None
) -> FileList:
    """List `<root>/<split>`. With `classes` given (the training classes), labels follow that order
    and a class folder outside it is an error."""
    if not os.fspath(root).strip():  # `data.root=`, or an sbatch script's data.root="$DATA" with DATA unset
        raise UserError("data.root is empty: pass data.root=DIR (the folder of the splits; . for this one)")
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise UserError(f"data.root {root_path} does not exist or is not a folder")
    split_dir = root_path / split
    found = find_classes(split_dir)
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise UserError(
                f"{split_dir} has class folders not in the training split: {', '.join(unknown[:5])}"
            )
    index = {c: i for i, c in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    for c in found:
        names = image_names(split_dir / c)
        if not names:
            raise UserError(f"class folder {split_dir / c} has no images (*.JPEG, *.jpg or *.png)")
        files.extend(str(split_dir / c / n) for n in names)
        labels.extend([index[c]] * len(names))
    return FileList(split=split, files=tuple(files), labels=tuple(labels), classes=tuple(classes))


def read_exclude_list(path: str | os.PathLike, root: str | os.PathLike) -> set[str]:
    """The images listed in `path` (one per line), as paths relative to `root`, so that a list
    matches however the root is spelled (relative, absolute, through a symlink). A line may be
    relative to `root` (what verify-data writes), absolute, or relative to the working directory."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"data.exclude_files={path} does not exist; expected a text file of image paths")
    root_path = Path(root).expanduser()
    real_root = os.path.realpath(root_path)
    out = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        if not p.is_absolute() and (root_path / p).exists():
            out.add(os.path.normpath(p))
        elif p.is_absolute() or p.exists():
            out.add(os.path.relpath(os.path.realpath(p), real_root))
        else:
            out.add(os.path.normpath(p))  # relative to the root, no longer there: nothing to drop
    return out


def without(files: FileList, excluded: set[str], root: str | os.PathLike) -> tuple[FileList, set[str]]:
    """`files` minus the `excluded` ones (paths relative to `root`); also returns the entries that
    matched here."""
    root_path = str(Path(root).expanduser())
    keys = [os.path.relpath(f, root_path) for f in files.files]  # textual: no file-system calls
    keep = [i for i, k in enumerate(keys) if k not in excluded]
    matched = {keys[i] for i in range(len(keys)) if keys[i] in excluded}
    return (
        FileList(
            split=files.split,
            files=tuple(files.files[i] for i in keep),
            labels=tuple(files.labels[i] for i in keep),
            classes=files.classes,
        ),
        matched,
    )
