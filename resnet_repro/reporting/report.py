"""The entry points of `resnet-repro report`: a sweep's rows -> every file of its report, a run
directory -> its figures, and the names the command, scripts/ and tests call as `report.NAME`.

The parts, one job each: job_rows.py reads a Hydra multirun (or a run directory) into one row per
job; sweep_stats.py gives the statistics of those rows (sweep_answer.py, seeds.py, contrasts.py,
clipping_stats.py); tables.py writes report.md and report.csv; figures.py builds the PNG figures
(drawn by plots.py); tb_hparams.py writes TensorBoard's hparams.
"""

from __future__ import annotations

from pathlib import Path

from resnet_repro.config import UserError
from resnet_repro.reporting import figures, plots, sweep_answer, tables
from resnet_repro.reporting.job_rows import (
    DONE,
    Row,
    collect,
    config_value,
    is_run_dir,
    read_metrics,
)
from resnet_repro.reporting.sweep_stats import answer_text, clipping_table, seed_groups_of, sweep_answer_of
from resnet_repro.reporting.tables import markdown_table
from resnet_repro.reporting.tb_hparams import write_hparams

# what `resnet-repro report`, scripts/ and tests call as report.NAME
__all__ = [
    "DONE",
    "answer_text",
    "clipping_table",
    "collect",
    "is_run_dir",
    "markdown_table",
    "sweep_answer_of",
    "write_hparams",
    "write_report",
    "write_run_figures",
]


def write_report(
    rows: list[Row], out_dir: Path, compare: list[Row] | None = None, compare_name: str = ""
) -> dict[str, Path]:
    """report.md, report.csv, report.png (heat map or bars), curves.png (every point per epoch),
    contrasts.csv (an axis with an off value), report_seeds.csv (a sweep over seeds) and
    clipping.png (a sweep over stabilizer.max_norm) in `out_dir`; returns {"markdown", "csv",
    "plot", "curves"[, "contrasts"][, "seeds_csv"][, "clipping"]: path}. `compare`: another
    sweep's rows, whose clipping statistics report.md shows beside this sweep's."""
    if not rows:
        raise UserError(f"no jobs to report in {out_dir}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "report.md",
        "csv": out_dir / "report.csv",
        "plot": out_dir / "report.png",
        "curves": out_dir / "curves.png",
    }
    answer = sweep_answer_of(rows)
    clipping = clipping_table(rows, compare, compare_name)
    title = Path(*out_dir.resolve().parts[-2:]).as_posix()  # "/sweep" stays "/sweep"
    paths["markdown"].write_text(tables.markdown_report(rows, title, answer, clipping))
    tables.write_csv(rows, paths["csv"])
    if answer.contrasts:
        paths["contrasts"] = sweep_answer.write_contrasts_csv(answer, out_dir / "contrasts.csv")
    groups = seed_groups_of(rows)
    if groups is not None:
        paths["seeds_csv"] = sweep_answer.write_points_csv(answer, out_dir / "report_seeds.csv")
    figures.draw_plot(rows, paths["plot"], groups, answer.noise.s)
    plots.save(figures.sweep_curves(rows), paths["curves"])
    clipping = figures.clipping_figure(rows, answer)
    if clipping is not None:
        paths["clipping"] = plots.save(clipping, out_dir / "clipping.png")
    return paths


def write_run_figures(run_dir: Path) -> dict[str, Path]:
    """curves.png and stabilizer.png in a run directory; returns {"curves", "stabilizer": path}."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    if not any(r.get("split") == "train" for r in metrics):
        raise UserError(f"{run_dir / 'metrics.jsonl'} holds no finished epoch yet; nothing to plot")
    max_norm = config_value(run_dir, "stabilizer", "max_norm")
    try:  # a hand-edited 1e1 is a string to YAML 1.1
        if isinstance(max_norm, bool):
            raise TypeError
        max_norm = float(max_norm) if max_norm is not None else None
    except (TypeError, ValueError):
        raise UserError(
            f"{run_dir / 'config.yaml'}: stabilizer.max_norm={max_norm!r} is not a number or null"
        ) from None
    name = "/".join(run_dir.resolve().parts[-2:])
    return {
        "curves": plots.save(figures.run_curves(metrics, name), run_dir / "curves.png"),
        "stabilizer": plots.save(
            figures.stabilizer_figure(metrics, max_norm, f"{name}: gradient norms per epoch"),
            run_dir / "stabilizer.png",
        ),
    }
