"""The start-up summary: the resolved recipe side by side with the paper's, differences marked."""

from __future__ import annotations

from dataclasses import dataclass

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


# He et al. 2016, as trained for torchvision's ResNet50_Weights.IMAGENET1K_V1 (76.13% top-1)
PAPER: dict[str, str] = {
    "model": "resnet50 v1.5 (torchvision)",
    "global batch": "256",
    "optimizer": "sgd momentum 0.9",
    "peak LR": "0.1",
    "schedule": "x0.1 at epochs [30, 60], 90 epochs",
    "warm-up": "none",
    "max norm": "none",
    "weight decay": "1e-4 on all parameters",
    "regularization": "none",
    "train transform": "RandomResizedCrop 224 (area [0.08, 1.0]) + flip",
    "eval transform": "resize 256, centre crop 224",
    "precision": "fp32",
}


def recipe(cfg: RootConfig, d: Derived, groups: list[GroupSummary]) -> dict[str, str]:
    m, o, s, st, a, r = (
        cfg.model,
        cfg.optim,
        cfg.schedule,
        cfg.stabilizer,
        cfg.data.augment,
        cfg.regularization,
    )
    if s.name == "step":
        schedule = f"x{s.gamma:g} at epochs {list(s.milestones)}, {cfg.trainer.epochs} epochs"
    elif s.name == "cosine":
        schedule = f"cosine to {s.final_lr_factor:g} x peak, {cfg.trainer.epochs} epochs"
    elif s.name == "plateau":
        schedule = f"x{s.factor:g} after {s.patience} flat epochs, {cfg.trainer.epochs} epochs"
    else:
        schedule = f"constant, {cfg.trainer.epochs} epochs"
    decayed = [g for g in groups if g.weight_decay > 0]
    if len(decayed) == len(groups):
        decay = f"{o.weight_decay:g} on all parameters"
    else:
        decay = f"{o.weight_decay:g} on {sum(g.parameters for g in decayed):,} parameters, not on norm/bias"
    if a.pad_crop > 0:
        train_t = f"pad {a.pad_crop} + random crop {cfg.data.image_size}"
    elif a.random_resized_crop:
        train_t = f"RandomResizedCrop {cfg.data.image_size} (area [{a.scale[0]:g}, {a.scale[1]:g}])"
    else:
        train_t = (
            f"resize {round(cfg.data.image_size / cfg.data.crop_ratio)}, centre crop {cfg.data.image_size}"
        )
    train_t += " + flip" if a.hflip else ""
    regs = [f"{k} {v:g}" for k, v in vars(r).items() if isinstance(v, float) and v > 0 and "size" not in k]
    optimizer = f"{o.name} momentum {o.momentum:g}" if o.name == "sgd" else f"{o.name} betas {list(o.betas)}"
    if o.name == "sgd" and o.nesterov:
        optimizer += " nesterov"
    return {
        "model": f"{m.name} {m.variant}" + (" (torchvision)" if m.variant == "v1.5" else " (paper strides)"),
        "global batch": str(d.global_batch),
        "optimizer": optimizer,
        "peak LR": f"{d.peak_lr:g}",
        "schedule": schedule,
        "warm-up": f"{st.warmup_epochs:g} epochs from {st.warmup_start_factor:g} x peak"
        if st.warmup_epochs > 0
        else "none",
        "max norm": f"{st.max_norm:g}" if st.max_norm else "none",
        "weight decay": decay,
        "regularization": ", ".join(regs) or "none",
        "train transform": train_t,
        "eval transform": f"resize {round(cfg.data.image_size / cfg.data.crop_ratio)}, "
        f"centre crop {cfg.data.image_size}",
        "precision": cfg.trainer.precision,
    }


def render(cfg: RootConfig, d: Derived, groups: list[GroupSummary], normalization: str) -> str:
    """A text table: setting | this run | paper, with `*` on every row that differs."""
    ours = recipe(cfg, d, groups)
    width = max(len(v) for v in ours.values())
    lines = [
        f"{cfg.model.name} on {cfg.data.name}: {d.num_classes} classes, {d.num_train} train / {d.num_eval} "
        f"{cfg.data.eval_split} images; {d.world_size} x {d.device}, {d.steps_per_epoch} steps/epoch",
        f"  {'setting':<16} {'this run':<{width}}   paper",
    ]
    for key, value in ours.items():
        mark = "*" if value != PAPER[key] else " "
        lines.append(f"{mark} {key:<16} {value:<{width}}   {PAPER[key]}")
    lines.append(f"  normalization    {normalization}")
    for g in groups:
        lines.append(
            f"  param group {g.name}: {g.tensors} tensors, {g.parameters:,} parameters, "
            f"weight decay {g.weight_decay:g}"
        )
    lines.append("  (* = differs from the paper recipe)")
    return "\n".join(lines)
