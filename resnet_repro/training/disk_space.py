"""Whether a run's checkpoint files fit on its file system: checked by `train` at its start and by
`rehearse`, before hours of training are spent on a run that cannot save."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from resnet_repro.config import UserError
from resnet_repro.training.optim import optimizer_state_copies


def files_needed_bytes(cfg: Any, net: torch.nn.Module, selection: bool) -> int:
    """Bytes the checkpoint files of a run take at their largest: last.pt (weights and buffers,
    optimizer state, the weight average), best.pt with model selection, the kept epoch_<N>.pt,
    and one more while a file is written beside the one it replaces (save_atomic). Counted from
    the tensors' shapes: a model on the meta device gives the same number."""
    tensors = [*net.parameters(), *net.buffers()]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    ema = weights if cfg.trainer.ema.decay is not None else 0
    one = weights + optimizer_state_copies(cfg.optim) * params + ema
    files = 1 + int(selection) + cfg.trainer.keep_last_k + 1
    return one * files


def check_free_space(run_dir: Path, needed: int) -> None:
    """Refuse a run whose checkpoints cannot fit on its file system before it trains for hours
    (the space its existing checkpoint files hold counts as free: they are replaced)."""
    folder = Path(run_dir).expanduser().resolve()
    while not folder.exists():
        folder = folder.parent
    held = sum(f.stat().st_size for f in (Path(run_dir) / "checkpoints").glob("*.pt") if f.is_file())
    free = shutil.disk_usage(folder).free + held
    if free < needed:
        raise UserError(
            f"the checkpoints of this run need about {needed / 2**30:.1f} GiB and {folder}'s file system has "
            f"{free / 2**30:.1f} GiB free; free some space or choose another hydra.run.dir"
        )
