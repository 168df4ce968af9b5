"""Run-control keys: the settings that say how and where a run executes, not what it learns."""

from __future__ import annotations

# Run-control keys: how and where a run executes (progress bars, step caps, processes, resume,
# checkpoint cadence, preemption, data location and threads), not what it learns. They are left
# out of a sweep job's directory name and out of the hyperparameters `resnet-repro report` gives
# TensorBoard. conf/config.yaml's hydra.job.config.override_dirname.exclude_keys is this list
# (Hydra matches exact keys; tests/test_config.py checks the two agree). hydra.* overrides
# (launcher, sweep dir) never reach a job's overrides and need no entry. Sweeping one of these
# keys would give every job the same directory name: the CLI refuses that (see sweep_collisions).
RUN_CONTROL_KEYS: tuple[str, ...] = (
    "logging.tensorboard",
    "logging.progress",
    "logging.log_every_steps",
    "trainer.nproc",
    "trainer.max_steps_per_epoch",
    "trainer.resume",
    "trainer.resume_with_changes",
    "trainer.checkpoint_every_minutes",
    "trainer.keep_last_k",
    "trainer.preempt_signals",
    "trainer.preempt_check_steps",
    "trainer.requeue",
    "trainer.dist_timeout_s",
    "data.root",
    "data.num_threads",
    "data.prefetch",
    "data.max_eval_images",
    "data.stats.path",
    "checkpoint",
)


def is_run_control(key: str) -> bool:
    """Whether an override key (`+key`/`++key`/`~key` forms too) is run control, not a hyperparameter."""
    key = key.lstrip("+~")
    return key in RUN_CONTROL_KEYS or key.startswith("hydra.")
