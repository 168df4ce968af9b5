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

from resnet_repro import plots
from resnet_repro.config import UserError, is_run_control
from resnet_repro.seeds import SEED_KEY, Comparison, SeedGroup, against_best, seed_groups

Row = dict[str, Any]

# Job statuses; the FAILED_STATUSES ones sort last in the table and are drawn as "failed" cells
DONE, EARLY_STOP, NAN, PREEMPTED, FAILED = "done", "early_stop", "nan", "preempted", "failed/incomplete"
FAILED_STATUSES = (NAN, FAILED)

# Directories inside a job (or a sweep) that never hold job directories; `.submitit`, `.hydra` are hidden
_NOT_JOBS = {"tb", "checkpoints"}

# Our hparams event files end with this, so a second `report` replaces them instead of adding sessions
HPARAMS_SUFFIX = ".hparams"

REPORT_COLUMNS = (
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


def parse_value(text: str | None) -> float | str | None:
    """An override's value text as Python: "null" -> None, numbers -> float, anything else as text."""
    if text is None or text.strip().lower() in ("null", "none", "~", ""):
        return None
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # Hydra's quoted strings
        return text[1:-1]
    try:
        return float(text)
    except ValueError:
        return text


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


def summarize_job(job_dir: Path, root: Path) -> Row:
    """One report row for `job_dir` (see `collect` for its keys)."""
    final = _read_json(job_dir / "final.json")
    metrics = read_metrics(job_dir / "metrics.jsonl")
    train_rows = [r for r in metrics if r.get("split") == "train"]
    # every other split with a top1 is an evaluation (val, holdout, test: the config's eval_split)
    eval_rows = [r for r in metrics if r.get("split") != "train" and _is_number(r.get("top1"))]
    status = job_status(job_dir, final)
    final = final or {}
    best_top1 = _best_top1(eval_rows, final)
    return {
        "job": job_dir.relative_to(root).as_posix(),
        "path": job_dir,
        "overrides": read_overrides(job_dir),
        "status": status,
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
    """Best top-1 (final top-1 for runs without a selection split) descending; failed jobs (NaN,
    crashed) last; ties by job name."""

    def key(row: Row) -> tuple[bool, bool, float, str]:
        best = score(row)
        return (row["status"] in FAILED_STATUSES, best is None, -(best or 0.0), row["job"])

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


def _markdown_report(rows: list[Row], title: str) -> str:
    varying = set(varying_keys(rows))
    common = {k: v for k, v in rows[0]["overrides"].items() if k not in varying}
    parts = [f"# Sweep report: {title}", ""]
    if common and varying:
        parts += ["Common overrides: " + ", ".join(f"`{k}={v}`" for k, v in common.items()), ""]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    parts += [f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()), ""]
    parts += [markdown_table(rows), ""]
    groups = seed_groups_of(rows)
    if groups is not None:
        parts += ["## Seed groups", "", seed_table(groups), "", SEED_NOTE, ""]
    notes = [f"- `{r['job']}`: {r['note']}" for r in sort_rows(rows) if r["note"]]
    if notes:
        parts += ["Notes:", "", *notes, ""]
    parts += ["Wall time is training time (sum of epoch_time_s), or file times for jobs without one.", ""]
    return "\n".join(parts)


def seed_groups_of(rows: list[Row]) -> list[SeedGroup] | None:
    """The sweep's seed groups (resnet_repro.seeds), scored as the table ranks jobs; failed and
    unfinished jobs count in a group's jobs (and its `failed`, NaN ones in its `nan`), not in its
    mean, and rank the point below every point whose seeds all finished."""
    return seed_groups(
        rows, lambda r: None if r["status"] in FAILED_STATUSES else score(r), lambda r: r["status"] == NAN
    )


SEED_NOTE = (
    "Mean ± sample standard deviation (finished seeds; decimals follow the spread) of the best top-1 "
    "on the selection split (final top-1 for runs without one). A point whose seeds did not all "
    "finish says so and ranks below every complete point. Welch p: the t-test of a point's seeds "
    "against the best point's; Holm p: the same adjusted by Holm's method for all the comparisons "
    "against the best (docs/reports.md); `*` where Holm p < 0.05, a difference beyond the seed spread."
)


def _p_text(p: float | None) -> str:
    return "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _delta_text(c: Comparison, best: SeedGroup) -> str:
    if c.group is best:
        return "best"
    if c.delta is None:
        return "-"
    return f"{100 * c.delta:+.{max(c.group.decimals(), best.decimals())}f}"


def seed_table(groups: list[SeedGroup]) -> str:
    """One line per point: its overrides (seed left out), mean ± std (n), difference to the best,
    Welch p and Holm-adjusted p."""
    keys = [
        k
        for k in override_keys([{"overrides": g.point} for g in groups])
        if len({g.point.get(k) for g in groups}) > 1
    ]
    header = [*keys, "top-1 % mean ± std (n)", "vs best (points)", "Welch p", "Holm p", "beyond spread"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in against_best(groups):
        cells = [
            *(c.group.point.get(k, "") for k in keys),
            c.group.text(),
            _delta_text(c, groups[0]),
            _p_text(c.p),
            _p_text(c.p_adjusted),
            "*" if c.beyond_spread else "",
        ]
        lines.append("| " + " | ".join(_markdown_cell(str(cell)) for cell in cells) + " |")
    return "\n".join(lines)


SEED_CSV_COLUMNS = (
    "n",
    "jobs",
    "failed",
    "nan",
    "mean_top1",
    "std_top1",
    "delta_to_best",
    "welch_p",
    "p_adjusted",
    "beyond_spread",
)


def _write_seed_csv(groups: list[SeedGroup], path: Path) -> None:
    """One row per point, ranked as the table; `failed` counts seeds without a score (`nan` of them
    diverged), `p_adjusted` is Holm's."""
    keys = override_keys([{"overrides": g.point} for g in groups])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, *SEED_CSV_COLUMNS])
        for c in against_best(groups):
            g = c.group
            values = [
                g.n,
                g.jobs,
                g.failed,
                g.nan,
                g.mean,
                g.std,
                c.delta,
                c.p,
                c.p_adjusted,
                c.beyond_spread,
            ]
            writer.writerow([*(g.point.get(k, "") for k in keys), *("" if v is None else v for v in values)])


