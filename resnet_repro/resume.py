"""Whether and from where a run resumes, and whether a checkpoint may continue this run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from resnet_repro.config import RootConfig, UserError
from resnet_repro.run_state import TRAINING_KEYS, job_shape
from resnet_repro.schedule import resume_fields
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


# What a run *is*: a checkpoint trained with other values of these is another experiment, and
# continuing it under this run's name would describe weights that were never trained this way
# (e.g. two `srun` steps of a seed loop sharing a run directory). Leaves not listed (data.root,
# backend, threads, logging, max_norm, early stopping, checkpoint cadence) may change on resume.
IDENTITY_KEYS = (
    "trainer.seed",
    "trainer.precision",
    "trainer.ema",
    "model",
    "regularization",
    "data.name",
    "data.train_split",
    "data.eval_split",
    "data.image_size",
    "data.crop_ratio",
    "data.augment",
    "data.normalization",
    "data.exclude_files",
    "data.subset",
    "data.holdout.size",
    "data.holdout.seed",
    "data.holdout.stats_from",
)
# model settings that change speed or memory, not the computation
IDENTITY_EXEMPT = ("model.channels_last",)


def _sections_flat(config: dict[str, Any]) -> dict[str, Any]:
    """The leaves of a config's sections (not its top-level plain values) by dotted key."""
    flat: dict[str, Any] = {}
    for section, node in config.items():
        if isinstance(node, dict):
            flat.update(_flat(node, f"{section}."))
    return flat


def _identity_keys(cfg: RootConfig) -> tuple[list[str], tuple[str, ...]]:
    """(keys, exempt leaves): what a checkpoint must share with this run to continue it."""
    keys = ["optim", *resume_fields(cfg.schedule.name), *IDENTITY_KEYS]
    if cfg.data.normalization != "published":  # data.mean / data.std are read only then
        return keys, (*IDENTITY_EXEMPT, "data.mean", "data.std")
    return [*keys, "data.mean", "data.std"], IDENTITY_EXEMPT


def _selected(values: dict[str, Any], keys: list[str], exempt: tuple[str, ...]) -> dict[str, Any]:
    return {
        k: v
        for k, v in values.items()
        if k not in exempt and any(k == key or k.startswith(key + ".") for key in keys)
    }


def resume_identity(cfg: RootConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with this run to continue it (the ones
    resume_config_changes compares), plus the experiment's name and its batch: a rerun of the same
    command has the same identity, so it is given the same run directory (cli.run_id)."""
    keys, exempt = _identity_keys(cfg)
    identity = _selected(_sections_flat(dataclasses.asdict(cfg)), keys, exempt)
    t = cfg.trainer
    return {"name": cfg.name, "batch": [t.batch_size, t.global_batch], **identity}


def resume_config_changes(saved: dict[str, Any], cfg: RootConfig) -> list[str]:
    """Settings that a resume would silently not honour, changed on this command line, as
    "key old -> new": the optimizer's and the LR schedule's (their state comes from the
    checkpoint: LR, momentum, weight decay, milestones, warm-up; with cosine also the length of
    the run), and the settings that make the run what it is (IDENTITY_KEYS)."""
    keys, exempt = _identity_keys(cfg)
    old_values = _sections_flat(saved)
    new_values = _selected(_sections_flat(dataclasses.asdict(cfg)), keys, exempt)
    changes = []
    for k in sorted(new_values):
        if k in old_values and old_values[k] != new_values[k]:
            changes.append(f"{k} {old_values[k]} -> {new_values[k]}")
    return changes


def check_resumable(
    state: dict[str, Any],
    path: Path,
    derived: Derived,
    cfg: RootConfig,
    normalization: tuple[list[float], list[float]] | None = None,
) -> list[str]:
    """A checkpoint continues only the job it came from: same world size, global batch and steps
    per epoch (the LR schedule and the data position are counted in those), the same optimizer
    and schedule settings (their state comes from the checkpoint: a change would be ignored), and
    the same experiment (IDENTITY_KEYS and the normalization values in use).

    With trainer.resume_with_changes=true the setting differences are accepted and returned (for
    the log); the job's shape never is."""
    for key in TRAINING_KEYS:
        if key not in state:
            raise UserError(
                f"checkpoint {path} is not a training checkpoint of this tool (no {key!r}); "
                "to evaluate weights use `resnet-repro eval checkpoint=...`"
            )
    job = state.get("job")
    now = job_shape(derived)
    if job is not None and job != now:
        diff = ", ".join(f"{k} {job[k]} -> {now[k]}" for k in now if job.get(k) != now[k])
        raise UserError(
            f"checkpoint {path} belongs to a different job ({diff}); resume with the same processes and "
            "batch size, or start a new run directory (trainer.resume=never or another hydra.run.dir)"
        )
    changes = resume_config_changes(state["config"], cfg) if isinstance(state.get("config"), dict) else []
    saved_norm = state.get("normalization")
    if normalization is not None and isinstance(saved_norm, dict):
        for name, values in zip(("mean", "std"), normalization, strict=True):
            old = [round(float(v), 6) for v in saved_norm.get(name, [])]
            new = [round(float(v), 6) for v in values]
            if old != new:
                changes.append(f"normalization {name} {old} -> {new}")
    if changes and not cfg.trainer.resume_with_changes:
        raise UserError(
            f"checkpoint {path} was trained with other settings ({'; '.join(changes[:4])}"
            f"{'; ...' if len(changes) > 4 else ''}): it is another run (optimizer and schedule state "
            "would come from the checkpoint, ignoring the new values); resume with the run's settings, "
            "start a new run directory (trainer.resume=never or another hydra.run.dir), or set "
            "trainer.resume_with_changes=true to continue it anyway"
        )
    return changes
