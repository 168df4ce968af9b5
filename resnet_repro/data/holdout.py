"""A stratified, seeded holdout carved out of the training split (for model selection without
touching the test split), and the per-class allocation it shares with stats sampling.

Allocation is exact: the per-class shares of a requested total are rounded with the largest-remainder
method, so the shares add up to the request. Which images a class gives up is a seeded permutation
of that class's own images, so the choice inside one class does not depend on the other classes.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from resnet_repro.config import UserError
from resnet_repro.data.splits import FileList

HOLDOUT_SPLIT = "holdout"

# Mixed into the per-class RNG seed so that a holdout and a stats sample drawn with the same seed
# are not the same "first k" images of each class.
PURPOSE_HOLDOUT = 0
PURPOSE_SAMPLE = 1


def allocate(counts: list[int], total: int, caps: list[int]) -> list[int]:
    """Split `total` over classes in proportion to `counts`, at most `caps[c]` for class c.

    Largest-remainder rounding with exact integer arithmetic (no float ties): every class first gets
    floor(total * n_c / N); the leftover goes one image at a time to the classes with the largest
    remainders (ties: lower class index first), skipping full classes, until the sum equals `total`.
    """
    n = sum(counts)
    assert 0 <= total <= sum(caps) and n > 0, (total, sum(caps), n)
    alloc = [min(total * c // n, cap) for c, cap in zip(counts, caps, strict=True)]
    left = total - sum(alloc)
    order = sorted(range(len(counts)), key=lambda c: (-(total * counts[c] % n), c))
    while left > 0:
        for c in order:
            if left == 0:
                break
            if alloc[c] < caps[c]:
                alloc[c] += 1
                left -= 1
    return alloc


def stratified_indices(
    labels: tuple[int, ...] | list[int], per_class: dict[int, int], seed: int, purpose: int
) -> list[int]:
    """Sorted indices of `per_class[label]` images of each class, chosen by a seeded permutation."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    chosen: list[int] = []
    for label, idx in by_class.items():
        k = per_class.get(label, 0)
        if k == 0:
            continue
        rng = np.random.default_rng([seed, label, purpose])
        chosen.extend(idx[j] for j in rng.permutation(len(idx))[:k])
    return sorted(chosen)


def size_text(size: float) -> str:
    """data.holdout.size as a user types it: 1000, not 1000.0 or 1e+03; a fraction as it is."""
    return str(int(size)) if float(size).is_integer() else f"{size:g}"


def holdout_count(size: float | int, num_images: int) -> int:
    """Number of images a holdout `size` means for a split of `num_images`.

    Below 1: a fraction in (0, 1), rounded half up. From 1 up: a whole number of images (10000 and
    10000.0 alike, since a float-typed config field turns 10000 into 10000.0).
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Real) or not math.isfinite(size):
        raise UserError(f"data.holdout.size={size!r} must be a count >= 1 or a fraction in (0, 1)")
    if size <= 0:
        raise UserError(f"data.holdout.size={size} must be a count >= 1 or a fraction in (0, 1)")
    if size < 1:
        count = math.floor(size * num_images + 0.5)
        if count < 1:
            raise UserError(
                f"data.holdout.size={size} of {num_images} training images is 0 images; use a larger fraction"
            )
        return count
    if size != int(size):
        raise UserError(
            f"data.holdout.size={size} must be a whole number of images (>= 1) or a fraction in (0, 1)"
        )
    return int(size)


def carve_holdout(train: FileList, size: float | int, seed: int) -> tuple[FileList, FileList]:
    """Split `train` into (remaining train, holdout), stratified by class and fixed by `seed`.

    Each class gives up images in proportion to its size, and always keeps at least one. Both lists
    keep the original (sorted) order and the training class list, so labels mean the same in both.
    The remaining list keeps `train.split` as its name; the holdout is named "holdout".
    """
    total = holdout_count(size, len(train))
    counts_by_label: dict[int, int] = {}
    for label in train.labels:
        counts_by_label[label] = counts_by_label.get(label, 0) + 1
    labels = sorted(counts_by_label)
    counts = [counts_by_label[lb] for lb in labels]
    caps = [c - 1 for c in counts]  # a class never loses all its training images
    if total > sum(caps):
        raise UserError(
            f"data.holdout.size={size_text(size)} asks for {total} of {len(train)} training images, but "
            f"at most {sum(caps)} can be held out while each of the {len(labels)} classes keeps one image"
        )
    alloc = allocate(counts, total, caps)
    held = stratified_indices(train.labels, dict(zip(labels, alloc, strict=True)), seed, PURPOSE_HOLDOUT)
    held_set = set(held)
    kept = [i for i in range(len(train)) if i not in held_set]
    return _subset(train, kept, train.split), _subset(train, held, HOLDOUT_SPLIT)


def _subset(files: FileList, indices: list[int], split: str) -> FileList:
    return FileList(
        split=split,
        files=tuple(files.files[i] for i in indices),
        labels=tuple(files.labels[i] for i in indices),
        classes=files.classes,
    )
