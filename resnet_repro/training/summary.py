"""The start-up summary: the resolved recipe as a table, and its deviations from the published
recipe the experiment claims (`reference`: torchvision's V1 recipe, He et al. 2016 as written, or
FFCV's ResNet-50 configs), found by comparing the run's composed config with the reference's,
key by key (config.REFERENCES). Values are compared as numbers, so 1e-4 and 0.0001 are one
setting, not a difference of spelling; run-control keys (config.NOT_RECIPE_KEYS) are left out."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

from resnet_repro.config import (
    NOT_RECIPE_KEYS,
    REFERENCES,
    RootConfig,
    compose,
    eval_protocols,
    per_device_batch,
)
from resnet_repro.training.optim import GroupSummary


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


@dataclass(frozen=True)
class Deviation:
    """A setting of this run (a dotted config key) that differs from the claimed reference."""

    key: str
    value: Any
    reference: Any


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _exempt(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_RECIPE_KEYS)


def _recipe_values(cfg: RootConfig, world_size: int) -> dict[str, Any]:
    """Every leaf of the config by dotted key, except NOT_RECIPE_KEYS; the batch as the global
    batch it gives on `world_size` processes (a per-process 32 on 8 GPUs is the recipe's 256; a
    recipe's global batch is its own on any world, split evenly or not)."""
    values = {k: v for k, v in _leaves(dataclasses.asdict(cfg)).items() if not _exempt(k)}
    del values["trainer.batch_size"]
    t = cfg.trainer
    if t.global_batch is None:
        values["trainer.global_batch"] = per_device_batch(t, world_size) * world_size
    if cfg.data.normalization != "published":  # read only then
        del values["data.mean"], values["data.std"]
    if "multiscale" not in eval_protocols(cfg.eval):
        del values["eval.scales"]
    return values


@functools.cache
def reference_config(name: str) -> RootConfig:
    """The claimed reference `name` (a key of config.REFERENCES) as a composed config."""
    # data.root is run control (never compared), but a composed ImageNet config requires one
    return compose([*REFERENCES[name].overrides, "data.root=unused"])


def deviations(cfg: RootConfig, world_size: int) -> list[Deviation]:
    """Every setting in which this run differs from the recipe it claims (cfg.reference), compared
    as values (1e-4 == 0.0001), in config order; NOT_RECIPE_KEYS are left out."""
    ours = _recipe_values(cfg, world_size)
    theirs = _recipe_values(reference_config(cfg.reference), world_size)
    # a key left out on either side is not read there (eval.scales without multiscale): the key
    # that makes it so (eval.protocol) is the deviation
    return [Deviation(k, v, theirs[k]) for k, v in ours.items() if k in theirs and not same(v, theirs[k])]


def deviations_record(cfg: RootConfig, found: list[Deviation]) -> dict[str, Any]:
    """deviations.json: the claimed reference and each deviation (key, this run's value, the
    reference's value)."""
    return {
        "reference": cfg.reference,
        "reference_title": REFERENCES[cfg.reference].title,
        "reference_overrides": list(REFERENCES[cfg.reference].overrides),
        "deviations": [dataclasses.asdict(d) for d in found],
    }


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


def render(
    cfg: RootConfig, d: Derived, groups: list[GroupSummary], normalization: str, found: list[Deviation]
) -> str:
    """The run's recipe as a table, then one starred line per deviation (`found`, from
    `deviations`) from the reference the experiment claims (cfg.reference)."""
    ours = recipe(cfg, d, groups)
    width = max(len(v.text) for v in ours.values())
    lines = [
        f"{cfg.model.name} on {cfg.data.name}: {d.num_classes} classes, {d.num_train} train / {d.num_eval} "
        f"{cfg.data.eval_split} images; {d.world_size} x {d.device}, {d.steps_per_epoch} steps/epoch",
        f"  {'setting':<16} {'this run':<{width}}".rstrip(),
    ]
    lines += [f"  {key:<16} {value.text}" for key, value in ours.items()]
    lines.append(f"  normalization    {normalization}")
    for g in groups:
        lines.append(
            f"  param group {g.name}: {g.tensors} tensors, {g.parameters:,} parameters, "
            f"weight decay {g.weight_decay:g}"
        )
    title, n = REFERENCES[cfg.reference].title, len(found)
    lines.append(
        f"  claimed reference: {title} (reference={cfg.reference}): {n} deviation{'' if n == 1 else 's'}"
        + (" (* below; deviations.json)" if n else "")
    )
    key_width = max((len(x.key) for x in found), default=0)
    value_width = max((len(_text(x.value)) for x in found), default=0)
    for x in found:
        ours = _text(x.value)
        lines.append(f"* {x.key:<{key_width}}  {ours:<{value_width}}  {title}: {_text(x.reference)}")
    return "\n".join(lines)
