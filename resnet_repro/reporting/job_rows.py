"""Reading a sweep: one row per job of a Hydra multirun (or of a folder of sweeps), from the files the
job left, with its status and outcome, its score, and the sweep's axes and ranking.

A job directory is any directory below the sweep directory that holds `.hydra/overrides.yaml` (written by
Hydra at job start) or `config.yaml` (written by `train`). Everything here reads files only, so it also
works on a sweep that is still running or whose jobs crashed: missing files give missing cells, never
an error. Accuracies are fractions (as in metrics.jsonl); report.md and the figures show percentages.
A single run directory (metrics.jsonl inside it) is read here too, for its own figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from resnet_repro.config import UserError, file_error_line
from resnet_repro.reporting import seeds

Row = dict[str, Any]

# Job statuses, from the files a job left; each gives one of the outcomes of resnet_repro.reporting.seeds
# (finished, diverged, failed, incomplete), and only finished jobs are scored, averaged and ranked
DONE, EARLY_STOP, NAN, PREEMPTED, FAILED = "done", "early_stop", "nan", "preempted", "failed/incomplete"

# Directories inside a job (or a sweep) that never hold job directories; `.submitit`, `.hydra` are hidden
_NOT_JOBS = {"tb", "checkpoints"}


def collect(multirun_dir: Path, left_out: list[str] | None = None) -> list[Row]:
    """One row per job directory below `multirun_dir` (a sweep dir, or a folder of several sweeps).

    Row keys: job (path relative to multirun_dir), path, overrides ({key: value text}), status, best_top1,
    final_top1, final_top5, final_loss, epochs_run, epochs (planned), img_per_s (mean over train epochs),
    skipped_steps (steps skipped as non-finite), wall_time_s, note (why a job stopped, when it did
    not finish normally). `left_out`: given, it receives a line for each job no row can hold (a
    file this user may not read, results without the files that say their settings), which are
    then left out instead of ending the report.
    """
    root = Path(multirun_dir)
    if not root.is_dir():
        raise UserError(f"sweep directory {root} does not exist (or is not a directory)")
    without_settings: list[Path] = []
    jobs = list(find_job_dirs(root, without_settings))
    rows, unreadable = [], []
    for job in jobs:
        try:
            rows.append(summarize_job(job, root))
            damaged = damaged_lines(job / "metrics.jsonl")
            if damaged and left_out is not None:
                left_out.append(f"{job / 'metrics.jsonl'}: {_damage_text(damaged)}")
        except PermissionError as e:  # another user's job on shared storage: the others still count
            if left_out is None:
                raise
            line = file_error_line(e) or str(e)
            unreadable.append(line)
            left_out.append(f"{line}: the report leaves {job} out")
    if not rows and unreadable:  # nothing left to report: the reason is the unreadable file
        raise UserError(unreadable[0])
    if left_out is not None:
        left_out += [
            f"{d} has results but neither .hydra/overrides.yaml nor config.yaml: its settings are unknown, "
            "so the report leaves it out"
            for d in without_settings
        ]
    if not rows:
        readable = "readable " if jobs else ""
        raise UserError(
            f"{root} holds no {readable}job directories (looked for .hydra/overrides.yaml or config.yaml "
            "below it)"
        )
    _values_from_configs(rows)
    return rows


def find_job_dirs(root: Path, without_settings: list[Path] | None = None) -> Iterator[Path]:
    """Job directories at or below `root`, in sorted order; a job's own subfolders are not searched.
    `without_settings`: given, it receives the folders that hold a job's results (final.json,
    metrics.jsonl) but neither file that says its settings (a partial copy of a sweep)."""
    if _is_job_dir(root):
        yield root
        return
    if without_settings is not None and any((root / f).is_file() for f in ("final.json", "metrics.jsonl")):
        without_settings.append(root)
        return
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            if child.name not in _NOT_JOBS:
                yield from find_job_dirs(child, without_settings)


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
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).strip().splitlines()[-1]
        raise UserError(f"{path} is not valid YAML{where}: {problem}") from e
    if not isinstance(items, list):
        raise UserError(f"{path} should hold a YAML list of key=value strings, found {type(items).__name__}")
    overrides = {}
    for item in items:
        key, _, value = str(item).partition("=")
        # `+key=v` / `++key=v` add or force a key; the report cares about the key itself
        overrides[key.lstrip("+~")] = value
    return overrides


_ABSENT = object()


def _values_from_configs(rows: list[Row]) -> None:
    """A job that does not name an axis key (its .hydra folder lost, or its command left the key at
    the default) ran with the value its config.yaml holds: that value, in the text the other jobs
    give it, rather than "default" (a point of its own). A group's value is its config's name."""
    configs: dict[Path, Any] = {}
    for key in varying_keys(rows):
        texts = sorted({r["overrides"][key] for r in rows if key in r["overrides"]})
        for row in rows:
            if key in row["overrides"]:
                continue
            if row["path"] not in configs:
                configs[row["path"]] = _read_yaml(row["path"] / "config.yaml")
            value = _leaf(configs[row["path"]], key)
            if isinstance(value, dict):  # a config group chosen by name (optim=adamw)
                value = value.get("name", _ABSENT)
            if value is _ABSENT:
                continue
            row["overrides"][key] = next((t for t in texts if _same_value(t, value)), _as_text(value))


# a job's file read as absent: missing, damaged, a folder where a file belongs (not unreadable: said)
ABSENT_OR_DAMAGED = (FileNotFoundError, IsADirectoryError, NotADirectoryError, UnicodeDecodeError)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (*ABSENT_OR_DAMAGED, yaml.YAMLError):
        return None  # a file this user may not read is said (PermissionError)


def _leaf(config: Any, key: str) -> Any:
    """config[a][b] for key "a.b"; _ABSENT where the config does not hold it."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _same_value(text: str, value: Any) -> bool:
    """Whether an override's text means `value` (1e-4 and 0.0001, null and None, [30,60] and a list)."""
    if isinstance(value, bool):
        return text.strip().lower() == str(value).lower()
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        loaded = _ABSENT
    return any(not isinstance(v, bool) and v == value for v in (loaded, seeds.parse_value(text)))


