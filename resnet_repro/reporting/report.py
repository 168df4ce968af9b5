"""Sweep aggregation: one row per job of a Hydra multirun -> report.md, report.csv, PNG figures, TB hparams.

A job directory is any directory below the sweep directory that holds `.hydra/overrides.yaml` (written by
Hydra at job start) or `config.yaml` (written by `train`). Everything here reads files only, so it also
works on a sweep that is still running or whose jobs crashed: missing files give missing cells, never
an error. Accuracies are fractions (as in metrics.jsonl); report.md and the figures show percentages.
A single run directory (metrics.jsonl inside it) gets its own figures: curves and the stabilizer's.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from resnet_repro.config import UserError, is_run_control
from resnet_repro.reporting import clipping_stats, contrasts, plots, seeds, sweep_answer
from resnet_repro.reporting.seeds import SEED_KEY, SeedGroup, parse_value, seed_groups, value_order
from resnet_repro.reporting.sweep_answer import Answer

Row = dict[str, Any]

# Job statuses, from the files a job left; each gives one of the outcomes of resnet_repro.reporting.seeds
# (finished, diverged, failed, incomplete), and only finished jobs are scored, averaged and ranked
DONE, EARLY_STOP, NAN, PREEMPTED, FAILED = "done", "early_stop", "nan", "preempted", "failed/incomplete"

# Directories inside a job (or a sweep) that never hold job directories; `.submitit`, `.hydra` are hidden
_NOT_JOBS = {"tb", "checkpoints"}

# Our hparams event files end with this, so a second `report` replaces them instead of adding sessions
HPARAMS_SUFFIX = ".hparams"

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
    "wall_time_s",
    "note",
)


# ----------------------------------------------------------------------------------------------------
# Reading one sweep
# ----------------------------------------------------------------------------------------------------


def collect(multirun_dir: Path) -> list[Row]:
    """One row per job directory below `multirun_dir` (a sweep dir, or a folder of several sweeps).

    Row keys: job (path relative to multirun_dir), path, overrides ({key: value text}), status, best_top1,
    final_top1, final_top5, final_loss, epochs_run, epochs (planned), img_per_s (mean over train epochs),
    wall_time_s, note (why a job stopped, when it did not finish normally).
    """
    root = Path(multirun_dir)
    if not root.is_dir():
        raise UserError(f"sweep directory {root} does not exist (or is not a directory)")
    jobs = list(find_job_dirs(root))
    if not jobs:
        raise UserError(
            f"{root} holds no job directories (looked for .hydra/overrides.yaml or config.yaml below it)"
        )
    return [summarize_job(job, root) for job in jobs]


def find_job_dirs(root: Path) -> Iterator[Path]:
    """Job directories at or below `root`, in sorted order; a job's own subfolders are not searched."""
    if _is_job_dir(root):
        yield root
        return
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            if child.name not in _NOT_JOBS:
                yield from find_job_dirs(child)


def _is_job_dir(path: Path) -> bool:
    return (path / ".hydra" / "overrides.yaml").is_file() or (path / "config.yaml").is_file()


