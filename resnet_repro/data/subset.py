"""Class subsets (ImageNet-100 style) and per-class caps: cheap proxies for sweeps.

The same classes are kept in every split (train, and so the holdout carved from it, and the test
split), relabelled 0..k-1 in sorted order, so a model trained on the subset has k outputs. Which
classes: a seeded random choice of `classes` of them, or the names listed in a file. The cap keeps
at most `per_class` images of each class in train and test, chosen by a seeded permutation inside
each class (the choice in one class does not depend on the others).
"""

from __future__ import annotations

import random
from pathlib import Path

from resnet_repro.config import SubsetConfig, UserError
from resnet_repro.data.holdout import stratified_indices
from resnet_repro.data.splits import FileList

# mixed into the per-class seed: a cap and a holdout drawn with one seed are not the same images
PURPOSE_SUBSET = 2


def is_active(cfg: SubsetConfig) -> bool:
    return cfg.classes is not None or cfg.per_class is not None


def select_classes(all_classes: tuple[str, ...], cfg: SubsetConfig) -> tuple[str, ...]:
    """The kept class names, sorted: all, a seeded choice of `cfg.classes` of them, or a file's list."""
    spec = cfg.classes
    if spec is None:
        return all_classes
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 1 <= spec <= len(all_classes):
            raise UserError(
                f"data.subset.classes={spec} must be between 1 and the {len(all_classes)} classes of the "
                "training split"
            )
        return tuple(sorted(random.Random(cfg.seed).sample(list(all_classes), spec)))
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise UserError(
            f"data.subset.classes={spec} is neither a class count nor an existing file of class names "
            "(one per line)"
        )
    names = [
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    unknown = sorted(set(names) - set(all_classes))
    if unknown:
        raise UserError(
            f"data.subset.classes={path}: {len(unknown)} listed classes are not in the training split "
            f"(e.g. {unknown[0]})"
        )
    if not names:
        raise UserError(f"data.subset.classes={path} lists no class names")
    return tuple(sorted(set(names)))


def restrict(files: FileList, classes: tuple[str, ...], cfg: SubsetConfig) -> FileList:
    """`files` limited to `classes` (relabelled by their position there) and capped per class."""
    index = {name: i for i, name in enumerate(classes)}
    keep = [i for i, label in enumerate(files.labels) if files.classes[label] in index]
    if cfg.per_class is not None:
        # drawn per original label: a class's images do not depend on which other classes were kept
        original = [files.labels[i] for i in keep]
        counts: dict[int, int] = {}
        for label in original:
            counts[label] = counts.get(label, 0) + 1
        per_class = {c: min(n, cfg.per_class) for c, n in counts.items()}
        keep = [keep[j] for j in stratified_indices(original, per_class, cfg.seed, PURPOSE_SUBSET)]
    labels = [index[files.classes[files.labels[i]]] for i in keep]
    return FileList(
        split=files.split,
        files=tuple(files.files[i] for i in keep),
        labels=tuple(labels),
        classes=classes,
    )
