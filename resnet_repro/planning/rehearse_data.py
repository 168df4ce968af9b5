"""The data of `rehearse`: the training data as the real run will see it (`data_view`: its own
listing, or an estimate without the data), and the data a rehearsal trains on: a few images per class
of data.root linked into the rehearsal's folder (`sample_data_root`), or a generated stand-in with the
configured classes and image sizes (`write_stand_in`)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_repro.config import RootConfig, UserError

# classes of the stand-in when data.root cannot be read (data.name -> count)
CLASS_COUNTS = {"imagenet": 1000, "cifar10": 10}
STEPS_PER_POINT = 1  # trained steps from each change point of the schedule (the sample is sized for them)

# training images per class of the full datasets, for an estimate without the data
IMAGES_PER_CLASS = {"imagenet": 1_281_167 / 1000, "cifar10": 50_000 / 10}


@dataclass(frozen=True)
class DataView:
    """The training data as the real run will see it, or as estimated without it."""

    train_images: int | None
    source: str  # where the count comes from, in words
    classes: int  # classes the run trains (a subset's count)
    splits: Any = None  # the real run's Splits (resnet_repro.data.normalization) when listed


def data_view(cfg: RootConfig, stand_in: bool = False) -> DataView:
    """The real run's training images per epoch: from data.root's file lists, built by the real
    run's own listing (exclusions, subset, holdout: its guards raise its errors, so a missing or
    misspelt data.root fails here as it fails there); estimated only when data.root is unset or
    `stand_in` is asked: plan.train_images, else the dataset's published count with the subset
    and the holdout applied (a holdout the data cannot give is refused as the real run refuses it)."""
    from resnet_repro.training.run_data import load_file_lists

    d = cfg.data
    if (d.root and not stand_in) or d.name == "demo":
        splits = load_file_lists(d)
        return DataView(len(splits.train), f"file lists of {d.root}", len(splits.train.classes), splits)
    if cfg.plan.train_images is not None:
        return DataView(*given_train_images(cfg), _estimated_classes(cfg))
    if d.name not in IMAGES_PER_CLASS:
        unknown = "unknown without data.root (plan.train_images=N gives it)"
        return DataView(None, unknown, _estimated_classes(cfg))
    classes = _estimated_classes(cfg)
    per_class = IMAGES_PER_CLASS[d.name]
    if d.subset.per_class is not None:
        per_class = min(per_class, d.subset.per_class)
    images = round(classes * per_class)
    why = "data.root not set" if not d.root else "--stand-in"
    source = f"estimated ({why}): {classes:,} classes x {per_class:,.0f} images"
    if d.holdout.size is not None:
        images, held = _less_holdout(cfg, images, classes)
        source += f" - {held:,} held out"
    return DataView(images, source, classes)


def given_train_images(cfg: RootConfig) -> tuple[int, str]:
    """(images per epoch, where the count came from) of plan.train_images: the training split as
    a download's size says it, so the run's holdout (data.holdout.size) is carved from it here."""
    given = cfg.plan.train_images
    assert given is not None
    if cfg.data.holdout.size is None:
        return given, "plan.train_images"
    images, held = _less_holdout(cfg, given, _estimated_classes(cfg))
    return images, f"plan.train_images less the holdout's {held:,} (data.holdout.size)"


def _less_holdout(cfg: RootConfig, images: int, classes: int) -> tuple[int, int]:
    """(images left to train on, images held out) of a training split of about `images` in
    `classes` classes; a holdout the run would refuse is refused here."""
    from resnet_repro.data.holdout import holdout_count, size_text

    size = cfg.data.holdout.size
    held = holdout_count(size, images)
    if held > images - classes:
        raise UserError(
            f"data.holdout.size={size_text(size)} asks for {held} of about {images} training images, but "
            f"at most {images - classes} can be held out while each of the {classes} classes keeps one image"
        )
    return images - held, held


def _estimated_classes(cfg: RootConfig) -> int:
    """Classes the run trains, without the data: a subset's count or its class file's lines."""
    total = CLASS_COUNTS.get(cfg.data.name, cfg.bench.num_classes)
    spec = cfg.data.subset.classes
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 1 <= spec <= total:
            raise UserError(
                f"data.subset.classes={spec} must be between 1 and the {total} classes of the training split"
            )
        return spec
    path = Path(str(spec)).expanduser() if spec is not None else None
    if path is not None and path.is_file():
        lines = path.read_text().splitlines()
        return len({line.strip() for line in lines if line.strip() and not line.startswith("#")})
    return total


def images_per_class(cfg: RootConfig, global_batch: int, classes: int) -> int:
    """Training-split images each used class needs so that the holdout can be carved and a few
    full global batches remain (steps per epoch of the sample: at least 2 and STEPS_PER_POINT)."""
    train = global_batch * max(2, STEPS_PER_POINT)
    size = cfg.data.holdout.size
    if size is None:
        needed = train
    elif size >= 1:
        needed = int(size) + train
    else:
        needed = math.ceil(train / (1 - size)) + classes
    return math.ceil(needed / classes) + 1  # +1: a class keeps one image when its holdout is carved


def _kept_and_wanted(
    cfg: RootConfig, classes: tuple[str, ...], global_batch: int
) -> tuple[set[str] | None, int]:
    """(the classes data.subset keeps, None for all; the training images each of them needs)."""
    from resnet_repro.data import subset

    kept = set(subset.select_classes(classes, cfg.data.subset)) if subset.is_active(cfg.data.subset) else None
    return kept, images_per_class(cfg, global_batch, len(kept) if kept is not None else len(classes))


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(target, link)
    except FileExistsError:  # another rank of a torchrun / srun rehearsal wrote it
        pass


def sample_data_root(cfg: RootConfig, global_batch: int, out: Path) -> tuple[Path, str, Path | None]:
    """A few images per class of data.root, listed by the real listing (its guards refuse what the
    real run refuses), linked into `out` in the same layout; the per-class count covers a holdout
    and a few global batches of the classes a subset keeps, and classes with fewer images leave
    their share to the others (the real run's totals, not its per-class share, fill its batches).

    Excluded images are not linked, but for a class whose every training image data.exclude_files
    names: one is, and listed in the returned exclusion file (None when there is none), so that the
    class stays a class with no training image, as in the real run."""
    from resnet_repro.data.splits import list_split

    d = cfg.data
    train_all = list_split(d.root, d.train_split)
    test = list_split(d.root, d.eval_split, classes=train_all.classes)
    train, still_classes = train_all, []
    if d.exclude_files:  # left out of the sample, as the real run leaves them out of its lists
        from resnet_repro.data.splits import read_exclude_list, without

        excluded = read_exclude_list(d.exclude_files, d.root)
        train, test = without(train_all, excluded, d.root)[0], without(test, excluded, d.root)[0]
        emptied, first = set(train_all.labels) - set(train.labels), {}
        for path, label in zip(train_all.files, train_all.labels, strict=True):
            if label in emptied:
                first.setdefault(label, path)
        still_classes = [first[c] for c in sorted(emptied)]
    kept, wanted = _kept_and_wanted(cfg, train.classes, global_batch)
    by_class: dict[int, list[str]] = {}
    for path, label in zip(train.files, train.labels, strict=True):
        by_class.setdefault(label, []).append(path)
    used = [c for c in by_class if kept is None or train.classes[c] in kept]
    take = {c: min(len(files), wanted if c in used else 1) for c, files in by_class.items()}
    short = wanted * len(used) - sum(take[c] for c in used)
    for c in used:  # the classes with more images make up for those with fewer
        extra = min(len(by_class[c]) - take[c], short)
        take[c], short = take[c] + extra, short - extra
    root = Path(d.root).expanduser()
    picked = [f for c, files in by_class.items() for f in files[: take[c]]] + still_classes
    shown: set[int] = set()
    for path, label in zip(test.files, test.labels, strict=True):
        if label not in shown:
            shown.add(label)
            picked.append(path)
    for path in picked:
        _link(Path(path).resolve(), out / Path(path).relative_to(root))
    exclusions = None
    if still_classes:
        exclusions = out.parent / "excluded_from_the_sample.txt"
        tmp = exclusions.with_name(f".{exclusions.name}.{os.getpid()}")  # ranks write it alike
        tmp.write_text("".join(f"{Path(p).relative_to(root)}\n" for p in still_classes))
        os.replace(tmp, exclusions)
    n = sum(take[c] for c in by_class)
    return (
        out,
        f"a sample of {d.root}: {n} training images (about {wanted} per used class, 1 per other class)",
        exclusions,
    )


def stand_in_classes(cfg: RootConfig) -> list[str]:
    """Class folder names of the stand-in: a subset's class file's names first, when it has one."""
    count = CLASS_COUNTS.get(cfg.data.name, cfg.bench.num_classes)
    spec = cfg.data.subset.classes
    names: list[str] = []
    if spec is not None and not isinstance(spec, int) and Path(str(spec)).expanduser().is_file():
        lines = Path(str(spec)).expanduser().read_text().splitlines()
        names = sorted({s.strip() for s in lines if s.strip() and not s.startswith("#")})
    names += [f"class{i:04d}" for i in range(max(count - len(names), 0))]
    return sorted(names)


def stand_in_size(cfg: RootConfig) -> tuple[int, int]:
    """(width, height) of the stand-in's images: the evaluation resize's shorter side (image_size /
    crop_ratio), 4:3 landscape as most of ImageNet; square where images come at their size."""
    d = cfg.data
    short = round(d.image_size / d.crop_ratio)
    if d.augment.scale_short_side is not None:
        short = max(short, d.augment.scale_short_side[0])
    square = d.crop_ratio == 1 or d.augment.pad_crop > 0
    return (short if square else round(short * 4 / 3)), short


def write_stand_in(cfg: RootConfig, global_batch: int, out: Path, pool_size: int = 16) -> tuple[Path, str]:
    """A generated dataset in the ImageNet layout with the configured class count and image size:
    `pool_size` smooth random JPEGs, linked as each class's images (a rehearsal checks the path
    the images take, not what can be learnt from them)."""
    import numpy as np
    from PIL import Image

    classes = stand_in_classes(cfg)
    kept, wanted = _kept_and_wanted(cfg, tuple(classes), global_batch)
    width, height = stand_in_size(cfg)
    rng = np.random.default_rng(0)
    pool = out / ".pool"
    pool.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(pool_size):
        small = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8), mode="RGB")
        path, tmp = pool / f"{i}.JPEG", pool / f".{i}.{os.getpid()}.tmp"
        small.resize((width, height), Image.BILINEAR).save(tmp, format="JPEG", quality=85)
        os.replace(tmp, path)  # atomic: ranks of one rehearsal write the same files
        images.append(path)
    n = 0
    for c, name in enumerate(classes):
        count = wanted if kept is None or name in kept else 1
        for i in range(count):
            _link(images[(c + i) % pool_size], out / cfg.data.train_split / name / f"{i}.JPEG")
        _link(images[c % pool_size], out / cfg.data.eval_split / name / "0.JPEG")
        n += count
    why = "data.root is not set" if not cfg.data.root else "--stand-in"
    return out, (
        f"a generated stand-in ({why}): {len(classes)} classes, {n} training images of {width}x{height} px"
    )