def read_overrides(job_dir: Path) -> dict[str, str]:
    """`.hydra/overrides.yaml` (a YAML list of `key=value`) as {key: value text}; {} when absent."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    try:
        items = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(items, list):
        raise UserError(f"{path} should hold a YAML list of key=value strings, found {type(items).__name__}")
    overrides = {}
    for item in items:
        key, _, value = str(item).partition("=")
        # `+key=v` / `++key=v` add or force a key; the report cares about the key itself
        overrides[key.lstrip("+~")] = value
    return overrides


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows, one per (epoch, split), keeping the last of duplicates.

    Duplicates happen when a job is resumed after the rows of an epoch were written but before its
    checkpoint was: the epoch is trained again and its rows appended again. A crashed job can leave a
    half-written last line, which is skipped.
    """
    if not path.is_file():
        return []
    rows: dict[tuple[Any, Any], dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows[(row.get("epoch"), row.get("split"))] = row
    return list(rows.values())


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing or unreadable (a job killed while writing it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def job_status(job_dir: Path, final: dict[str, Any] | None) -> str:
    """done / early_stop (final.json exists) or nan / preempted / failed/incomplete (it does not)."""
    if final is not None:
        return EARLY_STOP if final.get("stopped") else DONE
    markers = {
        NAN: job_dir / "nonfinite_report.json",
        PREEMPTED: job_dir / "preempted.json",
    }
    present = {status: p.stat().st_mtime for status, p in markers.items() if p.is_file()}
    if not present:
        return FAILED
    # A job preempted, resumed and then hit by NaN keeps both files (and vice versa): the newer one counts
    return max(present, key=present.__getitem__)


def job_outcome(job_dir: Path, status: str) -> str:
    """finished (final.json), diverged (non-finite), failed (error.txt), else incomplete:
    preempted, killed without a word, or still running."""
    if status in (DONE, EARLY_STOP):
        return seeds.FINISHED
    if status == NAN:
        return seeds.DIVERGED
    if status == FAILED and (job_dir / "error.txt").is_file():
        return seeds.FAILED
    return seeds.INCOMPLETE


def finished(row: Row) -> bool:
    return row["outcome"] == seeds.FINISHED


def summarize_job(job_dir: Path, root: Path) -> Row:
    """One report row for `job_dir` (see `collect` for its keys)."""
    final = _read_json(job_dir / "final.json")
    metrics = read_metrics(job_dir / "metrics.jsonl")
    train_rows = [r for r in metrics if r.get("split") == "train"]
    # every other split with a top1 is an evaluation (val, holdout, test: the config's eval_split)
    eval_rows = [r for r in metrics if r.get("split") != "train" and _is_number(r.get("top1"))]
    status = job_status(job_dir, final)
    ended = job_outcome(job_dir, status)
    final = final or {}
    best_top1 = _best_top1(eval_rows, final)
    return {
        "job": job_dir.relative_to(root).as_posix(),
        "path": job_dir,
        "overrides": read_overrides(job_dir),
        "status": status,
        "outcome": ended,
        "best_top1": best_top1,
        "score_split": _score_split(eval_rows, final, best_top1),
        "final_top1": final.get("top1"),
        "final_top5": final.get("top5"),
        "final_loss": final.get("loss"),
        "epochs_run": _epochs_run(metrics, final),
        "epochs": final.get("epochs", _planned_epochs(job_dir)),
        "img_per_s": _mean(r.get("img_per_s") for r in train_rows),
        "wall_time_s": _wall_time(job_dir, train_rows),
        "note": _note(job_dir, status, final),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if _is_number(v)]
    return sum(numbers) / len(numbers) if numbers else None


def _best_top1(eval_rows: list[dict[str, Any]], final: dict[str, Any]) -> float | None:
    """The best top-1 on the run's model-selection split (final.json's `selection`: the holdout, or
    the test split under trainer.select_on_test); None when the run had no selection split, since
    a best-epoch number on the test split would be a selection on the test set. A job without
    final.json (crashed) shows its best holdout top-1, else its best evaluation."""
    if "selection" in final:
        split = final["selection"]
        if split is None:
            return None
        rows = [r for r in eval_rows if r.get("split") == split]
        if rows:
            return max(float(r["top1"]) for r in rows)
        best = final.get("best_top1")
        # train() starts best_top1 at -1.0: a run that never evaluated has no best
        return float(best) if _is_number(best) and best >= 0 else None
    rows = [r for r in eval_rows if r.get("split") == "holdout"] or eval_rows
    if rows:
        return max(float(r["top1"]) for r in rows)
    best = final.get("best_top1")
    return float(best) if _is_number(best) and best >= 0 else None


def _score_split(eval_rows: list[dict[str, Any]], final: dict[str, Any], best: float | None) -> str | None:
    """The split `score` comes from: the selection split of the best top-1 (as `_best_top1` picks
    it), else "final evaluation" (a run without a selection split is scored by its final top-1);
    None for a job with neither."""
    if best is not None:
        if final.get("selection"):
            return str(final["selection"])
        splits = [r.get("split") for r in eval_rows]
        return "holdout" if "holdout" in splits else (str(splits[0]) if splits else None)
    return "final evaluation" if _is_number(final.get("top1")) else None


def score_splits(rows: list[Row]) -> str:
    """The splits behind the sweep's scores, for a figure's title: `holdout`, `holdout/final evaluation`."""
    return "/".join(sorted({r["score_split"] for r in rows if r.get("score_split")})) or "no evaluation"


def score(row: Row) -> float | None:
    """What ranks a job and colours its heat-map cell: best top-1 on its selection split, or, for a
    run without one, its final top-1."""
    return row["best_top1"] if row["best_top1"] is not None else row["final_top1"]


def _epochs_run(metrics: list[dict[str, Any]], final: dict[str, Any]) -> int:
    if _is_number(final.get("epochs_run")):
        return int(final["epochs_run"])
    # only epochs that got their rows count: a job killed mid-epoch has not finished that epoch
    return max((int(r["epoch"]) for r in metrics if _is_number(r.get("epoch"))), default=0)


def _planned_epochs(job_dir: Path) -> int | None:
    """trainer.epochs from the resolved config.yaml, for jobs that did not write final.json."""
    try:
        config = yaml.safe_load((job_dir / "config.yaml").read_text())
        return int(config["trainer"]["epochs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _wall_time(job_dir: Path, train_rows: list[dict[str, Any]]) -> float | None:
    """Training time in seconds: the sum of epoch_time_s (excludes start-up and evaluation).

    A job that never finished an epoch has none; then the span of its files' modification times, from
    the files written at job start to the newest file, stands in for it.
    """
    times = [float(r["epoch_time_s"]) for r in train_rows if _is_number(r.get("epoch_time_s"))]
    if times:
        return sum(times)
    # Hydra's .hydra/ files, else train()'s config.yaml / run.json: both are written as the job starts
    start_files = list((job_dir / ".hydra").glob("*")) or [
        p for p in (job_dir / "config.yaml", job_dir / "run.json") if p.is_file()
    ]
    files = [p for p in job_dir.rglob("*") if p.is_file()]
    if not start_files or not files:
        return None
    start = min(p.stat().st_mtime for p in start_files)
    return max(0.0, max(p.stat().st_mtime for p in files) - start)


def _note(job_dir: Path, status: str, final: dict[str, Any]) -> str:
    if status == EARLY_STOP:
        return str(final["stopped"])
    if status == NAN:
        report = _read_json(job_dir / "nonfinite_report.json") or {}
        where = f" at epoch {report['epoch'] + 1}, step {report.get('step')}" if "epoch" in report else ""
        return f"non-finite loss or gradient{where}; see nonfinite_report.json"
    if status == PREEMPTED:
        info = _read_json(job_dir / "preempted.json") or {}
        return f"preempted by {info.get('signal')}; rerun the same command to resume"
    if status == FAILED:
        error = job_dir / "error.txt"
        if error.is_file():
            return "error: " + error.read_text().strip().splitlines()[0]
        return "no final.json: the job crashed, was killed or is still running; see its log"
    return ""


# ----------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------


def sort_rows(rows: list[Row]) -> list[Row]:
    """Best top-1 (final top-1 for runs without a selection split) descending; jobs that did not
    finish (diverged, failed, incomplete) last; ties by job name."""

    def key(row: Row) -> tuple[bool, bool, float, str]:
        best = score(row)
        return (not finished(row), best is None, -(best or 0.0), row["job"])

    return sorted(rows, key=key)


def override_keys(rows: list[Row]) -> list[str]:
    """Every override key of any job, in first-seen order."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row["overrides"]))
    return list(keys)


def varying_keys(rows: list[Row]) -> list[str]:
    """Override keys whose value differs between jobs (the sweep's axes); data.root etc. are constant."""
    return [k for k in override_keys(rows) if len({r["overrides"].get(k) for r in rows}) > 1]


def _pct(value: float | None) -> str:
    return f"{100 * value:.2f}" if value is not None else "-"


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
            _pct(row["best_top1"]),
            _pct(row["final_top1"]),
            _pct(row["final_top5"]),
            f"{row['final_loss']:.4f}" if row["final_loss"] is not None else "-",
            epochs,
            f"{row['img_per_s']:.0f}" if row["img_per_s"] is not None else "-",
            _duration(row["wall_time_s"]),
            row["job"],
        ]
        lines.append("| " + " | ".join(_markdown_cell(str(c)) for c in cells) + " |")
    return "\n".join(lines)


def _markdown_report(rows: list[Row], title: str, answer: Answer, clipping: str = "") -> str:
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


def answer_text(rows: list[Row]) -> str:
    """The contrasts against off and, with seeds, the points, as report.md has them."""
    answer = sweep_answer_of(rows)
    parts = sweep_answer.contrast_section(answer) + (
        sweep_answer.points_section(answer) if answer.seeded else []
    )
    return "\n".join(parts).strip() or "(no axis with an off value and no seeds: nothing more to compare)"


def _finished_score(row: Row) -> float | None:
    return score(row) if finished(row) else None


def _outcome(row: Row) -> str:
    return row["outcome"]


def sweep_answer_of(rows: list[Row]) -> Answer:
    """The sweep's points, seed noise, contrasts against off and best set (reporting/sweep_answer.py)."""
    return sweep_answer.answer(rows, varying_keys(rows), _finished_score, _outcome)


def seed_groups_of(rows: list[Row]) -> list[SeedGroup] | None:
    """The sweep's seed groups (resnet_repro.reporting.seeds), None without a seed axis: only finished jobs
    are scored; the others count in a group's jobs by outcome, beside its mean."""
    return seed_groups(rows, _finished_score, _outcome)


def _write_csv(rows: list[Row], path: Path) -> None:
    keys = override_keys(rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", *keys, *REPORT_COLUMNS])
        for row in sort_rows(rows):
            values = [row["overrides"].get(k, "") for k in keys] + [row[c] for c in REPORT_COLUMNS]
            writer.writerow([row["job"], *("" if v is None else v for v in values)])


def clipping_levels(rows: list[Row]) -> dict[str, clipping_stats.Stats]:
    """clipping_stats.level_stats per max norm value of the sweep (off last)."""
    levels = value_order((_value_text(r, MAX_NORM_KEY) for r in rows), off_last=True)
    return {
        level: clipping_stats.level_stats(
            [
                _train_rows(r)
                for r in rows
                if _value_text(r, MAX_NORM_KEY) == level and r.get("path") is not None
            ]
        )
        for level in levels
    }


def clipping_table(rows: list[Row], compare: list[Row] | None = None, compare_name: str = "") -> str:
    """The clipping statistics per max norm as markdown, beside `compare`'s (another sweep) when
    given; "" for a sweep whose max norm does not vary and no comparison."""
    if compare is None and MAX_NORM_KEY not in varying_keys(rows):
        return ""
    other = None if compare is None else clipping_levels(compare)
    return clipping_stats.table(clipping_levels(rows), other, compare_name)


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
    title = "/".join(out_dir.resolve().parts[-2:])
    paths["markdown"].write_text(_markdown_report(rows, title, answer, clipping))
    _write_csv(rows, paths["csv"])
    if answer.contrasts:
        paths["contrasts"] = sweep_answer.write_contrasts_csv(answer, out_dir / "contrasts.csv")
    groups = seed_groups_of(rows)
    if groups is not None:
        paths["seeds_csv"] = sweep_answer.write_points_csv(answer, out_dir / "report_seeds.csv")
    draw_plot(rows, paths["plot"], groups, answer.noise.s)
    plots.save(sweep_curves(rows), paths["curves"])
    clipping = clipping_figure(rows, answer)
    if clipping is not None:
        paths["clipping"] = plots.save(clipping, out_dir / "clipping.png")
    return paths


# ----------------------------------------------------------------------------------------------------
# Figures (drawn by plots.py): a heat map for a sweep over two keys, else a bar chart; every job's
# curves; for one run its curves and the stabilizer figure
# ----------------------------------------------------------------------------------------------------


def _value_text(row: Row, key: str) -> str:
    """The override's text; a job without the key ran with the config default, shown as "default"."""
    return row["overrides"].get(key, "default")


def _cell_text(row: Row | None) -> str:
    if row is None:
        return "no job"
    if not finished(row):
        return "no score\n" + row["outcome"]
    text = _pct(score(row)) + ("" if row["best_top1"] is not None else "\n(final)")
    if row["status"] == EARLY_STOP:
        text += "\nearly stop"
    return text


def _plotted_score(row: Row | None) -> float | None:
    """The percentage that colours a cell or sizes a bar; None (grey) for a job that did not finish
    (its score would be that of a shorter or broken run) or a missing one."""
    if row is None or not finished(row) or score(row) is None:
        return None
    return 100 * score(row)


def _best_of(rows: list[Row]) -> Row | None:
    """The row a grid cell shows when several jobs share it (e.g. the same point in two sweeps)."""
    return sort_rows(rows)[0] if rows else None


def heat_map(rows: list[Row], row_key: str, col_key: str) -> Figure:
    """Best top-1 (%) on a grid of row_key values x col_key values; failed cells grey and labelled."""
    ys = value_order(_value_text(r, row_key) for r in rows)
    xs = value_order(_value_text(r, col_key) for r in rows)
    grid = [
        [
            _best_of([r for r in rows if (_value_text(r, row_key), _value_text(r, col_key)) == (y, x)])
            for x in xs
        ]
        for y in ys
    ]
    return plots.heat_map(
        [[_plotted_score(cell) for cell in line] for line in grid],
        [[_cell_text(cell) for cell in line] for line in grid],
        ys,
        xs,
        row_key=row_key,
        col_key=col_key,
        title=f"best top-1 (%) on {score_splits(rows)}; (final) where a run had no selection split",
    )


def bar_chart(rows: list[Row], key: str | None) -> Figure:
    """Horizontal bars of best top-1 (%), one per job: labelled by `key`'s value, or by job name."""
    if key is not None:
        order = value_order(_value_text(r, key) for r in rows)
        rows = sorted(rows, key=lambda r: (order.index(_value_text(r, key)), r["job"]))
        labels = [_value_text(r, key) for r in rows]
    else:
        rows = sort_rows(rows)
        labels = [r["job"] if len(r["job"]) <= 60 else "..." + r["job"][-57:] for r in rows]
    texts = [f"no score ({r['outcome']})" if not finished(r) else _cell_text(r) for r in rows]
    title = "best top-1 (%), else final" + (f" by {key}" if key else "")
    return plots.bars(
        labels, [_plotted_score(r) for r in rows], [t.replace("\n", " ") for t in texts], title=title
    )


def seed_heat_map(
    groups: list[SeedGroup],
    row_key: str,
    col_key: str,
    split: str = "selection split",
    noise: float | None = None,
) -> Figure:
    """Mean best top-1 (%) per point over its finished seeds, each cell "mean ± std (n)"; a point
    with unfinished seeds hatched and its counts "2/3 finished, 1 diverged". The colours come from
    the point means only and span at least four times the seed noise (`noise`, points: the sweep's
    pooled estimate; else the median of the points' stds), so a difference within the noise does
    not take the whole palette and no single run can stretch the range."""
    ys = value_order(g.point.get(row_key, "default") for g in groups)
    xs = value_order(g.point.get(col_key, "default") for g in groups)
    cell = {(g.point.get(row_key, "default"), g.point.get(col_key, "default")): g for g in groups}
    grid = [[cell.get((y, x)) for x in xs] for y in ys]
    if noise is None:
        stds = [100 * g.std for g in groups if g.std is not None]
        noise = statistics.median(stds) if stds else 0.0
    return plots.heat_map(
        [[100 * g.mean if g is not None and g.mean is not None else None for g in line] for line in grid],
        [[g.text().replace(" (", "\n(") if g is not None else "no job" for g in line] for line in grid],
        ys,
        xs,
        row_key=row_key,
        col_key=col_key,
        title=f"best top-1 (%) on {split}: mean ± std (finished seeds); hatched: a seed did not finish",
        min_span=4 * noise,
        hatched=[
            (i, j)
            for i, line in enumerate(grid)
            for j, g in enumerate(line)
            if g is not None and g.unfinished
        ],
        label=f"mean top-1 (%), {split}",
    )


def draw_plot(
    rows: list[Row], path: Path, groups: list[SeedGroup] | None = None, noise: float | None = None
) -> Path:
    """A heat map when exactly two overrides vary across jobs (seeds averaged when trainer.seed is
    a third axis; `noise` the seed noise in points), else a bar chart; saved as PNG."""
    if groups is not None:
        axes = [k for k in varying_keys(rows) if k != SEED_KEY]
        if len(axes) == 2:
            return plots.save(seed_heat_map(groups, axes[0], axes[1], score_splits(rows), noise), path)
    keys = varying_keys(rows)
    if len(keys) == 2:
        return plots.save(heat_map(rows, keys[0], keys[1]), path)
    return plots.save(bar_chart(rows, keys[0] if len(keys) == 1 else None), path)


def series(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> plots.Series:
    """(epochs, values) of `key` over metrics rows, in epoch order; rows without a number are skipped."""
    points = sorted((int(r["epoch"]), scale * r[key]) for r in rows if _is_number(r.get(key)))
    return [e for e, _ in points], [v for _, v in points]


def _eval_split(metrics: list[dict[str, Any]]) -> str | None:
    """The split a job's curve shows: the holdout when it has one, else its first other evaluation."""
    splits = [r["split"] for r in metrics if r.get("split") != "train" and _is_number(r.get("top1"))]
    return "holdout" if "holdout" in splits else (splits[0] if splits else None)


def _in_axis_order(rows: list[Row], keys: list[str]) -> list[Row]:
    """Rows ordered by their values of `keys` (each in axis order: null, numbers, text), then job."""
    order = {k: value_order(_value_text(r, k) for r in rows) for k in keys}
    return sorted(rows, key=lambda r: ([order[k].index(_value_text(r, k)) for k in keys], r["job"]))


def _point_label(row: Row, keys: list[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_value_text(row, k)}" for k in keys)


def sweep_curves(rows: list[Row]) -> Figure:
    """Evaluation top-1 and train loss per epoch, one line per point (the mean of its seeds, a band
    from the lowest to the highest), small multiples: one row of panels per value of the sweep's
    first axis when it has two or more, lines labelled by the other axes."""
    keys = [k for k in varying_keys(rows) if k != SEED_KEY]
    row_key, line_keys = (keys[0], keys[1:]) if len(keys) >= 2 else (None, keys)
    groups = seed_groups_of(rows)
    failed = {tuple(sorted(g.point.items())): g for g in groups or [] if g.unfinished}
    grid: dict[str, dict[str, dict[str, list[plots.Series]]]] = {}
    splits = set()
    for row in _in_axis_order(rows, keys):
        panel_row = _point_label(row, [row_key]) if row_key else ""
        label = _point_label(row, line_keys) or (row["job"] if groups is None else "all jobs")
        point = tuple(sorted((k, v) for k, v in row["overrides"].items() if k != SEED_KEY))
        if point in failed:
            label += f" ({failed[point].count_text()})"
        metrics = read_metrics(Path(row["path"]) / "metrics.jsonl")
        split = _eval_split(metrics)
        panels = grid.setdefault(panel_row, {"top-1 (%)": {}, "train loss": {}})
        if split is not None:
            splits.add(split)
            top1 = series([r for r in metrics if r.get("split") == split], "top1", 100)
            panels["top-1 (%)"].setdefault(label, []).append(top1)
        loss = series([r for r in metrics if r.get("split") == "train"], "loss")
        panels["train loss"].setdefault(label, []).append(loss)
    name = "/".join(sorted(splits)) or "evaluation"
    for panels in grid.values():
        panels[f"{name} top-1 (%)"] = panels.pop("top-1 (%)")
        panels["train loss"] = panels.pop("train loss")
    seeds = " (mean of seeds, band: lowest to highest)" if groups is not None else ""
    return plots.grouped_curves(grid, title=f"every point, per epoch{seeds}")


MAX_NORM_KEY = "stabilizer.max_norm"


def _train_rows(row: Row) -> list[dict[str, Any]]:
    """A job's training rows of metrics.jsonl."""
    return [r for r in read_metrics(Path(row["path"]) / "metrics.jsonl") if r.get("split") == "train"]


def clipping_figure(rows: list[Row], answer: Answer | None = None) -> Figure | None:
    """For a sweep over stabilizer.max_norm (and e.g. weight decay): top-1 against max norm (no
    clipping last), one line per value of the other axes, each point the mean of its finished runs
    with a 95% interval, diverged runs marked and the pooled contrasts against off written in;
    beside it, per epoch and max norm, the share of steps clipped and the mean clip factor. None
    when max_norm does not vary."""
    keys = [k for k in varying_keys(rows) if k != SEED_KEY]
    if MAX_NORM_KEY not in keys:
        return None
    answer = answer or sweep_answer_of(rows)
    others = [k for k in keys if k != MAX_NORM_KEY]
    levels = value_order((_value_text(r, MAX_NORM_KEY) for r in rows), off_last=True)
    combos = list(
        dict.fromkeys(tuple(_value_text(r, k) for k in others) for r in _in_axis_order(rows, others))
    )
    by_values = {tuple(g.point.get(k, "default") for k in [*others, MAX_NORM_KEY]): g for g in answer.groups}
    top1: dict[str, list[plots.LevelTop1 | None]] = {}
    for combo in combos:
        label = (
            ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, combo, strict=True)) or "all jobs"
        )
        line = []
        for level in levels:
            g = by_values.get((*combo, level))
            interval = None if g is None else contrasts.point_interval(g, answer.noise)
            line.append(
                None
                if g is None
                else plots.LevelTop1(
                    None if g.mean is None else 100 * g.mean,
                    None if interval is None else interval[0],
                    None if interval is None else interval[1],
                    g.diverged,
                    g.jobs,
                )
            )
        top1[label] = line
    pooled = sweep_answer.pooled(answer, MAX_NORM_KEY)
    text = [
        pooled[level].words().split(": ", 1)[1].join([f"{level}: ", " *" if pooled[level].marked else ""])
        for level in levels
        if level in pooled
    ]
    clipping_levels = [level for level in levels if not seeds.is_off(level)]
    # each job's metrics.jsonl read once, for both per-epoch panels
    train = {
        level: [_train_rows(r) for r in rows if _value_text(r, MAX_NORM_KEY) == level]
        for level in clipping_levels
    }
    return plots.clipping(
        levels,
        top1,
        {level: [series(t, "clipped_fraction") for t in train[level]] for level in clipping_levels},
        {level: [series(t, "clip_factor_mean") for t in train[level]] for level in clipping_levels},
        text,
        split=score_splits(rows),
    )


def _config_value(run_dir: Path, *keys: str) -> Any:
    """A value from the run's resolved config.yaml; None when the file or the key is missing."""
    try:
        node = yaml.safe_load((run_dir / "config.yaml").read_text())
        for key in keys:
            node = node[key]
        return node
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def run_curves(metrics: list[dict[str, Any]], title: str) -> Figure:
    """One run's loss and top-1 per epoch, for the train split and every evaluated split."""
    splits = list(dict.fromkeys(r.get("split") for r in metrics if _is_number(r.get("loss"))))
    by_split = {s: [r for r in metrics if r.get("split") == s] for s in splits}
    return plots.curves(
        {
            "loss": {s: series(rs, "loss") for s, rs in by_split.items()},
            "top-1 (%)": {s: series(rs, "top1", 100) for s, rs in by_split.items()},
        },
        title=title,
    )


def stabilizer_figure(metrics: list[dict[str, Any]], max_norm: float | None, title: str) -> Figure:
    """Per epoch: pre-clip gradient-norm p50/p90/p99/max, the max_norm line, the clipped fraction, LR."""
    train = [r for r in metrics if r.get("split") == "train"]
    norms = {q: series(train, f"grad_norm_{q}") for q in ("p50", "p90", "p99", "max")}
    # the LR each epoch started and ended with: warm-up rises within an epoch, milestones step between
    lr = {"at epoch start": series(train, "lr"), "at epoch end": series(train, "lr_end")}
    return plots.stabilizer(norms, series(train, "clipped_fraction"), lr, max_norm=max_norm, title=title)


def is_run_dir(path: Path) -> bool:
    """A single run (metrics.jsonl in the folder itself), as opposed to a sweep of job folders."""
    return (Path(path) / "metrics.jsonl").is_file()


def write_run_figures(run_dir: Path) -> dict[str, Path]:
    """curves.png and stabilizer.png in a run directory; returns {"curves", "stabilizer": path}."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    if not any(r.get("split") == "train" for r in metrics):
        raise UserError(f"{run_dir / 'metrics.jsonl'} holds no finished epoch yet; nothing to plot")
    max_norm = _config_value(run_dir, "stabilizer", "max_norm")
    name = "/".join(run_dir.resolve().parts[-2:])
    return {
        "curves": plots.save(run_curves(metrics, name), run_dir / "curves.png"),
        "stabilizer": plots.save(
            stabilizer_figure(metrics, max_norm, f"{name}: gradient norms per epoch"),
            run_dir / "stabilizer.png",
        ),
    }


# ----------------------------------------------------------------------------------------------------
# TensorBoard hparams
# ----------------------------------------------------------------------------------------------------


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
