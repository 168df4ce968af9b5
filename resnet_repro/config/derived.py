"""Values read off a config by several parts of the run: the per-process batch and the list of
evaluation protocols."""

from __future__ import annotations

from resnet_repro.config.errors import UserError
from resnet_repro.config.schemas import EvalConfig, TrainerConfig


def per_device_batch(t: TrainerConfig, world_size: int) -> int:
    """Images per process per step: trainer.global_batch split over the world, or trainer.batch_size.

    Both set must agree: a per-device batch (from a preset or the command line) silently replaced
    by the global batch would train with a batch nobody asked for."""
    if t.global_batch is None:
        if t.batch_size is None:
            raise UserError("trainer.batch_size and trainer.global_batch are both null: set one of them")
        return t.batch_size
    if t.global_batch % world_size != 0:
        raise UserError(
            f"trainer.global_batch={t.global_batch} is not divisible by the world size {world_size}; "
            f"choose a multiple of {world_size} or another number of processes"
        )
    if t.batch_size is not None and t.batch_size * world_size != t.global_batch:
        processes = f"{world_size} process{'es' if world_size > 1 else ''}"
        raise UserError(
            f"trainer.batch_size={t.batch_size} per process x {processes} disagrees with "
            f"trainer.global_batch={t.global_batch}; pass trainer.batch_size=null to split the global "
            "batch over the processes, or trainer.global_batch=null to use the per-process batch"
        )
    return t.global_batch // world_size


def eval_protocols(ev: EvalConfig) -> list[str]:
    """eval.protocol as a list of protocol names (one name, or a list of them)."""
    return [ev.protocol] if isinstance(ev.protocol, str) else list(ev.protocol)
