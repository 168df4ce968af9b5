"""scripts/gpu_check.py, the GPU acceptance run: its verdict never passes on a row it did not run
(status met / missed / incomplete, exit 0 / 1 / 3), what it leaves behind, and the rows a CPU can
check (the environment's pip check, the memory row's estimate as rehearse makes it)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def _entry(row: int, status: str, met: bool | None, why: str | None = None) -> dict:
    entry = {"row": row, "name": f"row {row}", "status": status, "met": met, "goal": []}
    if why is not None:
        entry["why"] = why
    return entry


# ------------------------------------------------------------------------- the verdict, synthetic
def test_verdict_is_met_only_when_every_row_passed(gpu_check: ModuleType):
    v = gpu_check.verdict([_entry(1, "measured", True), _entry(2, "measured", True)])
    assert (v["status"], v["exit_code"]) == ("met", 0)
    assert v["passed"] == ["row 1", "row 2"] and v["missed"] == [] and v["skipped"] == []


@pytest.mark.parametrize(
    "status, why",
    [
        ("skipped", "needs a CUDA GPU"),
        ("skipped", "not in --rows"),
        ("skipped", "not in --quick"),
        ("skipped", "budget: needs about 300 s, 12 s of --budget-s left"),
        ("stopped", "stopped at the end of --budget-s after 40 s"),
        ("partial", "goals not measured: compile_speedup"),
    ],
)
def test_any_row_not_fully_checked_makes_the_run_incomplete_never_met(
    gpu_check: ModuleType, status: str, why: str
):
    v = gpu_check.verdict([_entry(1, "measured", True), _entry(2, status, None, why)])
    assert (v["status"], v["exit_code"]) == ("incomplete", 3)
    assert v["passed"] == ["row 1"] and v["skipped"] == [{"row": 2, "name": "row 2", "why": why}]


def test_a_missed_goal_or_failed_row_is_missed_whatever_else_was_skipped(gpu_check: ModuleType):
    goal = {
        "name": "train_img_per_s",
        "key": "img_per_s",
        "op": ">=",
        "value": 3000,
        "measured": 900,
        "met": False,
    }
    missed = {**_entry(1, "measured", False), "goal": [goal]}
    failed = _entry(2, "failed", False, "RuntimeError: boom")
    v = gpu_check.verdict([missed, failed, _entry(3, "skipped", None, "needs a CUDA GPU")])
    assert (v["status"], v["exit_code"]) == ("missed", 1)
    assert v["missed"] == [
        {"row": 1, "name": "row 1", "why": "goals missed: train_img_per_s (900, goal >= 3000)"},
        {"row": 2, "name": "row 2", "why": "RuntimeError: boom"},
    ]
    assert [s["row"] for s in v["skipped"]] == [3]


def test_a_run_with_nothing_passed_is_not_met(gpu_check: ModuleType):
    assert gpu_check.verdict([])["status"] == "incomplete"


def test_a_row_without_the_measurement_a_goal_judges_is_partial_not_passed(gpu_check: ModuleType):
    """The compile row when the eager row did not run: no speedup to judge, so not a pass (and not a
    miss either: nothing was measured against the goal)."""
    goals = (
        gpu_check.Goal("compiled_graphs", "graphs", "<=", 2, 2),
        gpu_check.Goal("speedup", "speedup", ">=", 1.05, 1.05),
    )
    entry = {"status": "measured", "goal": gpu_check.judge(goals, {"graphs": 1}, "cpu")}
    assert gpu_check.row_met(entry) is None
    assert entry["status"] == "partial" and entry["why"] == "goals not measured: speedup"


# ---------------------------------------------------------------- main() on synthetic rows
def _rows(gpu_check: ModuleType, *runs):
    return [
        gpu_check.Row(f"synthetic {i}", run, (gpu_check.Goal(f"g{i}", "x", ">=", 1, 1),), (0, 0), quick=True)
        for i, run in enumerate(runs, 1)
    ]


def _main(gpu_check: ModuleType, tmp_path: Path, *args: str) -> tuple[int, dict]:
    code = gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "out"), *args])
    return code, json.loads((tmp_path / "out" / "gpu_check.json").read_text())


def test_main_exits_0_1_3_as_the_rows_run(
    gpu_check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    def good(ctx):
        return {"x": 2}

    def bad(ctx):
        return {"x": 0}

    monkeypatch.setattr(gpu_check, "ROWS", _rows(gpu_check, good, good))
    assert _main(gpu_check, tmp_path)[0] == 0
    code, record = _main(gpu_check, tmp_path, "--rows", "1")  # deselected on purpose: still not checked
    assert code == 3 and record["status"] == "incomplete" and record["exit_code"] == 3
    assert record["passed"] == ["synthetic 1"]
    assert record["skipped"] == [{"row": 2, "name": "synthetic 2", "why": "not in --rows"}]
    out = capsys.readouterr().out
    assert (
        "== 1. synthetic 1: measured, goals met" in out
        and "== 2. synthetic 2: skipped (not in --rows)" in out
    )
    assert "  2. synthetic 2: not in --rows" in out and "status: incomplete (exit 3)" in out

    monkeypatch.setattr(gpu_check, "ROWS", _rows(gpu_check, bad, good))
    code, record = _main(gpu_check, tmp_path, "--rows", "1")
    assert code == 1 and record["status"] == "missed" and [m["row"] for m in record["missed"]] == [1]


def test_a_row_past_the_budget_is_stopped_and_the_run_incomplete(
    gpu_check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def slow(ctx):
        time.sleep(30)
        return {"x": 2}

    monkeypatch.setattr(gpu_check, "ROWS", _rows(gpu_check, lambda ctx: {"x": 2}, slow))
    start = time.monotonic()
    code, record = _main(gpu_check, tmp_path, "--budget-s", "1.5")
    assert time.monotonic() - start < 10
    assert code == 3 and record["rows"][1]["status"] == "stopped"
    assert record["skipped"][0]["why"].startswith("stopped at the end of --budget-s")


def test_the_json_of_a_run_cut_off_midway_is_incomplete(
    gpu_check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """gpu_check.json is rewritten after each row: read while row 2 runs, the rows not reached are
    skipped and the status is not met, though every row so far passed."""
    seen = {}

    def peek(ctx):
        seen.update(json.loads((tmp_path / "out" / "gpu_check.json").read_text()))
        return {"x": 2}

    monkeypatch.setattr(gpu_check, "ROWS", _rows(gpu_check, lambda ctx: {"x": 2}, peek, lambda ctx: {"x": 2}))
    assert _main(gpu_check, tmp_path)[0] == 0
    assert seen["status"] == "incomplete" and seen["passed"] == ["synthetic 1"]
    assert [(s["row"], s["why"]) for s in seen["skipped"]] == [(2, "not reached"), (3, "not reached")]


# ------------------------------------------------------------------------ the rows and the budget
def test_rows_come_in_the_order_the_mission_needs_them(gpu_check: ModuleType):
    names = [row.name for row in gpu_check.ROWS[:7]]
    assert [n.split(":")[0].split(" (")[0] for n in names] == [
        "environment and pip check",
        "decode",
        "training",
        "memory",
        "compile",
        "DDP/NCCL",
        "statistics pass on the GPU",
    ]
    assert "pip_check" in {g.name for g in gpu_check.ROWS[0].goals}


def test_the_default_budget_fits_the_first_five_rows_by_their_cuda_estimates(gpu_check: ModuleType):
    first_five = sum(row.est_s[0] for row in gpu_check.ROWS[:5])
    assert first_five <= gpu_check.DEFAULT_BUDGET_S < first_five + gpu_check.ROWS[5].est_s[0]
    assert gpu_check.DEFAULT_BUDGET_S + 60 <= 600  # one 10-minute device call, with a minute to install


def test_the_memory_row_computes_the_estimate_as_rehearse_does(gpu_check: ModuleType, tmp_path: Path):
    """The CUDA training row's own config (ResNet-50, batch 256, 224 px, bf16), on the meta device:
    the same estimate as rehearse.check() makes from its meta model and saved bytes, and the ratio
    against a given peak."""
    import dataclasses

    from resnet_repro.planning import memory_fit, rehearse

    ctx = gpu_check.Ctx(torch.device("cuda", 0), True, tmp_path, None, tmp_path)  # builds no CUDA state
    cfg, _, setting = gpu_check._train_config(ctx, compile_=False)
    assert setting.startswith("resnet50 batch 256 224px bf16 channels_last")
    out = gpu_check.estimate_vs_peak(cfg, 20.0, 22.0)
    model, reg = json.dumps(dataclasses.asdict(cfg.model)), json.dumps(dataclasses.asdict(cfg.regularization))
    net = rehearse._meta_model(model, 2, reg)  # 24 generated JPEGs in 2 classes
    activations = rehearse._saved_activation_mb(model, 2, reg, 224) * 2**20
    est = memory_fit.estimate(cfg, net, 256, 1, activations, image_size=224, on_gpu=True)
    assert out["estimate_allocated_gib"] == round(est.allocated, 2) and out["estimate_total_gib"] == round(
        est.total, 2
    )
    assert out["estimate_over_allocated"] == round(est.allocated / 20.0, 3)
    assert out["estimate_total_over_reserved"] == round(est.total / 22.0, 3)
    assert out["measured_allocated_gib"] == 20.0 and out["measured_reserved_gib"] == 22.0


def test_the_memory_row_without_a_training_peak_is_skipped_not_passed(gpu_check: ModuleType, tmp_path: Path):
    ctx = gpu_check.Ctx(torch.device("cpu"), True, tmp_path, None, tmp_path)
    with pytest.raises(gpu_check.Skip, match="no training peak"):
        gpu_check.row_memory_estimate(ctx)


def test_the_compile_row_runs_on_the_cpu_and_counts_only_the_graphs_it_compiled(
    gpu_check: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Row 5's code first runs where it counts, on the lent GPU (it needs CUDA there): its path runs
    here on the toy CPU setting, with dynamo's "eager" backend (capture and guards, no code
    generation). Dynamo's count is the process's: a graph compiled before the row (another row, a
    test) must not count against the row's goal of at most 2."""
    import torch._dynamo
    from gpu_rows_run import row_train_compiled  # scripts/, on the path once gpu_check is loaded

    from resnet_repro.training import compiling

    monkeypatch.setattr(compiling, "BACKEND", "eager")
    torch._dynamo.reset()
    torch.compile(torch.nn.Linear(2, 2), backend="eager")(torch.rand(1, 2))  # a graph before the row
    ctx = gpu_check.Ctx(torch.device("cpu"), True, tmp_path / "logs", None, tmp_path)
    ctx.cache["train_img_per_s"] = 100.0  # row 3's eager rate, which the speed-up is over
    out = row_train_compiled(ctx)
    assert out["compiled_graphs"] == 1  # one training size, one static graph
    assert out["img_per_s"] > 0 and out["speedup_over_eager"] == round(out["img_per_s"] / 100.0, 3)
    assert "resnet18 batch 8 32px fp32 channels_last compiled" in out["setting"]


