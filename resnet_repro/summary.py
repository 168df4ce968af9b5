"""The start-up summary: the resolved recipe beside the two published ResNet-50 recipes (He et al.
2016 as written, and torchvision's reference recipe for its V1 weights), differences marked.

Each row holds a value, compared, and its text, shown: the references are built by the same
formatters as the run's own rows, and values are compared as numbers, so 1e-4 and 0.0001 are one
setting, not a difference of spelling."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from resnet_repro.config import RootConfig
from resnet_repro.optim import GroupSummary


@dataclass(frozen=True)
class Derived:
    """Values computed once from the config and the job; printed and logged, never written back."""

    world_size: int
    global_batch: int
    peak_lr: float
    steps_per_epoch: int
    num_train: int
    num_eval: int
    num_classes: int
    device: str


@dataclass(frozen=True)
class Setting:
    """One row of a recipe: `value` is compared (floats with a relative tolerance), `text` is shown."""

    value: tuple[Any, ...]
    text: str


def same(a: Any, b: Any) -> bool:
    """Equal as values: floats within a relative 1e-9 (so 1e-4 == 0.0001 == 1.0e-04), tuples item by item."""
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


# ----------------------------------------------------------- one formatter per row, shared by all columns
def model_setting(name: str, variant: str, stem: str = "imagenet") -> Setting:
    where = "torchvision" if variant == "v1.5" else "paper strides"
    suffix = ", 3x3 CIFAR stem" if stem == "cifar" else ""
    return Setting((name, variant, stem), f"{name} {variant} ({where}{suffix})")


def number_setting(x: float) -> Setting:
    return Setting((x,), f"{x:g}")


def sgd_setting(momentum: float, nesterov: bool = False) -> Setting:
    return Setting(
        ("sgd", momentum, nesterov), f"sgd momentum {momentum:g}" + (" nesterov" if nesterov else "")
    )


def step_schedule(gamma: float, milestones: list[int], epochs: int) -> Setting:
    return Setting(
        ("step", gamma, tuple(milestones), epochs),
        f"x{gamma:g} at epochs {list(milestones)}, {epochs} epochs",
    )


def plateau_schedule(factor: float, epochs: int, metric: str, patience: int | None = None) -> Setting:
    """He et al. give no patience ("when the error plateaus"), so it is shown but not compared;
    what plateaus (top-1 error or loss) is compared."""
    what = "top-1" if metric == "top1" else "loss"
    when = f"after {patience} epochs of flat {what}" if patience is not None else f"when {what} plateaus"
    return Setting(("plateau", factor, epochs, metric), f"x{factor:g} {when}, up to {epochs} epochs")


def none_setting() -> Setting:
    return Setting((None,), "none")


def decay_setting(weight_decay: float, on_all: bool, parameters: int = 0) -> Setting:
    if weight_decay == 0:
        return none_setting()
    if on_all:
        return Setting((weight_decay, "all"), f"{weight_decay:g} on all parameters")
    return Setting(
        (weight_decay, "not norm/bias"), f"{weight_decay:g} on {parameters:,} parameters, not on norm/bias"
    )


def _augment_suffix(hflip: bool, pca_lighting: float) -> tuple[tuple[Any, ...], str]:
    text = (" + flip" if hflip else "") + (f" + lighting {pca_lighting:g}" if pca_lighting > 0 else "")
    return (hflip, pca_lighting), text


def rrc_transform(size: int, scale: list[float], hflip: bool, pca_lighting: float = 0.0) -> Setting:
    value, suffix = _augment_suffix(hflip, pca_lighting)
    return Setting(
        ("random_resized_crop", size, tuple(scale), *value),
        f"RandomResizedCrop {size} (area [{scale[0]:g}, {scale[1]:g}])" + suffix,
    )


def scale_transform(size: int, short_side: list[int], hflip: bool, pca_lighting: float) -> Setting:
    """He et al. 2016's scale augmentation: shorter side uniform in [low, high], a random crop."""
    value, suffix = _augment_suffix(hflip, pca_lighting)
    return Setting(
        ("scale_short_side", size, tuple(short_side), *value),
        f"scale [{short_side[0]}, {short_side[1]}], crop {size}" + suffix,
    )