def _as_text(value: Any) -> str:
    """A config value as an override would spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_as_text(v) for v in value) + "]"
    return str(value)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows, one per (epoch, split), keeping the last of duplicates.

    A resumed launch sets aside the rows its checkpoint does not cover (metrics.superseded.jsonl),
    so duplicates come only from run directories written before it did (an epoch's rows written,
    then a kill before its checkpoint: the epoch trained and its rows appended again). A crashed
    job can leave a half-written last line, which is skipped, as is any other line that is not a row
    (`damaged_lines` names those).
    """
    if not path.is_file():
        return []
    rows: dict[tuple[Any, Any], dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        row = _row(line)
        if row is not None:
            rows[(row["epoch"], row.get("split"))] = row
    return list(rows.values())


def _row(line: str) -> dict[str, Any] | None:
    """A metrics.jsonl line as its row: a JSON object with an integer epoch; else None."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and type(row.get("epoch")) is int else None


def _damage_text(damaged: list[int]) -> str:
    if len(damaged) == 1:
        return (
            f"line {damaged[0]} is not a metrics row (a JSON object with an integer epoch); "
            "the report leaves it out"
        )
    numbers = ", ".join(map(str, damaged))
    return (
        f"lines {numbers} are not metrics rows (JSON objects with an integer epoch); "
        "the report leaves them out"
    )


def damaged_lines(path: Path) -> list[int]:
    """The numbers (from 1) of the metrics.jsonl lines read_metrics skips as not rows, but for a last
    line a kill cut (no newline at its end): any other is damage the report should name."""
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    return [n for n, line in enumerate(lines, start=1) if line.strip() and _row(line) is None]


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing or unreadable (a job killed while writing it)."""
    try:
        data = json.loads(path.read_text())
    except (*ABSENT_OR_DAMAGED, json.JSONDecodeError):
        return None  # absent, or cut by a kill; a file this user may not read is said (PermissionError)
    return data if isinstance(data, dict) else None


def job_status(job_dir: Path, final: dict[str, Any] | None, diverged_at: str | None = None) -> str:
    """done / early_stop (final.json exists) or nan / preempted / failed/incomplete (it does not).

    A job that wrote final.json after a non-finite loss (`diverged_at`, from `divergence`:
    stabilizer.nonfinite=off trains on through it) is nan too: its last numbers are a diverged
    model's, and its best epoch came before."""
    if final is not None:
        if diverged_at is not None:
            return NAN
        return EARLY_STOP if final.get("stopped") else DONE
    markers = {
        NAN: job_dir / "nonfinite_report.json",
        PREEMPTED: job_dir / "preempted.json",
    }
    present = {status: p.stat().st_mtime for status, p in markers.items() if p.is_file()}
    # under stabilizer.nonfinite=skip the report is written at every skipped step, and says whether
    # the step stopped the run (older reports do not: read as a stop)
    if NAN in present and (_read_json(markers[NAN]) or {}).get("stopped") is False:
        del present[NAN]
    if not present:
        return FAILED
    # A job preempted, resumed and then hit by NaN keeps both files (and vice versa): the newer one counts
    return max(present, key=present.__getitem__)


def divergence(metrics: list[dict[str, Any]], final: dict[str, Any] | None) -> str | None:
    """Where a run that ended with a non-finite loss went non-finite ("from epoch 3 on", "in the
    final evaluation"); None for a run whose last epoch and final evaluation have finite losses
    (one that recovered from a non-finite epoch too), or whose losses are missing (null)."""
    epochs = [int(r["epoch"]) for r in metrics if is_number(r.get("epoch"))]
    last = max(epochs, default=None)
    ended_bad = any(
        _nonfinite(r.get("loss")) for r in metrics if is_number(r.get("epoch")) and int(r["epoch"]) == last
    )
    if final is not None and _nonfinite(final.get("loss")):
        ended_bad = True
    if not ended_bad:
        return None
    bad = [int(r["epoch"]) for r in metrics if _nonfinite(r.get("loss")) and is_number(r.get("epoch"))]
    return f"from epoch {min(bad)} on" if bad else "in the final evaluation"


def _nonfinite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def reason_line(job_dir: Path) -> str:
    """The first line of the reason a job failed (its error.txt)."""
    lines = (job_dir / "error.txt").read_text(errors="replace").strip().splitlines()
    return lines[0] if lines else "(error.txt is empty)"


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
    problem = _final_problem(final, job_dir / "final.json")
    if problem is not None:  # a final.json that cannot score the job: the job did not finish
        final = None
    metrics = read_metrics(job_dir / "metrics.jsonl")
    train_rows = [r for r in metrics if r.get("split") == "train"]
    # every other split with a top1 is an evaluation (val, holdout, test: the config's eval_split)
    eval_rows = [r for r in metrics if r.get("split") != "train" and is_number(r.get("top1"))]
    trained_on = divergence(metrics, final) if final is not None else None
    status = job_status(job_dir, final, trained_on)
    ended = job_outcome(job_dir, status)
    final = final or {}
    selection = _selection_split(job_dir, eval_rows, final)
    best_top1 = _best_top1(eval_rows, final, selection)
    return {
        "job": job_dir.relative_to(root).as_posix(),
        "path": job_dir,
        "overrides": read_overrides(job_dir),
        "status": status,
        "outcome": ended,
        "best_top1": best_top1,
        "score_split": _score_split(final, best_top1, selection),
        "final_top1": final["top1"] if is_number(final.get("top1")) else None,
        "final_top5": final["top5"] if is_number(final.get("top5")) else None,
        "final_loss": final["loss"] if _is_float(final.get("loss")) else None,  # NaN: a diverged run's
        "epochs_run": _epochs_run(metrics, final),
        "epochs": final.get("epochs", _planned_epochs(job_dir)),
        "img_per_s": _mean(r.get("img_per_s") for r in train_rows),
        "skipped_steps": _skipped_steps(train_rows),
        "wall_time_s": _wall_time(job_dir, train_rows),
        "note": problem or _note(job_dir, status, final, trained_on),
    }


def _final_problem(final: dict[str, Any] | None, path: Path) -> str | None:
    """Why a final.json that exists cannot score its job; None when it can or there is none."""
    if not path.is_file():
        return None
    if final is None:
        return "final.json is empty or not a JSON object (the job killed while writing it?): not scored"
    top1 = final.get("top1")  # NaN: a diverged model's, which `divergence` judges
    if not _is_float(top1) or (math.isfinite(top1) and not 0 <= top1 <= 1):
        return f"final.json: top1={top1!r} is not a fraction in [0, 1]: not scored"
    return None


def _is_float(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _skipped_steps(train_rows: list[dict[str, Any]]) -> int:
    """Steps stabilizer.nonfinite=skip left out over the run: the sum of each epoch's
    `steps_skipped`. Files written before that key have `skipped_steps`, the launch's running
    total: their largest, a lower bound when the run was resumed."""
    new = sum(int(r["steps_skipped"]) for r in train_rows if is_number(r.get("steps_skipped")))
    old = [
        int(r["skipped_steps"])
        for r in train_rows
        if "steps_skipped" not in r and is_number(r.get("skipped_steps"))
    ]
    return new + max(old, default=0)  # a run resumed across the change has both


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if is_number(v)]
    return sum(numbers) / len(numbers) if numbers else None


def _selection_split(job_dir: Path, eval_rows: list[dict[str, Any]], final: dict[str, Any]) -> str | None:
    """The run's model-selection split: final.json's `selection` (the holdout, or the test split under
    trainer.select_on_test); for a job without final.json (crashed, killed), the holdout where it
    logged one, else its config's test split under trainer.select_on_test; else None."""
    if "selection" in final:
        return None if final["selection"] is None else str(final["selection"])
    if any(r.get("split") == "holdout" for r in eval_rows):
        return "holdout"
    if config_value(job_dir, "trainer", "select_on_test") is True:
        return str(config_value(job_dir, "data", "eval_split") or "val")
    return None


def _best_top1(eval_rows: list[dict[str, Any]], final: dict[str, Any], selection: str | None) -> float | None:
    """The best top-1 on the run's model-selection split; None when the run had none, since a
    best-epoch number on the test split would be a selection on the test set."""
    if selection is None:
        return None
    rows = [r for r in eval_rows if r.get("split") == selection]
    if rows:
        return max(float(r["top1"]) for r in rows)
    best = final.get("best_top1")
    # train() starts best_top1 at -1.0: a run that never evaluated has no best
    return float(best) if is_number(best) and best >= 0 else None


def _score_split(final: dict[str, Any], best: float | None, selection: str | None) -> str | None:
    """The split `score` comes from: the selection split of the best top-1, else "final
    evaluation" (a run without a selection split is scored by its final top-1); None for a job
    with neither."""
    if best is not None:
        return selection
    return "final evaluation" if is_number(final.get("top1")) else None


def score_splits(rows: list[Row]) -> str:
    """The splits behind the sweep's scores, for a figure's title: `holdout`, `holdout/final evaluation`."""
    return "/".join(sorted({r["score_split"] for r in rows if r.get("score_split")})) or "no evaluation"


def score(row: Row) -> float | None:
    """What ranks a job and colours its heat-map cell: best top-1 on its selection split, or, for a
    run without one, its final top-1."""
    return row["best_top1"] if row["best_top1"] is not None else row["final_top1"]


def _epochs_run(metrics: list[dict[str, Any]], final: dict[str, Any]) -> int:
    if is_number(final.get("epochs_run")):
        return int(final["epochs_run"])
    # only epochs that got their rows count: a job killed mid-epoch has not finished that epoch
    return max((int(r["epoch"]) for r in metrics if is_number(r.get("epoch"))), default=0)


def _planned_epochs(job_dir: Path) -> int | None:
    """trainer.epochs from the resolved config.yaml, for jobs that did not write final.json."""
    try:
        config = yaml.safe_load((job_dir / "config.yaml").read_text())
        return int(config["trainer"]["epochs"])
    except (*ABSENT_OR_DAMAGED, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _wall_time(job_dir: Path, train_rows: list[dict[str, Any]]) -> float | None:
    """Training time in seconds: the sum of epoch_time_s (excludes start-up and evaluation).

    A job that never finished an epoch has none; then the span of its files' modification times, from
    the files written at job start to the newest file, stands in for it.
    """
    times = [float(r["epoch_time_s"]) for r in train_rows if is_number(r.get("epoch_time_s"))]
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


def _note(job_dir: Path, status: str, final: dict[str, Any], trained_on: str | None) -> str:
    if status == EARLY_STOP:
        return str(final["stopped"])
    if status == NAN and trained_on is not None:
        mode = config_value(job_dir, "stabilizer", "nonfinite")
        went_on = "it trained on (stabilizer.nonfinite=off)" if mode == "off" else "the run finished"
        return f"non-finite loss {trained_on}, and {went_on}: its last numbers are a diverged model's"
    if status == NAN:
        report = _read_json(job_dir / "nonfinite_report.json") or {}
        epoch = report.get("epoch")
        # epochs counted from 1 where the report says so, from 0 in reports written before it did
        shown = int(epoch) + (0 if report.get("epochs_from") == 1 else 1) if is_number(epoch) else None
        where = f" at epoch {shown}, step {report.get('step')}" if shown is not None else ""
        return f"non-finite loss or gradient{where}; see nonfinite_report.json"
    if status == PREEMPTED:
        # a SLURM job's directory is slurm-<id>, a sweep's is dated: the same command again would
        # start afresh; the stop's own record says how this one continues
        info = _read_json(job_dir / "preempted.json") or {}
        stopped = f"preempted by {info.get('signal')}"
        requeued = info.get("requeued")
        if info.get("resume"):  # written when the stop was not requeued, whatever was first hoped
            return f"{stopped}, not requeued; to resume: {info['resume']}"
        if requeued:
            by = f" {requeued}" if isinstance(requeued, str) else ""
            return f"{stopped} and requeued{by}: it resumes when SLURM starts it"
        return f"{stopped}; to resume: its command with hydra.run.dir={job_dir}"
    if status == FAILED:
        if (job_dir / "error.txt").is_file():
            return "error: " + reason_line(job_dir)
        return "no final.json: the job crashed, was killed or is still running; see its log"
    return ""


# ----------------------------------------------------------------------------------------------------
# The sweep's rows together: their order, their axes
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


def pct(value: float | None) -> str:
    """A fraction as the percentage report.md and the figures show, "-" for none."""
    return f"{100 * value:.2f}" if value is not None else "-"


def value_text(row: Row, key: str) -> str:
    """The override's text; a job without the key ran with the config default, shown as "default"."""
    return row["overrides"].get(key, "default")


# ----------------------------------------------------------------------------------------------------
# A job's or a run's files, read again for the statistics and figures
# ----------------------------------------------------------------------------------------------------


def job_train_rows(row: Row) -> list[dict[str, Any]]:
    """A job's training rows of metrics.jsonl."""
    return [r for r in read_metrics(Path(row["path"]) / "metrics.jsonl") if r.get("split") == "train"]


def config_value(run_dir: Path, *keys: str) -> Any:
    """A value from the run's resolved config.yaml; None when the file or the key is missing."""
    value = _leaf(_read_yaml(run_dir / "config.yaml"), ".".join(keys))
    return None if value is _ABSENT else value


def is_run_dir(path: Path) -> bool:
    """A single run (metrics.jsonl in the folder itself), as opposed to a sweep of job folders."""
    return (Path(path) / "metrics.jsonl").is_file()
