"""The warnings a run gives once, at its start, after its summary: settings that will not do what
they seem to (a step milestone or a progressive ramp past the last epoch, model selection on the
test split) and the normalization's own."""

from __future__ import annotations

from resnet_repro.config import RootConfig
from resnet_repro.data import progressive
from resnet_repro.training.schedule import late_milestones


def start_warnings(cfg: RootConfig, norm_warnings: list[str], selection: str | None) -> list[str]:
    """Each warning in one line, in the order the log gives them. `selection`: the split model
    selection reads (None: no selection)."""
    epochs = cfg.trainer.epochs
    late = [late_milestones(cfg.schedule, epochs), progressive.late_ramp(cfg.data, epochs)]
    found = [*norm_warnings, *(w for w in late if w is not None)]
    if selection == cfg.data.eval_split:
        found.append(
            f"model selection uses the test split ({selection}): its numbers are no longer an unbiased "
            "estimate; carve a holdout with data.holdout.size instead"
        )
    return found