# -------------------------------------------------------------------------- real runs on the CPU
def test_quick_cpu_run_in_60_s_exits_3_and_names_the_skipped_rows(tmp_path: Path):
    """The issue's must-show: `gpu_check --device cpu --quick --budget-s 60` runs the environment
    row (pip check included) and skips the rest, naming each with why; status incomplete, exit 3."""
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cpu",
            "--quick",
            "--budget-s",
            "60",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["status"] == "incomplete" and record["exit_code"] == 3
    names = [row.name for row in _module_rows()]
    assert record["passed"] == [names[0]] and record["missed"] == []
    assert [s["row"] for s in record["skipped"]] == list(range(2, len(names) + 1))
    assert all(s["name"] == names[s["row"] - 1] and s["why"] for s in record["skipped"])
    env = record["rows"][0]["result"]
    assert env["pip_check_ok"] is True, env["pip_check"]  # this venv: `pip check` finds nothing broken
    for s in record["skipped"]:
        assert f"  {s['row']}. {s['name']}: {s['why']}" in proc.stdout
    assert f"== 1. {names[0]}: measured, goals met" in proc.stdout
    assert "status: incomplete (exit 3)" in proc.stdout


def _module_rows():
    spec = importlib.util.spec_from_file_location("gpu_check_rows", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check_rows"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["gpu_check_rows"]
    return module.ROWS


def _gpu_check_sh(tmp_path: Path, *args: str):
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), *args, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )


def test_gpu_check_on_a_machine_without_cuda_asks_for_device_cpu(tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would really run")
    proc = _gpu_check_sh(tmp_path)
    assert proc.returncode == 2
    assert "no CUDA device here; run with --device cpu" in proc.stdout + proc.stderr


GPU_ONLY_ROWS = {2, 4, 5, 7, 8, 9}  # decode, memory estimate, compile, statistics, sync audit, pipelines


@pytest.mark.slow
def test_gpu_check_judges_every_row_leaves_three_files_and_skips_what_the_budget_cannot_fit(tmp_path: Path):
    """Through gpu_check.sh, `--device cpu --quick --budget-s 60` with one goal set out of reach
    (`--goal cpus=1e9`): the environment row runs and misses that goal, so the status is missed,
    exit 1, though rows were skipped too; the training and CLI rows (estimated past a minute on a
    CPU) are skipped for the budget and named; the GPU-only rows are skipped saying why; every row
    carries its goals as data and `met`; the output folder holds gpu_check.json, the text log and
    one archive of logs, nothing else."""
    proc = _gpu_check_sh(tmp_path, "--device", "cpu", "--quick", "--budget-s", "60", "--goal", "cpus=1e9")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json",
        "gpu_check.txt",
        "gpu_check_logs.tar.gz",
    ]
    record = json.loads((out / "gpu_check.json").read_text())
    rows = {r["row"]: r for r in record["rows"]}
    assert sorted(rows) == list(range(1, 14))
    assert all("goal" in r and "met" in r and r["goal"] for r in rows.values())
    env = rows[1]
    assert env["status"] == "measured" and env["met"] is False
    cpus = next(g for g in env["goal"] if g["name"] == "cpus")
    assert cpus == {
        "name": "cpus",
        "key": "cpus",
        "op": ">=",
        "value": 1e9,
        "measured": os.cpu_count(),
        "met": False,
    }
    assert all(g["met"] for g in env["goal"] if g["name"] != "cpus")
    assert record["status"] == "missed" and record["passed"] == []
    assert record["missed"] == [
        {"row": 1, "name": env["name"], "why": f"goals missed: cpus ({os.cpu_count()}, goal >= 1000000000.0)"}
    ]
    skipped = {s["row"]: s["why"] for s in record["skipped"]}
    assert sorted(skipped) == list(range(2, 14))
    assert all(skipped[i].startswith("budget: needs about") and rows[i]["met"] is None for i in (3, 13))
    for i in GPU_ONLY_ROWS:
        assert rows[i]["status"] == "skipped" and rows[i]["why"].startswith("needs a CUDA GPU"), rows[i]
    log = (out / "gpu_check.txt").read_text()
    assert "| # | row | status | goals | result | s |" in log and "status: missed (exit 1)" in log
    assert f"  3. {rows[3]['name']}: budget: needs about" in log
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        assert all(m.size <= 256 * 1024 for m in tar.getmembers())
        assert "pip_check.txt" in tar.getnames()


