"""The GPU acceptance run: every GPU-only risk as one row, in the order the mission needs them, each
judged against its goals; one table, one JSON, and an exit code that never passes on a row it did
not run.

    python scripts/gpu_check.py --out DIR [--device cuda|cpu] [--quick] [--sample DIR]
        [--budget-s 540] [--goal NAME=VALUE ...] [--rows 1,3] [--install-report FILE]

Run through scripts/gpu_check.sh (which installs from a wheelhouse kit first when given one; the
install is outside --budget-s). Every row carries its goals as data (`goal`: name, measured key,
comparison, value, what was measured, `met`) and `met` for the row: true when every goal that
applies on the device was measured and met, false when one was missed or the row failed, null when
the row was skipped, stopped at the budget, or ran without measuring a goal (`partial`).

The verdict (`status` in the JSON, and the exit code):
  met (0)         every row ran and met its goals;
  missed (1)      a goal was missed or a row failed (whatever else was skipped);
  incomplete (3)  nothing missed, but a row was skipped for any reason: not on this device, a
                  module missing, --quick, --rows, the budget, or not reached.
The JSON lists `passed` (row names), `missed` and `skipped` (each with its row, name and why); a
usage error exits 2. `--goal NAME=VALUE` replaces a goal's value (`--goal train_img_per_s=1e9`);
`--list-goals` lists them.

`--budget-s`: the check's time (default: the first five rows' CUDA estimates, DEFAULT_BUDGET_S). A
row whose estimated time no longer fits is skipped (`why` says so) and a running row is stopped at
the budget (status `stopped`). DIR receives three files only: gpu_check.json (rewritten after each
row, the rows not reached yet listed as skipped, so an interrupted run never reads as met), the
text log gpu_check.txt (written by gpu_check.sh) and gpu_check_logs.tar.gz (each row's own logs
and tracebacks, text only). Runs, checkpoints and generated data live in a temporary folder that
is removed at the end.

`--device cpu` runs every row that can run on a CPU (smaller sizes, same code, CPU goals) and skips
the GPU-only ones, saying why: its verdict is at best `incomplete`. `--sample`: an ImageNet-layout
folder of real JPEGs (default: the kit's copy gpu_kit/imagenet-sample made by `make gpu-kit`, else
../shared/data/imagenet-sample); without one, generated JPEGs are used, and the decode row's
`real_jpegs` goal is missed.
Imports only torch and this package at module level: the lent GPU machine may lack DALI or Hydra.
"""

# This file is the runner: it decides what runs, judges it and writes the JSON, the table and the
# logs. The rows live beside it: scripts/gpu_rows.py (the table: order, goals, estimates),
# scripts/gpu_rows_data.py and scripts/gpu_rows_run.py (the rows), scripts/gpu_row_types.py (Row,
# Goal, Skip, Ctx).
from __future__ import annotations

import argparse
import io
import json
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
if str(REPO / "scripts") not in sys.path:  # loaded by its path (the tests): its rows' modules beside it
    sys.path.insert(1, str(REPO / "scripts"))

import torch  # noqa: E402
from gpu_row_types import HAVE, OPS, Ctx, Goal, Row, Skip  # noqa: E402
from gpu_rows import ROWS  # noqa: E402

# the rows' parts tests/test_gpu_check.py reaches as gpu_check.NAME
from gpu_rows_run import _train_config as _train_config  # noqa: E402
from gpu_rows_run import estimate_vs_peak as estimate_vs_peak  # noqa: E402
from gpu_rows_run import row_environment as row_environment  # noqa: E402
from gpu_rows_run import row_memory_estimate as row_memory_estimate  # noqa: E402

KIT_SAMPLE = REPO / "gpu_kit" / "imagenet-sample"  # `make gpu-kit`: travels with the checkout
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"
LOG_ARCHIVE = "gpu_check_logs.tar.gz"
LOG_FILE_LIMIT = 256 * 1024  # bytes of each log kept in the archive (its tail)


class OverBudget(Exception):
    """Raised in a running row when the run's --budget-s is spent."""