def centre_transform(resize: int, size: int) -> Setting:
    return Setting(("centre", resize, size), f"resize {resize}, centre crop {size}")


# The published recipes, as the same rows as a run's
REFERENCES: dict[str, tuple[str, dict[str, Setting]]] = {
    # He et al. 2016, Sec. 3.4 (ImageNet val, ResNet-50: 10-crop top-1 error 22.85%, multi-scale 20.74%)
    "he2016": (
        "He 2016",
        {
            "model": model_setting("resnet50", "v1"),
            "global batch": number_setting(256),
            "optimizer": sgd_setting(0.9),
            "peak LR": number_setting(0.1),
            "schedule": plateau_schedule(0.1, 120, "top1"),
            "warm-up": none_setting(),
            "max norm": none_setting(),
            "weight decay": decay_setting(1e-4, on_all=True),
            "regularization": none_setting(),
            "train transform": scale_transform(224, [256, 480], hflip=True, pca_lighting=0.1),
            # the per-epoch evaluation; the paper's reported numbers are 10-crop and multi-scale
            "eval transform": centre_transform(256, 224),
            "precision": Setting(("fp32",), "fp32"),
        },
    ),
    # torchvision's reference recipe, the one behind ResNet50_Weights.IMAGENET1K_V1 (76.13% top-1,
    # single centre crop)
    "torchvision": (
        "torchvision V1",
        {
            "model": model_setting("resnet50", "v1.5"),
            "global batch": number_setting(256),
            "optimizer": sgd_setting(0.9),
            "peak LR": number_setting(0.1),
            "schedule": step_schedule(0.1, [30, 60], 90),
            "warm-up": none_setting(),
            "max norm": none_setting(),
            "weight decay": decay_setting(1e-4, on_all=True),
            "regularization": none_setting(),
            "train transform": rrc_transform(224, [0.08, 1.0], hflip=True),
            "eval transform": centre_transform(256, 224),
            "precision": Setting(("fp32",), "fp32"),
        },
    ),
}


def recipe(cfg: RootConfig, d: Derived, groups: list[GroupSummary]) -> dict[str, Setting]:
    """This run's rows, in the references' order."""
    m, o, s, st, a, r = (
        cfg.model,
        cfg.optim,
        cfg.schedule,
        cfg.stabilizer,
        cfg.data.augment,
        cfg.regularization,
    )
    epochs, size = cfg.trainer.epochs, cfg.data.image_size
    eval_resize = round(size / cfg.data.crop_ratio)
    if s.name == "step":
        schedule = step_schedule(s.gamma, list(s.milestones), epochs)
    elif s.name == "cosine":
        schedule = Setting(
            ("cosine", s.final_lr_factor, epochs), f"cosine to {s.final_lr_factor:g} x peak, {epochs} epochs"
        )
    elif s.name == "linear_ramp":
        schedule = Setting(
            ("linear_ramp", s.peak_epoch, s.end_factor, epochs),
            f"linear 0 -> peak at epoch {s.peak_epoch:g} -> {s.end_factor:g} x peak, {epochs} epochs",
        )
    elif s.name == "plateau":
        schedule = plateau_schedule(s.factor, epochs, s.metric, s.patience)
    else:
        schedule = Setting(("constant", epochs), f"constant, {epochs} epochs")
    decayed = [g for g in groups if g.weight_decay > 0]
    decay = decay_setting(o.weight_decay, len(decayed) == len(groups), sum(g.parameters for g in decayed))
    if a.pad_crop > 0:
        value, suffix = _augment_suffix(a.hflip, a.pca_lighting)
        train_t = Setting(
            ("pad_crop", size, a.pad_crop, *value), f"pad {a.pad_crop} + random crop {size}" + suffix
        )
    elif a.scale_short_side is not None:
        train_t = scale_transform(size, list(a.scale_short_side), a.hflip, a.pca_lighting)
    elif a.random_resized_crop:
        train_t = rrc_transform(size, list(a.scale), a.hflip, a.pca_lighting)
    else:
        value, suffix = _augment_suffix(a.hflip, a.pca_lighting)
        train_t = Setting(
            ("centre", eval_resize, size, *value), centre_transform(eval_resize, size).text + suffix
        )
    regs = [(k, v) for k, v in vars(r).items() if isinstance(v, float) and v > 0 and "size" not in k]
    if o.name == "sgd":
        optimizer = sgd_setting(o.momentum, o.nesterov)
    else:
        optimizer = Setting((o.name, tuple(o.betas)), f"{o.name} betas {list(o.betas)}")
    warmup = (
        Setting(
            (st.warmup_epochs, st.warmup_start_factor),
            f"{st.warmup_epochs:g} epochs from {st.warmup_start_factor:g} x peak",
        )
        if st.warmup_epochs > 0
        else none_setting()
    )
    return {
        "model": model_setting(m.name, m.variant, m.stem),
        "global batch": number_setting(d.global_batch),
        "optimizer": optimizer,
        "peak LR": number_setting(d.peak_lr),
        "schedule": schedule,
        "warm-up": warmup,
        "max norm": number_setting(st.max_norm) if st.max_norm else none_setting(),
        "weight decay": decay,
        "regularization": Setting(tuple(regs), ", ".join(f"{k} {v:g}" for k, v in regs))
        if regs
        else none_setting(),
        "train transform": train_t,
        "eval transform": centre_transform(eval_resize, size),
        "precision": Setting((cfg.trainer.precision,), cfg.trainer.precision),
    }


