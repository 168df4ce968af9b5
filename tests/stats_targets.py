"""Targets for stats_process.run that stand still where a test needs the child to be: the tests put
this folder on the child's PYTHONPATH."""

from __future__ import annotations

import os
import time


def stall(files: list[str], *, on_batch, at: list[int], seconds: float = 60.0) -> str:
    """Report starting the batches at `at`, then wait `seconds` (for a signal) and return."""
    for i in at:
        on_batch(i)
    time.sleep(seconds)
    return f"woke after {len(files)} files"


def exit_with(files: list[str], *, on_batch, status: int) -> None:
    on_batch(0)
    os._exit(status)
