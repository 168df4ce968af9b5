"""TensorBoard hparams (the HPARAMS tab) for a sweep: each job's hyperparameters, typed, and its scores,
written into the job's own tb/ folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnet_repro.config import is_run_control
from resnet_repro.reporting.job_rows import Row, override_keys
from resnet_repro.reporting.seeds import parse_value

# Our hparams event files end with this, so a second `report` replaces them instead of adding sessions
HPARAMS_SUFFIX = ".hparams"


def hparam_keys(rows: list[Row]) -> list[str]:
    """The override keys that are hyperparameters: run control (config.RUN_CONTROL_KEYS: data.root,
    step caps, logging, ...) is left out, as it is from the job directory names."""
    return [k for k in override_keys(rows) if not is_run_control(k)]


def hparam_values(rows: list[Row]) -> list[dict[str, float | str]]:
    """Each job's hyperparameters typed for TensorBoard: floats for keys that are numbers in every job,
    else text.

    A key that is a number in one job and text in another (max_norm=null vs 1) is written as text in all
    of them ("null", "1"): TensorBoard types a column from one run's experiment summary, and a numeric
    column's interval filter rejects text values. A job without the key gets "null".
    """
    keys = hparam_keys(rows)
    numeric = {k: all(isinstance(parse_value(r["overrides"].get(k)), float) for r in rows) for k in keys}
    typed = []
    for row in rows:
        values: dict[str, float | str] = {}
        for k in keys:
            text = row["overrides"].get(k)
            parsed = parse_value(text)
            if numeric[k]:
                values[k] = float(parsed)  # type: ignore[arg-type]
            elif parsed is None:
                values[k] = "null"
            else:
                # a number keeps the text the user wrote ("1", not "1.0"), as in the job's dir name
                values[k] = parsed if isinstance(parsed, str) else str(text).strip()
        typed.append(values)
    return typed


def write_hparams(rows: list[Row]) -> list[Path]:
    """TensorBoard hparams (the HPARAMS tab) in each job's own tb/ folder; returns the event files.

    Every job gets the same experiment summary (all keys, every value as a discrete domain, the
    metrics), because TensorBoard reads that summary from one arbitrary run and applies it to all.
    A metric no job has (best top-1 in a sweep without a holdout) is left out, and a job without a
    metric (a failed one) writes no value for it: TensorBoard shows an empty cell, not NaN. Earlier
    hparams files of this function are replaced, so running the report again while a sweep
    progresses does not add duplicate sessions.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    typed = hparam_values(rows)
    # every value of a key has one type (see hparam_values), so each domain sorts
    domains: dict[str, set[Any]] = {}
    for values in typed:
        for k, v in values.items():
            domains.setdefault(k, set()).add(v)
    tags = {
        f"hparam/{key}": key for key in ("best_top1", "final_top1") if any(r[key] is not None for r in rows)
    }
    written = []
    for row, values in zip(rows, typed, strict=True):
        metrics = {tag: float(row[key]) for tag, key in tags.items() if row[key] is not None}
        # the same thing SummaryWriter.add_hparams(..., run_name=".") writes, but into a file we can
        # recognise (and replace) by its suffix, and without add_hparams' extra empty event file;
        # hparams() reads only the names of its metric dict
        exp, ssi, sei = hparams(values, dict.fromkeys(tags), {k: sorted(domains[k]) for k in values})
        tb_dir = Path(row["path"]) / "tb"
        tb_dir.mkdir(parents=True, exist_ok=True)
        for old in tb_dir.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
            old.unlink()
        with SummaryWriter(log_dir=str(tb_dir), filename_suffix=HPARAMS_SUFFIX) as writer:
            for summary in (exp, ssi, sei):
                writer.file_writer.add_summary(summary)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, 0)
        written += sorted(tb_dir.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"))
    return written