def test_gpu_check_rejects_an_unknown_goal_naming_the_known_ones():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--goal", "img_per_sec=5", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "--goal 'img_per_sec=5': expected NAME=VALUE" in proc.stderr
    assert "train_img_per_s" in proc.stderr


@pytest.mark.slow  # the environment row imports DALI, Hydra, scikit-learn and torchvision
def test_gpu_check_records_what_the_kit_installed_and_misses_a_goal_for_a_missing_package(
    gpu_check: ModuleType, tmp_path: Path
):
    """The environment row reads scripts/wheelhouse.sh --install's report: every package's result
    is in the row, and one package missing from the kit misses the install goal."""
    report = tmp_path / "install.json"
    packages = [
        {
            "name": "hydra-core",
            "version": "1.3.2",
            "file": "hydra_core-1.3.2-py3-none-any.whl",
            "result": "installed",
        },
        {
            "name": "nvidia-dali-cuda130",
            "version": "2.4.0",
            "file": "x.whl",
            "result": "missing",
            "detail": "part001",
        },
        {
            "name": "torch",
            "version": "2.11.0",
            "file": "torch.whl",
            "result": "kept",
            "detail": "already has it",
        },
    ]
    report.write_text(json.dumps({"python": "python3", "packages": packages}))
    ctx = gpu_check.Ctx(torch.device("cpu"), True, tmp_path, None, tmp_path, install_report=report)
    result = gpu_check.row_environment(ctx)
    assert result["installed"]["packages"] == packages and result["install_failed"] == 1
    goals = gpu_check.judge(gpu_check.ROWS[0].goals, result, "cpu")
    assert [g["met"] for g in goals if g["name"] == "install_failed_packages"] == [False]