# The default --budget-s: the first five rows by their own CUDA estimates, environment 20 +
# decode 90 + training 120 + memory estimate 10 + compile 300 = 540 s (a test keeps the sum within
# it). The kit's install comes before, outside the budget: in one 10-minute device call it has the
# remaining 60 s. The rows after the fifth need a larger --budget-s (the whole list: 1,310 s).
DEFAULT_BUDGET_S = 540.0

WHY = {
    "cuda": "needs a CUDA GPU",
    "dali": "needs NVIDIA DALI (install from a wheelhouse kit)",
    "hydra": "needs Hydra (install from a wheelhouse kit)",
    "pytest": "needs pytest",
    "sklearn": "needs scikit-learn for the demo data (install from a wheelhouse kit)",
}


def skip_reason(row: Row, ctx: Ctx) -> str | None:
    for need in row.needs:
        if need == "cuda" and not ctx.cuda:
            return WHY["cuda"] + (" (--device cpu)" if torch.cuda.is_available() else "")
        if need != "cuda" and not HAVE[need]():
            return WHY[need]
    if ctx.quick and not row.quick:
        return "not in --quick"
    return None


def judge(goals: tuple[Goal, ...], result: dict[str, Any] | None, device: str) -> list[dict[str, Any]]:
    """Each goal as data, with what was measured and whether it was met: None when it does not
    apply on `device`, the row has no result, or the result lacks its measurement."""
    judged = []
    for g in goals:
        value = g.cuda if device == "cuda" else g.cpu
        measured = None if result is None else result.get(g.key)
        if value is None or measured is None:
            met = None
        else:
            met = bool(OPS[g.op](measured, value))
        judged.append(
            {"name": g.name, "key": g.key, "op": g.op, "value": value, "measured": measured, "met": met}
        )
    return judged


def usage_error(message: str) -> SystemExit:
    print(f"gpu_check: {message}", file=sys.stderr)
    return SystemExit(2)


def parse_goals(items: list[str]) -> dict[str, Any]:
    names = {g.name for row in ROWS for g in row.goals}
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in names:
            raise usage_error(
                f"--goal {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}"
            )
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            raise usage_error(f"--goal {item!r}: the value must be a number, true or false") from None
    return out


def parse_rows(text: str | None) -> set[int] | None:
    if text is None:
        return None
    try:
        only = {int(i) for i in text.split(",")}
    except ValueError:
        raise usage_error(f"--rows {text!r}: expected row numbers such as 1,3") from None
    unknown = sorted(only - set(range(1, len(ROWS) + 1)))
    if unknown:
        raise usage_error(f"--rows {text!r}: no row {unknown[0]}; the rows are 1-{len(ROWS)} (--list-goals)")
    return only


def _over_budget(signum, frame):
    raise OverBudget("stopped at the end of --budget-s")


def run_row(i: int, row: Row, ctx: Ctx, reason: str | None) -> dict[str, Any]:
    """One row, run or skipped, as its JSON entry; prints a progress line naming the row at its
    start and at its end."""
    entry: dict[str, Any] = {"row": i, "name": row.name}
    result = None
    start = time.perf_counter()
    est = row.est_s[0 if ctx.cuda else 1]
    if reason is None and ctx.seconds_left() < est:
        reason = f"budget: needs about {est:.0f} s, {max(0.0, ctx.seconds_left()):.0f} s of --budget-s left"
    if reason is not None:
        entry.update(status="skipped", why=reason)
    else:
        print(f"== {i}. {row.name}: running (about {est:.0f} s, {ctx.seconds_left():.0f} s left)", flush=True)
        signal.signal(signal.SIGALRM, _over_budget)
        signal.setitimer(signal.ITIMER_REAL, max(1.0, ctx.seconds_left()))
        try:
            result = row.run(ctx)
            entry.update(status="measured", result=result)
        except Skip as e:
            entry.update(status="skipped", why=str(e))
        except (OverBudget, subprocess.TimeoutExpired) as e:
            if isinstance(e, OverBudget) or ctx.seconds_left() <= 1:
                spent = time.perf_counter() - start
                entry.update(status="stopped", why=f"stopped at the end of --budget-s after {spent:.0f} s")
            else:  # the row's own time limit
                entry.update(status="failed", why=f"TimeoutExpired: {e}"[:300])
            (ctx.logs / f"row{i}_traceback.txt").write_text(traceback.format_exc())
        except Exception as e:  # a failed row must not stop the rows after it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            entry.update(status="failed", why=f"{type(e).__name__}: {first}"[:300])
            (ctx.logs / f"row{i}_traceback.txt").write_text(traceback.format_exc())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if ctx.cuda:
            torch.cuda.empty_cache()
    goals = judge(row.goals, result if entry["status"] == "measured" else None, ctx.device.type)
    entry["goal"] = goals
    entry["met"] = row_met(entry)
    entry["wall_s"] = round(time.perf_counter() - start, 1)
    return entry


