"""Whether and from where a run resumes, and whether a checkpoint may continue this run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from resnet_repro.config import RootConfig, UserError
from resnet_repro.summary import Derived


def resume_path(cfg: RootConfig, run_dir: Path) -> Path | None:
    mode = cfg.trainer.resume
    if mode == "never":
        return None
    if mode == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    path = Path(mode).expanduser()
    if not path.is_file():
        raise UserError(f"trainer.resume={mode}: no such checkpoint file")
    return path


def _flat(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def resume_config_changes(saved: dict[str, Any], cfg: RootConfig) -> list[str]:
    """Settings whose state a resume takes from the checkpoint, changed on this command line:
    the optimizer's (LR, momentum, weight decay are in its state), the LR schedule's (milestones,
    warm-up; with cosine also the length of the run), as "key old -> new"."""
    now = dataclasses.asdict(cfg)
    # only the fields the chosen schedule reads (a plateau patience under the step schedule is inert)
    used = {
        "step": ["milestones", "gamma"],
        "cosine": ["final_lr_factor"],
        "plateau": ["patience", "factor", "metric", "min_delta"],
    }.get(cfg.schedule.name, [])
    keys = ["optim", "schedule.name", *(f"schedule.{k}" for k in used)]
    keys += ["stabilizer.warmup_epochs", "stabilizer.warmup_start_factor"]
    if cfg.schedule.name == "cosine":
        keys.append("trainer.epochs")
    changes = []
    for key in keys:
        section, _, leaf = key.partition(".")
        if section not in saved:
            continue
        old_values = _flat(saved[section], f"{section}.")
        new_values = _flat(now[section], f"{section}.")
        for k in sorted(new_values):
            if (leaf and k != key) or k not in old_values:
                continue
            if old_values[k] != new_values[k]:
                changes.append(f"{k} {old_values[k]} -> {new_values[k]}")
    return changes


def check_resumable(state: dict[str, Any], path: Path, derived: Derived, cfg: RootConfig) -> None:
    """A checkpoint continues only the job it came from: same world size, global batch and steps
    per epoch (the LR schedule and the data position are counted in those), and the same optimizer
    and schedule settings (their state comes from the checkpoint: a change would be ignored)."""
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "epoch_step", "rng"):
        if key not in state:
            raise UserError(
                f"checkpoint {path} is not a training checkpoint of this tool (no {key!r}); "
                "to evaluate weights use `resnet-repro eval checkpoint=...`"
            )
    job = state.get("job")
    now = {
        "world_size": derived.world_size,
        "global_batch": derived.global_batch,
        "steps_per_epoch": derived.steps_per_epoch,
    }
    if job is not None and job != now:
        diff = ", ".join(f"{k} {job[k]} -> {now[k]}" for k in now if job.get(k) != now[k])
        raise UserError(
            f"checkpoint {path} belongs to a different job ({diff}); resume with the same processes and "
            "batch size, or start a new run directory (trainer.resume=never or another hydra.run.dir)"
        )
    changes = resume_config_changes(state["config"], cfg) if isinstance(state.get("config"), dict) else []
    if changes:
        raise UserError(
            f"checkpoint {path} was trained with other optimizer/schedule settings ({'; '.join(changes[:4])}"
            f"{'; ...' if len(changes) > 4 else ''}): resuming would keep the checkpoint's and ignore "
            "the new ones; resume with the run's settings, or start a new run directory "
            "(trainer.resume=never or another hydra.run.dir)"
        )
