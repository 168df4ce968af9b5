"""What a row of the GPU check (scripts/gpu_check.py) is and what it runs with: `Row` (its run,
goals, time estimates and needs), `Goal` (a measured key against a value per device, `OPS`), `Skip`
(raised by a row that cannot run here), `Ctx` (the device, the budget's deadline, the logs folder,
the sample's files or generated JPEGs) and `HAVE` (which optional modules this machine has).
Imports only torch at module level: the lent GPU machine may lack DALI or Hydra."""

from __future__ import annotations

import importlib.util
import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


class Skip(Exception):
    """Raised by a row that finds at run time it cannot run here."""


@dataclass
class Ctx:
    device: torch.device
    quick: bool
    logs: Path  # each row's logs: packed into DIR/gpu_check_logs.tar.gz at the end
    sample: Path | None  # an ImageNet-layout folder with a train split, or None
    tmp: Path  # runs, checkpoints, generated data: removed at the end
    deadline: float = math.inf  # time.monotonic() at which the budget is spent
    install_report: Path | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def files(self, limit: int = 250, real: bool = True) -> tuple[list[str], list[int], str]:
        """Real JPEGs of the sample (or generated ones), their labels, and where they came from.
        `real=False` on a CPU: 24 generated JPEGs in 2 classes, to keep the CPU rows short."""
        from resnet_repro.data.splits import list_split

        key = "real" if real or self.cuda else "small"
        if key not in self.cache:
            root, origin = self.sample, f"sample {self.sample}"
            if key == "small" or root is None or not (root / "train").is_dir():
                root = self.tmp / "generated"
                origin = "24 generated JPEGs" + (" (CPU size)" if key == "small" else " (no sample folder)")
                if not (root / "train").is_dir():
                    _generate_jpegs(root / "train", 24)
            fl = list_split(root, "train")
            self.cache[key] = (list(fl.files), list(fl.labels), origin)
        files, labels, origin = self.cache[key]
        return files[:limit], labels[:limit], origin


OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


@dataclass(frozen=True)
class Goal:
    """`result[key] op value`, with the value for each device (None: not judged on that device)."""

    name: str  # unique over all rows: what --goal NAME=VALUE sets
    key: str  # the row's result key it judges
    op: str
    cuda: Any
    cpu: Any = None


@dataclass
class Row:
    name: str
    run: Callable[[Ctx], dict[str, Any]]
    goals: tuple[Goal, ...]
    est_s: tuple[float, float]  # estimated seconds on (cuda, cpu): the budget's skip decision
    needs: tuple[str, ...] = ()  # cuda, dali, hydra, pytest, sklearn
    quick: bool = False


HAVE = {
    "dali": lambda: importlib.util.find_spec("nvidia.dali") is not None,
    "hydra": lambda: importlib.util.find_spec("hydra") is not None,
    "pytest": lambda: importlib.util.find_spec("pytest") is not None,
    "sklearn": lambda: importlib.util.find_spec("sklearn") is not None,
}


def _generate_jpegs(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        smooth = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        pixels = np.kron(smooth, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
        Image.fromarray(pixels).save(folder / f"c{i % 2}" / f"{i}.JPEG", quality=90)
