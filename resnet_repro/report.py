"""Sweep aggregation: one row per job of a Hydra multirun -> report.md, report.csv, a PNG, TB hparams.

A job directory is any directory below the sweep directory that holds `.hydra/overrides.yaml` (written by
Hydra at job start) or `config.yaml` (written by `train`). Everything here reads files only, so it also
works on a sweep that is still running or whose jobs crashed: missing files give missing cells, never
an error. Accuracies are fractions (as in metrics.jsonl); report.md and the plot show percentages.

No matplotlib dependency: the plot is drawn with PIL.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw, ImageFont

from resnet_repro.config import UserError

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
    return {
        "job": job_dir.relative_to(root).as_posix(),
        "path": job_dir,
        "overrides": read_overrides(job_dir),
        "status": status,
        "best_top1": _best_top1(eval_rows, final),
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
    notes = [f"- `{r['job']}`: {r['note']}" for r in sort_rows(rows) if r["note"]]
    if notes:
        parts += ["Notes:", "", *notes, ""]
    parts += ["Wall time is training time (sum of epoch_time_s), or file times for jobs without one.", ""]
    return "\n".join(parts)


def _write_csv(rows: list[Row], path: Path) -> None:
    keys = override_keys(rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", *keys, *REPORT_COLUMNS])
        for row in sort_rows(rows):
            values = [row["overrides"].get(k, "") for k in keys] + [row[c] for c in REPORT_COLUMNS]
            writer.writerow([row["job"], *("" if v is None else v for v in values)])


def write_report(rows: list[Row], out_dir: Path) -> dict[str, Path]:
    """report.md, report.csv and report.png in `out_dir`; returns {"markdown", "csv", "plot": path}."""
    if not rows:
        raise UserError(f"no jobs to report in {out_dir}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "report.md", "csv": out_dir / "report.csv", "plot": out_dir / "report.png"}
    paths["markdown"].write_text(_markdown_report(rows, "/".join(out_dir.resolve().parts[-2:])))
    _write_csv(rows, paths["csv"])
    draw_plot(rows, paths["plot"])
    return paths


# ----------------------------------------------------------------------------------------------------
# Plot (PIL): a heat map for a sweep over two keys, else a bar chart
# ----------------------------------------------------------------------------------------------------

_FONT_SIZE = 14
_PAD = 12
_CELL_W, _CELL_H = 120, 56
_BG, _FG, _GRID = (255, 255, 255), (20, 20, 20), (200, 200, 200)
_FAILED_BG, _EMPTY_BG = (175, 175, 175), (240, 240, 240)
# viridis at 0, 0.25, 0.5, 0.75, 1 (perceptually uniform, readable in grey scale)
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def _font(size: int = _FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _colour(t: float) -> tuple[int, int, int]:
    """Viridis colour for t in [0, 1], linearly interpolated between 5 anchors."""
    t = min(1.0, max(0.0, t)) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    return tuple(round(x + (y - x) * f) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _ink_on(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return _FG if luminance > 140 else _BG


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


def _scale(rows: Iterable[Row | None]) -> tuple[float, float]:
    ok = [r for r in rows if r and r["status"] not in FAILED_STATUSES]
    values = [score(r) for r in ok if score(r) is not None]
    return (min(values), max(values)) if values else (0.0, 1.0)


def _fill(row: Row | None, lo: float, hi: float) -> tuple[int, int, int]:
    if row is None:
        return _EMPTY_BG
    value = score(row)
    if row["status"] in FAILED_STATUSES or value is None:
        return _FAILED_BG
    return _colour((value - lo) / (hi - lo) if hi > lo else 0.5)


def _centered(draw: ImageDraw.ImageDraw, box: tuple[int, ...], text: str, font: Any, fill: Any) -> None:
    w, h = _text_size(draw, text, font)
    x = box[0] + (box[2] - box[0] - w) // 2
    y = box[1] + (box[3] - box[1] - h) // 2
    draw.multiline_text((x, y), text, font=font, fill=fill, align="center")


def _colour_bar(
    draw: ImageDraw.ImageDraw, xy: tuple[int, int], height: int, scale: tuple[float, float], font: Any
) -> None:
    """A vertical viridis bar from lo (bottom) to hi (top), labelled in percent."""
    (x, y), (lo, hi) = xy, scale
    for i in range(height):
        draw.line([(x, y + i), (x + 16, y + i)], fill=_colour(1 - i / max(1, height - 1)))
    draw.rectangle([x, y, x + 16, y + height], outline=_GRID)
    draw.text((x + 22, y), _pct(hi), font=font, fill=_FG)
    draw.text((x + 22, y + height - _FONT_SIZE), _pct(lo), font=font, fill=_FG)


def _best_of(rows: list[Row]) -> Row | None:
    """The row a grid cell shows when several jobs share it (e.g. the same point in two sweeps)."""
    return sort_rows(rows)[0] if rows else None


def heat_map(rows: list[Row], row_key: str, col_key: str) -> Image.Image:
    """Best top-1 (%) on a grid of row_key values x col_key values; failed cells grey and labelled."""
    font, small = _font(), _font(_FONT_SIZE - 2)
    ys = _value_order(_value_text(r, row_key) for r in rows)
    xs = _value_order(_value_text(r, col_key) for r in rows)
    grid = {
        (y, x): _best_of([r for r in rows if (_value_text(r, row_key), _value_text(r, col_key)) == (y, x)])
        for y in ys
        for x in xs
    }
    lo, hi = _scale(grid.values())

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_label_w = max(_text_size(probe, y, font)[0] for y in ys) + _PAD
    axis_h = _text_size(probe, row_key, font)[1] + _PAD  # height of the rotated y-axis title
    title = "best top-1 (%) on the selection split; (final) where a run had none"
    left = _PAD + axis_h + row_label_w
    top = _PAD + 2 * (_FONT_SIZE + _PAD)  # title line, column value labels
    width = left + len(xs) * _CELL_W + _PAD + 80  # + colour bar and its labels
    height = top + len(ys) * _CELL_H + 2 * _PAD + _FONT_SIZE
    img = Image.new("RGB", (max(width, left + _text_size(probe, title, font)[0] + _PAD), height), _BG)
    draw = ImageDraw.Draw(img)

    draw.text((left, _PAD), title, font=font, fill=_FG)
    for j, x in enumerate(xs):
        cx = left + j * _CELL_W
        _centered(draw, (cx, top - _FONT_SIZE - _PAD, cx + _CELL_W, top - 4), x, font, _FG)
    for i, y in enumerate(ys):
        cy = top + i * _CELL_H
        w, h = _text_size(draw, y, font)
        draw.text((left - w - _PAD // 2, cy + (_CELL_H - h) // 2), y, font=font, fill=_FG)
        for j, x in enumerate(xs):
            box = (left + j * _CELL_W, cy, left + (j + 1) * _CELL_W, cy + _CELL_H)
            cell = grid[(y, x)]
            bg = _fill(cell, lo, hi)
            draw.rectangle(box, fill=bg, outline=_BG, width=2)
            _centered(draw, box, _cell_text(cell), small if cell is None else font, _ink_on(bg))

    grid_bottom = top + len(ys) * _CELL_H
    _centered(draw, (left, grid_bottom + 4, left + len(xs) * _CELL_W, height), col_key, font, _FG)
    _paste_rotated_label(img, row_key, font, (_PAD, top, _PAD + axis_h, grid_bottom))
    _colour_bar(draw, (left + len(xs) * _CELL_W + _PAD, top), len(ys) * _CELL_H, (lo, hi), small)
    return img


def _paste_rotated_label(img: Image.Image, text: str, font: Any, box: tuple[int, int, int, int]) -> None:
    """The y-axis title, drawn horizontally on its own image and turned 90 degrees."""
    probe = ImageDraw.Draw(img)
    w, h = _text_size(probe, text, font)
    label = Image.new("RGB", (w + 4, h + 6), _BG)
    ImageDraw.Draw(label).text((2, 0), text, font=font, fill=_FG)
    label = label.rotate(90, expand=True)
    room = box[3] - box[1]
    if label.height > room:  # a long key beside a short grid: shrink it to fit rather than clip it
        label = label.resize((max(1, label.width * room // label.height), room), Image.Resampling.LANCZOS)
    x = box[0] + max(0, (box[2] - box[0] - label.width) // 2)
    y = box[1] + max(0, (box[3] - box[1] - label.height) // 2)
    img.paste(label, (x, y))


def bar_chart(rows: list[Row], key: str | None) -> Image.Image:
    """Horizontal bars of best top-1 (%), one per job: labelled by `key`'s value, or by job name."""
    font = _font()
    if key is not None:
        order = _value_order(_value_text(r, key) for r in rows)
        rows = sorted(rows, key=lambda r: (order.index(_value_text(r, key)), r["job"]))
        labels = [_value_text(r, key) for r in rows]
    else:
        rows = sort_rows(rows)
        labels = [r["job"] if len(r["job"]) <= 60 else "..." + r["job"][-57:] for r in rows]
    lo, hi = _scale(rows)
    bar_h, bar_max = 28, 420

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_size(probe, t, font)[0] for t in labels) + _PAD
    title = "best top-1 (%), else final" + (f" by {key}" if key else "")
    top = _PAD + _FONT_SIZE + _PAD
    width = max(_PAD + label_w + bar_max + 140, 2 * _PAD + _text_size(probe, title, font)[0])
    img = Image.new("RGB", (width, top + len(rows) * (bar_h + 6) + _PAD), _BG)
    draw = ImageDraw.Draw(img)
    draw.text((_PAD, _PAD), title, font=font, fill=_FG)
    x0 = _PAD + label_w
    draw.line([(x0, top - 4), (x0, img.height - _PAD)], fill=_GRID)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        y = top + i * (bar_h + 6)
        w, h = _text_size(draw, label, font)
        draw.text((x0 - w - _PAD // 2, y + (bar_h - h) // 2), label, font=font, fill=_FG)
        best = score(row)
        failed = row["status"] in FAILED_STATUSES
        length = round(bar_max * best / hi) if best is not None and hi > 0 else 0
        draw.rectangle([x0, y, x0 + max(length, 4), y + bar_h], fill=_fill(row, lo, hi))
        text = f"failed ({_failure(row)})" if failed else _cell_text(row).replace("\n", " ")
        draw.text((x0 + max(length, 4) + 6, y + (bar_h - h) // 2), text, font=font, fill=_FG)
    return img


def draw_plot(rows: list[Row], path: Path) -> Path:
    """A heat map when exactly two overrides vary across jobs, else a bar chart; saved as PNG."""
    keys = varying_keys(rows)
    if len(keys) == 2:
        img = heat_map(rows, keys[0], keys[1])
    else:
        img = bar_chart(rows, keys[0] if len(keys) == 1 else None)
    img.save(path, format="PNG")
    return path


# ----------------------------------------------------------------------------------------------------
# TensorBoard hparams
# ----------------------------------------------------------------------------------------------------


def hparam_values(rows: list[Row]) -> list[dict[str, float | str]]:
    """Each job's overrides typed for TensorBoard: floats for keys that are numbers in every job, else text.

    A key that is a number in one job and text in another (max_norm=null vs 1) is written as text in all
    of them ("null", "1"): TensorBoard types a column from one run's experiment summary, and a numeric
    column's interval filter rejects text values. A job without the key gets "null".
    """
    keys = override_keys(rows)
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

    Every job gets the same experiment summary (all keys, every value as a discrete domain, both
    metrics), because TensorBoard reads that summary from one arbitrary run and applies it to all.
    Missing metrics (a failed job) are NaN. Earlier hparams files of this function are replaced, so
    running the report again while a sweep progresses does not add duplicate sessions.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    typed = hparam_values(rows)
    # every value of a key has one type (see hparam_values), so each domain sorts
    domains: dict[str, set[Any]] = {}
    for values in typed:
        for k, v in values.items():
            domains.setdefault(k, set()).add(v)
    written = []
    for row, values in zip(rows, typed, strict=True):
        metrics = {
            "hparam/best_top1": _or_nan(row["best_top1"]),
            "hparam/final_top1": _or_nan(row["final_top1"]),
        }
        # the same thing SummaryWriter.add_hparams(..., run_name=".") writes, but into a file we can
        # recognise (and replace) by its suffix, and without add_hparams' extra empty event file
        exp, ssi, sei = hparams(values, metrics, {k: sorted(domains[k]) for k in values})
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


def _or_nan(value: float | None) -> float:
    return float(value) if value is not None else math.nan
