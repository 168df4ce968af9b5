"""report.md and report.csv: the sweep's answer and clipping sections (written by sweep_answer.py
and clipping_stats.py) above the table of every job, best first, and the same rows as CSV."""

from __future__ import annotations

import csv
from pathlib import Path

from resnet_repro.reporting import clipping_stats, sweep_answer
from resnet_repro.reporting.job_rows import Row, override_keys, pct, sort_rows, varying_keys
from resnet_repro.reporting.sweep_answer import Answer

REPORT_COLUMNS = (
    "outcome",
    "status",
    "best_top1",
    "final_top1",
    "final_top5",
    "final_loss",
    "epochs_run",
    "epochs",
    "img_per_s",
    "skipped_steps",
    "wall_time_s",
    "note",
)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[Row]) -> str:
    """The sweep as a markdown table: one column per varying override, best first, failed last."""
    keys = varying_keys(rows) or override_keys(rows)
    skips = any(row.get("skipped_steps") for row in rows)  # the column only where a step was skipped
    header = [
        *keys,
        "outcome",
        "status",
        "best top-1 %",
        "final top-1 %",
        "final top-5 %",
        "final loss",
        "epochs",
        "img/s",
        *(["skipped steps"] if skips else []),
        "wall time",
        "job",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sort_rows(rows):
        epochs = str(row["epochs_run"]) + (f"/{row['epochs']}" if row["epochs"] is not None else "")
        cells = [
            *(row["overrides"].get(k, "") for k in keys),
            row["outcome"],
            row["status"],
            pct(row["best_top1"]),
            pct(row["final_top1"]),
            pct(row["final_top5"]),
            f"{row['final_loss']:.4f}" if row["final_loss"] is not None else "-",
            epochs,
            f"{row['img_per_s']:.0f}" if row["img_per_s"] is not None else "-",
            *([str(row.get("skipped_steps", 0))] if skips else []),
            _duration(row["wall_time_s"]),
            row["job"],
        ]
        lines.append("| " + " | ".join(_markdown_cell(str(c)) for c in cells) + " |")
    return "\n".join(lines)


def markdown_report(rows: list[Row], title: str, answer: Answer, clipping: str = "") -> str:
    """The answer first (contrasts against off, then the points), then every job."""
    varying = set(varying_keys(rows))
    common = {k: v for k, v in rows[0]["overrides"].items() if k not in varying}
    parts = [f"# Sweep report: {title}", ""]
    if common and varying:
        parts += ["Common overrides: " + ", ".join(f"`{k}={v}`" for k, v in common.items()), ""]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    parts += [f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()), ""]
    parts += sweep_answer.contrast_section(answer)
    if answer.seeded:
        parts += sweep_answer.points_section(answer)
    if clipping:
        parts += ["## Clipping per max norm", "", clipping, "", clipping_stats.NOTE, ""]
    parts += ["## Every job", "", markdown_table(rows), ""]
    notes = [f"- `{r['job']}`: {r['note']}" for r in sort_rows(rows) if r["note"]]
    if notes:
        parts += ["Notes:", "", *notes, ""]
    parts += ["Wall time is training time (sum of epoch_time_s), or file times for jobs without one.", ""]
    return "\n".join(parts)


def write_csv(rows: list[Row], path: Path) -> None:
    keys = override_keys(rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", *keys, *REPORT_COLUMNS])
        for row in sort_rows(rows):
            values = [row["overrides"].get(k, "") for k in keys] + [row[c] for c in REPORT_COLUMNS]
            writer.writerow([row["job"], *("" if v is None else v for v in values)])