def row_met(entry: dict[str, Any]) -> bool | None:
    """False: the row failed or missed a goal; True: it was measured and every goal that applies on
    the device was measured and met; None: skipped, stopped, or partly measured (the entry's
    status becomes `partial` and `why` names the goals without a measurement)."""
    if entry["status"] == "failed":
        return False
    if entry["status"] != "measured":
        return None
    goals = entry["goal"]
    if any(g["met"] is False for g in goals):
        return False
    unmeasured = [g["name"] for g in goals if g["value"] is not None and g["met"] is None]
    if unmeasured:
        entry.update(status="partial", why="goals not measured: " + ", ".join(unmeasured))
        return None
    return True


STATUS_EXIT = {"met": 0, "missed": 1, "incomplete": 3}


def verdict(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's status from its rows' entries: `missed` (exit 1) when any row missed a goal or
    failed; else `incomplete` (exit 3) when any row was skipped, stopped or partly measured, for
    whatever reason, or nothing ran; else `met` (exit 0). A skipped row is never counted as a
    pass."""
    passed = [e["name"] for e in entries if e["met"] is True]
    missed = [
        {"row": e["row"], "name": e["name"], "why": e.get("why") or _missed_goals(e)}
        for e in entries
        if e["met"] is False
    ]
    skipped = [
        {"row": e["row"], "name": e["name"], "why": e.get("why") or e["status"]}
        for e in entries
        if e["met"] is None
    ]
    status = "missed" if missed else "incomplete" if skipped or not passed else "met"
    return {
        "status": status,
        "exit_code": STATUS_EXIT[status],
        "passed": passed,
        "missed": missed,
        "skipped": skipped,
    }


def _missed_goals(entry: dict[str, Any]) -> str:
    missed = [g for g in entry["goal"] if g["met"] is False]
    return "goals missed: " + ", ".join(
        f"{g['name']} ({g['measured']}, goal {g['op']} {g['value']})" for g in missed
    )


def pack_logs(logs: Path, archive: Path) -> None:
    """The rows' logs as one small archive: text only, each file's last LOG_FILE_LIMIT bytes."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(p for p in logs.rglob("*") if p.is_file()):
            data = path.read_bytes()[-LOG_FILE_LIMIT:]
            info = tarfile.TarInfo(str(path.relative_to(logs)))
            info.size, info.mtime = len(data), int(time.time())

            tar.addfile(info, io.BytesIO(data))


def default_sample() -> Path | None:
    for folder in (KIT_SAMPLE, SHARED_SAMPLE):
        if (folder / "train").is_dir():
            return folder
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "gpu_check_out")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sample", type=Path, default=default_sample())
    p.add_argument(
        "--rows", help="comma-separated row numbers to run (1-based); the rest are skipped, so not met"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds for the check, install excluded (default {DEFAULT_BUDGET_S:.0f}: the first five rows)",
    )
    p.add_argument("--goal", action="append", default=[], metavar="NAME=VALUE", help="replace a goal's value")
    p.add_argument("--list-goals", action="store_true", help="print every goal and exit")
    p.add_argument("--install-report", type=Path, help="scripts/wheelhouse.sh --install's JSON report")
    ns = p.parse_args(argv)
    overrides = parse_goals(ns.goal)
    only = parse_rows(ns.rows)
    if ns.list_goals:
        for i, row in enumerate(ROWS, 1):
            for g in row.goals:
                print(f"{i:2d} {g.name}: {g.key} {g.op} {g.cuda} (cuda) / {g.cpu} (cpu)")
        return 0
    if ns.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu for the CPU rows", file=sys.stderr)
        return 2
    rows = [
        replace(
            row,
            goals=tuple(
                replace(g, cuda=overrides[g.name], cpu=overrides[g.name]) if g.name in overrides else g
                for g in row.goals
            ),
        )
        for row in ROWS
    ]
    ns.out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "device": ns.device,
        "quick": ns.quick,
        "budget_s": ns.budget_s,
        "goals_set": overrides,
        "rows": [],
    }
    json_path = ns.out / "gpu_check.json"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        ctx = Ctx(
            torch.device("cuda", 0) if ns.device == "cuda" else torch.device("cpu"),
            ns.quick,
            logs,
            ns.sample,
            Path(tmp),
            deadline=time.monotonic() + ns.budget_s,
            install_report=ns.install_report,
        )
        for i, row in enumerate(rows, 1):
            deselected = only is not None and i not in only
            reason = skip_reason(row, ctx) or ("not in --rows" if deselected else None)
            entry = run_row(i, row, ctx, reason)
            record["rows"].append(entry)
            # the rows not reached yet count as skipped: a run cut off here never reads as met
            pending = [
                {"row": j, "name": r.name, "status": "skipped", "met": None, "why": "not reached"}
                for j, r in enumerate(rows[i:], i + 1)
            ]
            record.update(verdict(record["rows"] + pending))
            json_path.write_text(json.dumps(record, indent=1, default=str))
            print(f"== {i}. {row.name}: {progress(entry)}", flush=True)
        pack_logs(logs, ns.out / LOG_ARCHIVE)
    print(format_table(record))
    print("\n".join(summary_lines(record)))
    print(f"JSON: {json_path}; logs: {ns.out / LOG_ARCHIVE}")
    return record["exit_code"]


