"""The embedded demo dataset: scikit-learn's bundled handwritten digits as RGB JPEGs.

1,797 real 8x8 grey images of the digits 0-9, upscaled to 32x32 (bicubic) and written as
<root>/{train,val}/<digit>/<index>.JPEG with a stratified, seeded 80/20 split. The output is
byte-for-byte deterministic. Building is atomic (a temporary folder renamed into place), so a
half-written folder never looks complete, and an existing folder that is not the dataset is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DEMO_SIZE = 32
VAL_FRACTION = 0.2
SPLIT_SEED = 0
JPEG_QUALITY = 95
COMPLETE_MARKER = ".complete"


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, val = train_test_split(idx, test_size=VAL_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    return np.sort(train), np.sort(val)


def _to_image(pixels: np.ndarray) -> Image.Image:
    # Digits are 0..16 ink intensities; write dark ink on white paper like a scanned digit
    grey = (255 - pixels * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    img = Image.fromarray(grey, mode="L").resize((DEMO_SIZE, DEMO_SIZE), Image.Resampling.BICUBIC)
    return img.convert("RGB")


def is_built(root: str | os.PathLike) -> bool:
    return (Path(root) / COMPLETE_MARKER).is_file()


def _refuse_foreign(root: Path) -> None:
    """A non-empty folder without the marker is not ours (builds are atomic: they never leave a
    half-written `root`): never delete it."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        from resnet_repro.config import UserError

        raise UserError(
            f"{root} exists and is not the demo dataset (no {COMPLETE_MARKER} marker); choose another "
            "folder (data.root=..., or make-demo-data --out ...) or remove it yourself"
        )


def default_root() -> Path:
    """Where data=demo builds the digits on first use (conf/data/demo.yaml's data.root)."""
    home = os.environ.get("HOME", "~")
    cache = os.environ.get("RESNET_REPRO_CACHE") or os.path.join(home, ".cache", "resnet-repro")
    return Path(cache).expanduser() / "demo-digits"


def ensure_demo_dataset(root: str | os.PathLike) -> Path:
    """data=demo's data.root, the digits built there on first use if it is their cache folder. Any
    other root must hold them already: a data.root of the user's that does not is a typo or a
    forgotten data=imagenet, not a place to write 1,797 digits and train on them."""
    root = Path(root).expanduser()
    if is_built(root) or root.absolute() == default_root().absolute():
        return build_demo_dataset(root)
    from resnet_repro.config import UserError

    raise UserError(
        f"data.root={root} does not hold the demo dataset (data=demo, the default data group): it is "
        f"built on first use in {default_root()} only; name your dataset's group (data=imagenet, "
        f"data=folder), or build the digits there with `resnet-repro make-demo-data --out {root}`"
    )


def build_demo_dataset(root: str | os.PathLike) -> Path:
    """Write the demo dataset to `root` unless it is already complete there. Returns the path."""
    from sklearn.datasets import load_digits

    root = Path(root).expanduser()
    if is_built(root):
        return root
    _refuse_foreign(root)
    digits = load_digits()
    images, labels = digits.images, digits.target
    train_idx, val_idx = _split_indices(labels)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for split, indices in (("train", train_idx), ("val", val_idx)):
            for i in indices:
                folder = tmp / split / str(labels[i])
                folder.mkdir(parents=True, exist_ok=True)
                _to_image(images[i]).save(folder / f"{i:04d}.JPEG", quality=JPEG_QUALITY)
        (tmp / COMPLETE_MARKER).write_text(f"{len(train_idx)} train, {len(val_idx)} val\n")
        if root.exists():  # another process finished first, or the folder appeared meanwhile
            if is_built(root):
                return root
            _refuse_foreign(root)
            root.rmdir()  # empty
        os.replace(tmp, root)
    except OSError:
        if is_built(root):  # lost a race against a concurrent builder: theirs is complete
            return root
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