def _write_csv(rows: list[Row], path: Path) -> None:
    keys = override_keys(rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", *keys, *REPORT_COLUMNS])
        for row in sort_rows(rows):
            values = [row["overrides"].get(k, "") for k in keys] + [row[c] for c in REPORT_COLUMNS]
            writer.writerow([row["job"], *("" if v is None else v for v in values)])


def write_report(rows: list[Row], out_dir: Path) -> dict[str, Path]:
    """report.md, report.csv, report.png (heat map or bars), curves.png (every point per epoch),
    report_seeds.csv (a sweep over seeds) and clipping.png (a sweep over stabilizer.max_norm) in
    `out_dir`; returns {"markdown", "csv", "plot", "curves"[, "seeds_csv"][, "clipping"]: path}."""
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
    paths["markdown"].write_text(_markdown_report(rows, "/".join(out_dir.resolve().parts[-2:])))
    _write_csv(rows, paths["csv"])
    groups = seed_groups_of(rows)
    if groups is not None:
        paths["seeds_csv"] = out_dir / "report_seeds.csv"
        _write_seed_csv(groups, paths["seeds_csv"])
    draw_plot(rows, paths["plot"], groups)
    plots.save(sweep_curves(rows), paths["curves"])
    clipping = clipping_figure(rows)
    if clipping is not None:
        paths["clipping"] = plots.save(clipping, out_dir / "clipping.png")
    return paths


# ----------------------------------------------------------------------------------------------------
# Figures (drawn by plots.py): a heat map for a sweep over two keys, else a bar chart; every job's
# curves; for one run its curves and the stabilizer figure
# ----------------------------------------------------------------------------------------------------


def _value_order(texts: Iterable[str]) -> list[str]:
    """Axis order: null first (e.g. max_norm off), then numbers ascending, then other text."""

    def key(text: str) -> tuple[int, float, str]:
        value = parse_value(text)
        if value is None:
            return (0, 0.0, "")
        if isinstance(value, float):
            return (1, value, "")
        return (2, 0.0, value)

    return sorted(set(texts), key=key)


def _value_text(row: Row, key: str) -> str:
    """The override's text; a job without the key ran with the config default, shown as "default"."""
    return row["overrides"].get(key, "default")


def _failure(row: Row) -> str:
    return "NaN" if row["status"] == NAN else "incomplete"


def _cell_text(row: Row | None) -> str:
    if row is None:
        return "no job"
    if row["status"] in FAILED_STATUSES:
        return "failed\n" + _failure(row)
    text = _pct(score(row)) + ("" if row["best_top1"] is not None else "\n(final)")
    if row["status"] in (EARLY_STOP, PREEMPTED):
        text += "\n" + row["status"].replace("_", " ")
    return text


def _plotted_score(row: Row | None) -> float | None:
    """The percentage that colours a cell or sizes a bar; None (grey) for failed or missing jobs."""
    if row is None or row["status"] in FAILED_STATUSES or score(row) is None:
        return None
    return 100 * score(row)


def _best_of(rows: list[Row]) -> Row | None:
    """The row a grid cell shows when several jobs share it (e.g. the same point in two sweeps)."""
    return sort_rows(rows)[0] if rows else None


def heat_map(rows: list[Row], row_key: str, col_key: str) -> Figure:
    """Best top-1 (%) on a grid of row_key values x col_key values; failed cells grey and labelled."""
    ys = _value_order(_value_text(r, row_key) for r in rows)
    xs = _value_order(_value_text(r, col_key) for r in rows)
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
        order = _value_order(_value_text(r, key) for r in rows)
        rows = sorted(rows, key=lambda r: (order.index(_value_text(r, key)), r["job"]))
        labels = [_value_text(r, key) for r in rows]
    else:
        rows = sort_rows(rows)
        labels = [r["job"] if len(r["job"]) <= 60 else "..." + r["job"][-57:] for r in rows]
    texts = [f"failed ({_failure(r)})" if r["status"] in FAILED_STATUSES else _cell_text(r) for r in rows]
    title = "best top-1 (%), else final" + (f" by {key}" if key else "")
    return plots.bars(
        labels, [_plotted_score(r) for r in rows], [t.replace("\n", " ") for t in texts], title=title
    )


def seed_heat_map(
    groups: list[SeedGroup], row_key: str, col_key: str, split: str = "selection split"
) -> Figure:
    """Mean best top-1 (%) per point over its seeds, each cell "mean ± std (n)"; a point with failed
    seeds hatched and its count "2/3 finished, 1 NaN". The colours span at least four times the
    largest seed std, so a difference within the seed noise does not take the whole palette."""
    ys = _value_order(g.point.get(row_key, "default") for g in groups)
    xs = _value_order(g.point.get(col_key, "default") for g in groups)
    cell = {(g.point.get(row_key, "default"), g.point.get(col_key, "default")): g for g in groups}
    grid = [[cell.get((y, x)) for x in xs] for y in ys]
    noise = max((g.std for g in groups if g.std is not None), default=0.0)
    return plots.heat_map(
        [[100 * g.mean if g is not None and g.mean is not None else None for g in line] for line in grid],
        [[g.text().replace(" (", "\n(") if g is not None else "no job" for g in line] for line in grid],
        ys,
        xs,
        row_key=row_key,
        col_key=col_key,
        title=f"best top-1 (%) on {split}: mean ± std (seeds); hatched: seeds failed",
        min_span=4 * 100 * noise,
        hatched=[
            (i, j) for i, line in enumerate(grid) for j, g in enumerate(line) if g is not None and g.failed
        ],
        label=f"mean top-1 (%), {split}",
    )


def draw_plot(rows: list[Row], path: Path, groups: list[SeedGroup] | None = None) -> Path:
    """A heat map when exactly two overrides vary across jobs (seeds averaged when trainer.seed is
    a third axis), else a bar chart; saved as PNG."""
    if groups is not None:
        axes = [k for k in varying_keys(rows) if k != SEED_KEY]
        if len(axes) == 2:
            return plots.save(seed_heat_map(groups, axes[0], axes[1], score_splits(rows)), path)
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
    order = {k: _value_order(_value_text(r, k) for r in rows) for k in keys}
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
    failed = {tuple(sorted(g.point.items())): g for g in groups or [] if g.failed}
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


def _clipping_stats(members: list[Row]) -> tuple[float | None, float | None]:
    """(share of steps clipped, median pre-clip gradient norm) of one point over all its seeds'
    training epochs: the mean of the epochs' clipped_fraction (epochs have equal steps) and the
    median of their per-epoch medians (grad_norm_p50)."""
    train = [
        r
        for row in members
        for r in read_metrics(Path(row["path"]) / "metrics.jsonl")
        if r.get("split") == "train"
    ]
    shares = [float(r["clipped_fraction"]) for r in train if _is_number(r.get("clipped_fraction"))]
    norms = [float(r["grad_norm_p50"]) for r in train if _is_number(r.get("grad_norm_p50"))]
    return (statistics.fmean(shares) if shares else None, statistics.median(norms) if norms else None)


def clipping_figure(rows: list[Row]) -> Figure | None:
    """For a sweep over stabilizer.max_norm (and e.g. weight decay): top-1 (mean, std over seeds),
    share of steps clipped and median pre-clip gradient norm against max_norm, one line per value of
    the other axes; None when max_norm does not vary."""
    keys = [k for k in varying_keys(rows) if k != SEED_KEY]
    if MAX_NORM_KEY not in keys:
        return None
    others = [k for k in keys if k != MAX_NORM_KEY]
    xs = _value_order(_value_text(r, MAX_NORM_KEY) for r in rows)
    line_labels = list(
        dict.fromkeys(_point_label(r, others) or "all jobs" for r in _in_axis_order(rows, others))
    )
    top1: dict[str, tuple[list[float | None], list[float | None]]] = {}
    clipped: dict[str, list[float | None]] = {}
    grad_norm: dict[str, list[float | None]] = {}
    for label in line_labels:
        means, stds, shares, norms = [], [], [], []
        for x in xs:
            members = [
                r
                for r in rows
                if (_point_label(r, others) or "all jobs") == label and _value_text(r, MAX_NORM_KEY) == x
            ]
            scores = [
                100 * score(r) for r in members if r["status"] not in FAILED_STATUSES and score(r) is not None
            ]
            means.append(statistics.fmean(scores) if scores else None)
            stds.append(statistics.stdev(scores) if len(scores) > 1 else None)
            share, norm = _clipping_stats(members)
            shares.append(share)
            norms.append(norm)
        top1[label], clipped[label], grad_norm[label] = (means, stds), shares, norms
    return plots.clipping(xs, top1, clipped, grad_norm, split=score_splits(rows))


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