def progress(entry: dict[str, Any]) -> str:
    """The end of a row's progress line: `measured, goals met (12.3 s)`, `skipped (why)`."""
    goals = {True: "goals met", False: "goals MISSED", None: "goals not judged"}[entry["met"]]
    text = entry["status"] + (f", {goals}" if entry["status"] in ("measured", "partial") else "")
    if entry["met"] is False and entry["status"] == "measured":
        text += " (" + _missed_goals(entry) + ")"
    elif "why" in entry:
        text += f" ({entry['why']})"
    return text + (f" [{entry['wall_s']} s]" if entry["status"] != "skipped" else "")


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The closing lines: the rows missed and skipped by name, with why, then the status."""
    lines = []
    if record["missed"]:
        lines.append(f"missed ({len(record['missed'])}):")
        lines += [f"  {m['row']}. {m['name']}: {m['why']}" for m in record["missed"]]
    if record["skipped"]:
        lines.append(f"skipped, so not checked ({len(record['skipped'])}):")
        lines += [f"  {s['row']}. {s['name']}: {s['why']}" for s in record["skipped"]]
    lines.append(
        f"status: {record['status']} (exit {record['exit_code']}): {len(record['passed'])} passed, "
        f"{len(record['missed'])} missed, {len(record['skipped'])} skipped"
    )
    return lines


def format_table(record: dict[str, Any]) -> str:
    lines = [f"\nGPU acceptance check, device {record['device']}{' (--quick)' if record['quick'] else ''}"]
    lines += ["| # | row | status | goals | result | s |", "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        status = r["status"] if "why" not in r else f"{r['status']} ({r['why']})"
        goals = "; ".join(
            f"{g['name']} {g['op']} {g['value']}: {g['measured']} {'met' if g['met'] else 'MISSED'}"
            for g in r["goal"]
            if g["met"] is not None
        )
        result = json.dumps(r.get("result", ""), default=str) if "result" in r else ""
        lines.append(f"| {r['row']} | {r['name']} | {status} | {goals} | {result} | {r['wall_s']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