def differences(cfg: RootConfig, d: Derived, groups: list[GroupSummary]) -> dict[str, list[str]]:
    """For each reference (he2016, torchvision), the settings of this run that differ from it."""
    ours = recipe(cfg, d, groups)
    return {
        ref: [key for key, setting in ours.items() if not same(setting.value, rows[key].value)]
        for ref, (_, rows) in REFERENCES.items()
    }


def render(cfg: RootConfig, d: Derived, groups: list[GroupSummary], normalization: str) -> str:
    """A text table: setting | this run | He 2016 | torchvision V1, with `*` before every reference
    value this run differs from; the reference the experiment claims (cfg.reference) is named."""
    ours = recipe(cfg, d, groups)
    differ = differences(cfg, d, groups)
    widths = [max(len(v.text) for v in ours.values())]
    headers = []
    for ref, (title, rows) in REFERENCES.items():
        headers.append(title + (" (claimed)" if ref == cfg.reference else ""))
        widths.append(max(len(headers[-1]), *(len(v.text) for v in rows.values())))
    lines = [
        f"{cfg.model.name} on {cfg.data.name}: {d.num_classes} classes, {d.num_train} train / {d.num_eval} "
        f"{cfg.data.eval_split} images; {d.world_size} x {d.device}, {d.steps_per_epoch} steps/epoch",
        f"  {'setting':<16} {'this run':<{widths[0]}}"
        + "".join(f"   {h:<{w}}" for h, w in zip(headers, widths[1:], strict=True)).rstrip(),
    ]
    for key, value in ours.items():
        cells = [
            f" {'*' if key in differ[ref] else ' '} {rows[key].text:<{w}}"
            for (ref, (_, rows)), w in zip(REFERENCES.items(), widths[1:], strict=True)
        ]
        lines.append(f"  {key:<16} {value.text:<{widths[0]}}" + "".join(cells).rstrip())
    lines.append(f"  normalization    {normalization}")
    for g in groups:
        lines.append(
            f"  param group {g.name}: {g.tensors} tensors, {g.parameters:,} parameters, "
            f"weight decay {g.weight_decay:g}"
        )
    claimed = REFERENCES[cfg.reference][0]
    n = len(differ[cfg.reference])
    lines.append(
        f"  (* = this run differs from that column; this experiment claims {claimed} "
        f"(reference={cfg.reference}): {n} difference{'' if n == 1 else 's'})"
    )
    return "\n".join(lines)
