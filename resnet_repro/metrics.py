"""Run outputs: TensorBoard scalars, metrics.jsonl and the console. Ranks != 0 get a no-op logger."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from resnet_repro.config import LoggingConfig


class MetricsLogger:
    """Writes `<run_dir>/metrics.jsonl` (one JSON object a line) and `<run_dir>/tb` events."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        self._tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._tb is not None and math.isfinite(value):
            self._tb.add_scalar(tag, value, step)

    def text(self, tag: str, text: str) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text)

    def record(self, row: dict[str, Any], step: int) -> None:
        """One metrics.jsonl line; numeric fields also go to TensorBoard as <split>/<key>."""
        self._jsonl.write(json.dumps(row) + "\n")
        split = row.get("split", "misc")
        for key, value in row.items():
            if key not in ("epoch", "split", "step") and isinstance(value, (int, float)):
                self.scalar(f"{split}/{key}", float(value), step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class NullLogger:
    """Same interface; does nothing (ranks other than 0)."""

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def text(self, tag: str, text: str) -> None:
        pass

    def record(self, row: dict[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def make_logger(is_main: bool, run_dir: Path, cfg: LoggingConfig) -> MetricsLogger | NullLogger:
    return MetricsLogger(run_dir, cfg) if is_main else NullLogger()
