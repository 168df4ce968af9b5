"""`resnet_repro.reporting.report`: a fake Hydra multirun (2x2 grid + failed, NaN and early-stopped
jobs) -> rows, report.md, report.csv, a PNG heat map, every job's curves and TensorBoard hparams in
each job's tb/; a single run directory -> its curves and the stabilizer figure."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import yaml
from conftest import deny_reading, run_cli
from PIL import Image

from resnet_repro.config import UserError
from resnet_repro.reporting import figures, job_rows, plots, report, seeds, sweep_stats, tables

WD, MN = "optim.weight_decay", "stabilizer.max_norm"
# data.root, the step cap and the progress bar are run control: in the table, not in TB's hparams
COMMON = [
    "trainer.epochs=3",
    "data.root=/data/imagenet",
    "trainer.max_steps_per_epoch=4",
    "logging.progress=false",
]

# (weight decay, max norm) -> eval top1 per epoch; the grid's best job is (0.0005, 1)
GRID = {
    ("0.0001", "null"): [0.30, 0.52, 0.50],  # best is not the last epoch
    ("0.0001", "1"): [0.31, 0.45, 0.55],
    ("0.0005", "null"): [0.28, 0.40, 0.48],
    ("0.0005", "1"): [0.35, 0.58, 0.61],
}
IMG_PER_S = [1000.0, 1200.0, 1400.0]
EPOCH_TIME_S = [10.0, 11.0, 12.0]


def write_job(
    sweep: Path,
    overrides: list[str],
    top1s: list[float],
    *,
    final: dict | None = None,
    extra_files: dict[str, str] | None = None,
    partial_line: bool = False,
    select_on_test: bool = True,
) -> Path:
    """A job dir as train() and Hydra leave it: .hydra/overrides.yaml, config.yaml, metrics.jsonl.
    select_on_test: as final_json's jobs, selected on their val rows (trainer.select_on_test=true)."""
    job = sweep / ",".join(sorted(o for o in overrides if not o.startswith("data.root")))
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    trainer = {"epochs": 3, "select_on_test": select_on_test}
    (job / "config.yaml").write_text(yaml.safe_dump({"trainer": trainer, "data": {"eval_split": "val"}}))
    lines = []
    for epoch, top1 in enumerate(top1s, start=1):
        lines.append(
            {
                "epoch": epoch,
                "split": "train",
                "step": 10 * epoch,
                "loss": 5.0 - epoch,
                "top1": 0.99,  # train accuracy: must not count as best top1
                "lr": 0.1,
                "img_per_s": IMG_PER_S[(epoch - 1) % 3],
                "epoch_time_s": EPOCH_TIME_S[(epoch - 1) % 3],
            }
        )
        lines.append(
            {"epoch": epoch, "split": "val", "step": 10 * epoch, "loss": 4.0, "top1": top1, "top5": 0.9}
        )
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if partial_line:
        text += '{"epoch": 2, "split": "tr'  # killed while writing
    (job / "metrics.jsonl").write_text(text)
    if final is not None:
        (job / "final.json").write_text(json.dumps(final))
    for name, content in (extra_files or {}).items():
        (job / name).write_text(content)
    return job


def final_json(top1s: list[float], stopped: str | None = None) -> dict:
    return {
        "epochs": 3,
        "epochs_run": len(top1s),
        "top1": top1s[-1],
        "top5": 0.9,
        "loss": 1.2345,
        "num_samples": 100,
        "best_top1": max(top1s),
        "selection": "val",  # as trainer.select_on_test=true leaves it
        "stopped": stopped,
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "multiruns" / "imagenet_paper" / "2024-01-01_00-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / ".submitit").mkdir()  # the submitit launcher's logs: not a job
    for (wd, mn), top1s in GRID.items():
        write_job(sweep, [*COMMON, f"{WD}={wd}", f"{MN}={mn}"], top1s, final=final_json(top1s))
    # crashed during epoch 2: only .hydra and one epoch of metrics (plus a torn line)
    write_job(sweep, [*COMMON, f"{WD}=0.001", f"{MN}=null"], [0.2], partial_line=True)
    nan_report = json.dumps({"epoch": 2, "epochs_from": 1, "step": 17, "loss": float("nan")}).replace(
        "NaN", "null"
    )
    write_job(
        sweep, [*COMMON, f"{WD}=0.001", f"{MN}=1"], [0.25], extra_files={"nonfinite_report.json": nan_report}
    )
    # early stop after 2 of 3 epochs
    write_job(
        sweep,
        [*COMMON, f"{WD}=0.0001", f"{MN}=5"],
        [0.40, 0.41],
        final=final_json([0.40, 0.41], stopped="early stop: top1 has not improved"),
    )
    return sweep


def by_point(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["overrides"][WD], r["overrides"][MN]): r for r in rows}


def test_collect_gives_one_row_per_job_with_status_best_top1_epochs_and_throughput(sweep: Path):
    rows = report.collect(sweep.parent.parent)  # a folder above the sweep also works
    assert len(rows) == 7
    points = by_point(rows)

    for point, top1s in GRID.items():
        row = points[point]
        assert row["status"] == "done"
        assert row["best_top1"] == pytest.approx(max(top1s))  # max of eval rows, not the train top1 0.99
        assert row["final_top1"] == pytest.approx(top1s[-1])
        assert row["final_loss"] == pytest.approx(1.2345)
        assert (row["epochs_run"], row["epochs"]) == (3, 3)
        assert row["img_per_s"] == pytest.approx(1200.0)
        assert row["wall_time_s"] == pytest.approx(33.0)
        assert row["overrides"]["data.root"] == "/data/imagenet"

    failed = points[("0.001", "null")]
    assert failed["status"] == "failed/incomplete"
    assert (failed["best_top1"], failed["final_top1"], failed["epochs_run"]) == (pytest.approx(0.2), None, 1)
    assert failed["epochs"] == 3  # from config.yaml
    assert failed["img_per_s"] == pytest.approx(1000.0)

    nan = points[("0.001", "1")]
    assert nan["status"] == "nan"
    assert "epoch 2, step 17" in nan["note"]

    early = points[("0.0001", "5")]
    assert early["status"] == "early_stop"
    assert (early["epochs_run"], early["best_top1"]) == (2, pytest.approx(0.41))
    assert "early stop" in early["note"]


def test_best_top1_is_taken_on_the_selection_split_only(tmp_path: Path):
    with_holdout = write_job(tmp_path, ["optim.lr=0.1"], [0.50, 0.65, 0.60])  # val rows
    holdout_rows = [
        {"epoch": e, "split": "holdout", "top1": t, "loss": 1.0} for e, t in ((1, 0.4), (2, 0.45), (3, 0.5))
    ]
    with (with_holdout / "metrics.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in holdout_rows))
    (with_holdout / "final.json").write_text(
        json.dumps({**final_json([0.5, 0.65, 0.6]), "selection": "holdout"})
    )
    no_selection = write_job(
        tmp_path, ["optim.lr=0.2"], [0.70, 0.55], final={**final_json([0.70, 0.55]), "selection": None}
    )
    (no_selection / "error.txt").unlink(missing_ok=True)
    rows = {r["overrides"]["optim.lr"]: r for r in report.collect(tmp_path)}
    assert rows["0.1"]["best_top1"] == pytest.approx(0.5)  # the holdout's best, not the val peak 0.65
    # no selection split: no best (a val peak would be a selection on the test set); ranked by final
    assert rows["0.2"]["best_top1"] is None and job_rows.score(rows["0.2"]) == pytest.approx(0.55)
    assert [r["overrides"]["optim.lr"] for r in job_rows.sort_rows(list(rows.values()))] == ["0.2", "0.1"]


def test_a_job_without_final_json_gets_a_best_top1_only_on_its_selection_split(tmp_path: Path):
    """A crashed or diverged job (no final.json) was ranked and coloured by its best test-split
    top-1 when it had no holdout: a selection on the test set, which finished jobs never get."""
    # val rows only, no final.json
    crashed = write_job(tmp_path, ["optim.lr=0.1"], [0.50, 0.65], select_on_test=False)
    with_holdout = write_job(tmp_path, ["optim.lr=0.2"], [0.50, 0.65], select_on_test=False)
    with (with_holdout / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 2, "split": "holdout", "top1": 0.45, "loss": 1.0}) + "\n")
    write_job(tmp_path, ["optim.lr=0.3"], [0.50, 0.65], select_on_test=True)

    rows = {r["overrides"]["optim.lr"]: r for r in report.collect(tmp_path)}

    assert crashed.name in rows["0.1"]["job"]
    assert rows["0.1"]["best_top1"] is None and job_rows.score(rows["0.1"]) is None
    assert rows["0.2"]["best_top1"] == pytest.approx(0.45) and rows["0.2"]["score_split"] == "holdout"
    assert rows["0.3"]["best_top1"] == pytest.approx(0.65) and rows["0.3"]["score_split"] == "val"


def test_a_nonfinite_report_of_either_epoch_count_names_the_same_epoch(tmp_path: Path):
    """Reports written before `epochs_from` counted epochs from 0; the note counts from 1 for both."""
    old = write_job(
        tmp_path, ["optim.lr=0.1"], [0.2], extra_files={"nonfinite_report.json": '{"epoch": 0, "step": 7}'}
    )
    new = write_job(
        tmp_path,
        ["optim.lr=0.2"],
        [0.2],
        extra_files={"nonfinite_report.json": '{"epoch": 1, "epochs_from": 1, "step": 7}'},
    )
    rows = {r["job"]: r for r in report.collect(tmp_path)}
    for job in (old, new):
        assert "at epoch 1, step 7" in rows[job.name]["note"], rows[job.name]["note"]


def test_a_sweep_point_that_failed_with_an_error_shows_it_in_the_note(tmp_path: Path):
    write_job(tmp_path, ["optim.lr=0.1"], [0.2], extra_files={"error.txt": "non-finite loss at epoch 1\n"})
    row = report.collect(tmp_path)[0]
    assert row["status"] == "failed/incomplete" and row["note"] == "error: non-finite loss at epoch 1"


def test_damaged_job_files_are_named_in_the_note_and_never_scored_or_crash_the_report(tmp_path: Path):
    """Files a kill, a full disk or a hand edit leaves: each job is named, none is scored from a
    value that is not a top-1 fraction, and the report is written."""
    good = final_json([0.3, 0.4])
    damaged = {
        "0.1": {"error.txt": ""},  # killed while writing the reason
        "0.2": {"final.json": ""},
        "0.3": {"final.json": "[1, 2]"},
        "0.4": {"final.json": json.dumps({**good, "top1": "0.4"})},
        "0.5": {"final.json": json.dumps({**good, "top1": 76.1})},  # a percentage
        "0.6": {"final.json": json.dumps({**good, "top5": "0.9", "loss": "1.2"})},
        "0.7": {"nonfinite_report.json": json.dumps({"epoch": "2", "step": 7})},
    }
    for lr, files in damaged.items():
        write_job(tmp_path, [f"optim.lr={lr}"], [0.3, 0.4], extra_files=files)
    rows = {r["overrides"]["optim.lr"]: r for r in report.collect(tmp_path)}
    assert rows["0.1"]["note"] == "error: (error.txt is empty)"
    for lr in ("0.2", "0.3"):
        assert rows[lr]["note"].startswith("final.json is empty or not a JSON object")
    assert rows["0.4"]["note"] == "final.json: top1='0.4' is not a fraction in [0, 1]: not scored"
    assert rows["0.5"]["note"] == "final.json: top1=76.1 is not a fraction in [0, 1]: not scored"
    for lr in ("0.1", "0.2", "0.3", "0.4", "0.5"):
        assert rows[lr]["outcome"] != seeds.FINISHED and rows[lr]["final_top1"] is None
    assert rows["0.6"]["outcome"] == seeds.FINISHED and rows["0.6"]["final_top1"] == 0.4
    assert rows["0.6"]["final_top5"] is None and rows["0.6"]["final_loss"] is None
    assert rows["0.7"]["note"] == "non-finite loss or gradient; see nonfinite_report.json"
    out = report.write_report(report.collect(tmp_path), tmp_path)
    assert Path(out["markdown"]).is_file()


def test_damaged_metrics_lines_are_named_and_only_a_cut_last_line_goes_unsaid(tmp_path: Path):
    """A line that is not a row, other than a last line cut by a kill, is damage (a hand edit, a disk
    error): the report reads the job without it, and says so, since wall time, throughput and best
    top-1 come from those rows."""
    damaged = write_job(tmp_path, ["optim.lr=0.1"], [0.3, 0.4, 0.5], final=final_json([0.3, 0.4, 0.5]))
    lines = (damaged / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:25]  # epoch 2's train row, cut in the middle of the file
    lines[4] = '{"split": "train", "loss": 1.0}'  # a row without its epoch
    (damaged / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    write_job(tmp_path, ["optim.lr=0.2"], [0.3, 0.4], partial_line=True)  # killed while writing
    left_out: list[str] = []
    rows = {r["overrides"]["optim.lr"]: r for r in report.collect(tmp_path, left_out)}
    assert left_out == [
        f"{damaged / 'metrics.jsonl'}: lines 3, 5 are not metrics rows (JSON objects with an integer "
        "epoch); the report leaves them out"
    ]
    assert rows["0.1"]["epochs_run"] == 3 and rows["0.2"]["epochs_run"] == 2


def test_collect_reports_preempted_jobs_and_the_newer_of_nan_and_preempted(tmp_path: Path):
    job = write_job(
        tmp_path, ["optim.lr=0.1"], [0.3], extra_files={"preempted.json": '{"signal": "SIGUSR1"}'}
    )
    assert report.collect(tmp_path)[0]["status"] == "preempted"
    (job / "nonfinite_report.json").write_text("{}")
    os.utime(job / "preempted.json", (1, 1))  # preempted long ago, resumed, then NaN
    assert report.collect(tmp_path)[0]["status"] == "nan"


RESUME = "resnet-repro train hydra.run.dir=runs/demo/slurm-42"
WHEN_STARTED = "it resumes when SLURM starts it"


@pytest.mark.parametrize(
    ("preempted", "note"),
    [
        (
            {"signal": "SIGTERM", "requeued": False, "resume": RESUME},
            f"preempted by SIGTERM, not requeued; to resume: {RESUME}",
        ),
        ({"signal": "SIGUSR1", "requeued": True}, f"preempted by SIGUSR1 and requeued: {WHEN_STARTED}"),
        (
            {"signal": "SIGTERM", "requeued": "by SLURM"},
            f"preempted by SIGTERM and requeued by SLURM: {WHEN_STARTED}",
        ),
        ({"signal": "SIGUSR1"}, "preempted by SIGUSR1; to resume: its command with hydra.run.dir={job}"),
        (  # SLURM was to requeue it at its grace's end, but did not end it in time: exit 75
            {"signal": "SIGTERM", "requeued": "by SLURM", "resume": RESUME},
            f"preempted by SIGTERM, not requeued; to resume: {RESUME}",
        ),
    ],
)
def test_a_preempted_jobs_note_says_how_it_resumes_as_its_stop_recorded(tmp_path: Path, preempted, note):
    """A SLURM job's directory is slurm-<id> and a sweep's is dated: rerunning the same command
    starts afresh; the note gives preempted.json's resume command, or says SLURM requeued it."""
    job = write_job(tmp_path, ["optim.lr=0.1"], [0.3], extra_files={"preempted.json": json.dumps(preempted)})
    assert report.collect(tmp_path)[0]["note"] == note.format(job=job)


def test_a_run_that_trained_on_through_a_nan_loss_counts_as_diverged_not_finished(tmp_path: Path):
    """stabilizer.nonfinite=off trains on after a NaN and writes final.json like any finished run:
    its best holdout epoch (before the NaN) must not score it, and the divergence must be counted."""
    job = write_job(tmp_path, ["optim.lr=0.1"], [0.70, 0.02, 0.01], final=final_json([0.70, 0.02, 0.01]))
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        if row["epoch"] >= 2:
            row["loss"] = float("nan")
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (job / "config.yaml").write_text(
        yaml.safe_dump({"trainer": {"epochs": 3}, "stabilizer": {"nonfinite": "off"}})
    )
    row = report.collect(tmp_path)[0]
    assert (row["status"], row["outcome"]) == ("nan", seeds.DIVERGED)
    assert row["note"].startswith(
        "non-finite loss from epoch 2 on, and it trained on (stabilizer.nonfinite=off)"
    )


def test_a_run_whose_loss_was_non_finite_for_an_epoch_but_ended_finite_is_finished(tmp_path: Path):
    """fp16's gradient scaler, say, can get a run through a non-finite epoch: it is judged by how
    it ended."""
    job = write_job(tmp_path, ["optim.lr=0.1"], [0.5, 0.6, 0.7], final=final_json([0.5, 0.6, 0.7]))
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    rows[2]["loss"] = float("inf")  # epoch 2's training loss
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.collect(tmp_path)[0]["outcome"] == seeds.FINISHED


def test_a_finished_run_whose_final_loss_is_nan_counts_as_diverged_and_scores_nothing(tmp_path: Path):
    final = {**final_json([0.5]), "top1": float("nan"), "loss": float("nan"), "best_top1": None}
    final.pop("selection")
    write_job(tmp_path, ["optim.lr=0.1"], [], final=final)
    row = report.collect(tmp_path)[0]
    assert row["outcome"] == seeds.DIVERGED and job_rows.score(row) is None


def test_the_real_train_under_nonfinite_off_leaves_a_run_the_report_calls_diverged(demo_root: Path, tmp_path):
    """The oracle is train() itself: a learning rate of 2000 per 256 images, nothing stopping it."""
    run = run_cli(
        "train",
        f"data.root={demo_root}",
        "stabilizer.nonfinite=off",
        "optim.lr_per_256=2000",
        "stabilizer.warmup_epochs=0",
        "trainer.epochs=1",
        "trainer.max_steps_per_epoch=4",
        "data.max_eval_images=64",
        "logging.progress=false",
        "logging.tensorboard=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / "final.json").is_file()
    assert "the model has diverged" in run.stdout + run.stderr
    row = report.collect(tmp_path / "run")[0]
    assert row["outcome"] == seeds.DIVERGED, row


def skip_job(sweep: Path, overrides: list[str], per_epoch: list[int], key: str = "steps_skipped") -> Path:
    """A finished 3-epoch job whose training rows carry `key` = per_epoch[epoch - 1]."""
    job = write_job(sweep, overrides, [0.5, 0.6, 0.7], final=final_json([0.5, 0.6, 0.7]))
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        if row["split"] == "train":
            row[key] = per_epoch[row["epoch"] - 1]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return job


def test_steps_skipped_as_non_finite_are_counted_per_job_and_per_level_of_the_sweep(tmp_path: Path):
    """stabilizer.nonfinite=skip finishes runs that met NaN: the report must not read them as clean."""
    for seed, (mn, skips) in enumerate(
        (("null", [0, 3, 2]), ("null", [0, 0, 0]), ("1", [0, 0, 0]), ("1", [0, 0, 0]))
    ):
        skip_job(tmp_path, [f"{MN}={mn}", f"trainer.seed={seed}"], skips)
    # a setting whose only job crashed has no finished run to count: no line for it
    write_job(tmp_path, [f"{MN}=2", "trainer.seed=9"], [0.5])
    rows = report.collect(tmp_path)
    assert sorted(r["skipped_steps"] for r in rows) == [0, 0, 0, 0, 5]
    text = sweep_stats.answer_text(rows)
    assert "- max norm off: 1 of 2 finished runs skipped non-finite steps (5 steps)" in text
    assert "- max norm 1: 0 of 2 finished runs skipped non-finite steps" in text
    assert "max norm 2:" not in text.split("|")[0]
    assert "skipped steps" in tables.markdown_table(rows).splitlines()[0]


def test_metrics_of_older_runs_give_their_running_total_of_skipped_steps_not_its_sum(tmp_path: Path):
    skip_job(tmp_path, ["optim.lr=0.1"], [1, 1, 3], key="skipped_steps")  # the launch's running total
    assert report.collect(tmp_path)[0]["skipped_steps"] == 3
    # resumed across the change: the old launch's total plus the new epochs' own counts
    job = skip_job(tmp_path, ["optim.lr=0.2"], [2, 3, 1], key="skipped_steps")
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    rows[-2] = {k: v for k, v in rows[-2].items() if k != "skipped_steps"} | {"steps_skipped": 1}
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert {r["job"]: r["skipped_steps"] for r in report.collect(tmp_path)}["optim.lr=0.2"] == 4


def test_a_skip_mode_job_killed_after_skipping_a_step_is_incomplete_not_diverged(tmp_path: Path):
    skipped = json.dumps({"epoch": 0, "step": 3, "stopped": False})
    write_job(tmp_path, ["optim.lr=0.1"], [0.3], extra_files={"nonfinite_report.json": skipped})
    assert report.collect(tmp_path)[0]["outcome"] == seeds.INCOMPLETE
    stopped = json.dumps({"epoch": 0, "step": 7, "stopped": True})
    write_job(tmp_path, ["optim.lr=0.2"], [0.3], extra_files={"nonfinite_report.json": stopped})
    assert {r["job"]: r["outcome"] for r in report.collect(tmp_path)}["optim.lr=0.2"] == seeds.DIVERGED


def test_collect_names_the_path_when_there_is_nothing_to_report(tmp_path: Path):
    with pytest.raises(UserError, match="does-not-exist"):
        report.collect(tmp_path / "does-not-exist")
    (tmp_path / "empty" / "tb").mkdir(parents=True)
    with pytest.raises(UserError, match=f"{tmp_path / 'empty'}.*no job directories"):
        report.collect(tmp_path / "empty")


def test_a_job_without_hydras_overrides_takes_its_axis_values_from_its_config_yaml(tmp_path: Path):
    # a job copied without its hidden .hydra folder, and one whose command left max norm at its
    # default: both were shown as "default", an extra point of one job beside the real ones
    sweep = tmp_path / "sweep"
    config = {
        "trainer": {"epochs": 3, "max_steps_per_epoch": 4},
        "data": {"root": "/data/imagenet"},
        "logging": {"progress": False},
        "optim": {"name": "sgd", "weight_decay": 0.0005},
    }
    jobs = {}
    for (wd, mn), top1s in GRID.items():
        job = jobs[wd, mn] = write_job(
            sweep, [*COMMON, f"{WD}={wd}", f"{MN}={mn}"], top1s, final=final_json(top1s)
        )
        max_norm = None if mn == "null" else float(mn)
        wd_config = {**config, "optim": {**config["optim"], "weight_decay": float(wd)}}
        (job / "config.yaml").write_text(yaml.safe_dump({**wd_config, "stabilizer": {"max_norm": max_norm}}))
    copied = jobs["0.0005", "1"]
    shutil.rmtree(copied / ".hydra")
    defaulted = write_job(
        sweep, [*COMMON, f"{WD}=0.0001", "optim=sgd"], [0.3, 0.4, 0.5], final=final_json([0.5])
    )
    config_of_default = {**config, "optim": {"name": "sgd", "weight_decay": 0.0001}}
    (defaulted / "config.yaml").write_text(
        yaml.safe_dump({**config_of_default, "stabilizer": {"max_norm": None}})
    )
    rows = {r["path"].name: r for r in report.collect(sweep)}
    assert job_rows.value_text(rows[copied.name], WD) == "0.0005"
    assert job_rows.value_text(rows[copied.name], MN) == "1"
    assert job_rows.value_text(rows[copied.name], "optim") == "sgd"  # a group: its config's name
    assert job_rows.value_text(rows[defaulted.name], MN) == "null"
    assert job_rows.varying_keys(list(rows.values())) == [WD, MN]  # optim=sgd everywhere
    # a key its config does not hold either stays "default"
    rows[copied.name]["path"].joinpath("config.yaml").write_text(yaml.safe_dump({**config, "optim": {}}))
    again = {r["path"].name: r for r in report.collect(sweep)}
    assert job_rows.value_text(again[copied.name], WD) == "default"


def test_parse_value_turns_null_into_none_and_numbers_into_floats():
    assert seeds.parse_value("null") is None
    assert seeds.parse_value("1e-4") == pytest.approx(1e-4)
    assert seeds.parse_value("5") == 5.0 and isinstance(seeds.parse_value("5"), float)
    assert seeds.parse_value("sgd") == "sgd"
    assert seeds.parse_value("'1'") == "1"


def test_report_table_is_sorted_by_best_top1_with_failed_jobs_last(sweep: Path):
    rows = report.collect(sweep)
    paths = report.write_report(rows, sweep)
    assert set(paths) == {"markdown", "csv", "plot", "curves", "clipping", "contrasts"}

    md = paths["markdown"].read_text()
    section = md.split("## Every job", 1)[1]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:4] == [WD, MN, "outcome", "status"]  # only the varying keys: data.root, epochs are common
    assert "`data.root=/data/imagenet`" in md
    body = [[c.strip() for c in line.strip("|").split("|")] for line in table[1:]]
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in body] == [
        ("0.0005", "1", "finished", "done", "61.00"),
        ("0.0001", "1", "finished", "done", "55.00"),
        ("0.0001", "null", "finished", "done", "52.00"),
        ("0.0005", "null", "finished", "done", "48.00"),
        ("0.0001", "5", "finished", "early_stop", "41.00"),
        ("0.001", "1", "diverged", "nan", "25.00"),
        ("0.001", "null", "incomplete", "failed/incomplete", "20.00"),
    ]
    assert body[-1][5] == "-"  # no final top1 for the crashed job
    assert body[0][header.index("epochs")] == "3/3" and body[0][header.index("img/s")] == "1200"
    assert body[0][header.index("wall time")] == "0:00:33"
    assert "early stop: top1 has not improved" in md  # notes below the table

    with open(paths["csv"], newline="") as f:
        records = list(csv.DictReader(f))
    assert [(r[WD], r[MN], r["status"]) for r in records][-2:] == [
        ("0.001", "1", "nan"),
        ("0.001", "null", "failed/incomplete"),
    ]
    assert float(records[0]["best_top1"]) == pytest.approx(0.61)
    assert records[-1]["final_top1"] == "" and records[0]["data.root"] == "/data/imagenet"


def png_facts(path: Path) -> tuple[int, int, set[tuple[int, int, int]]]:
    """Width, height and the set of colours of a PNG file (which must be one)."""
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG"
        colours = {c for _, c in img.convert("RGB").getcolors(maxcolors=1 << 22)}
        return img.width, img.height, colours


VIRIDIS_TOP = tuple(int(c) for c in matplotlib.colormaps["viridis"](1.0, bytes=True)[:3])
FAILED_GREY = (175, 175, 175)


def test_two_varying_keys_give_a_heat_map_with_failed_cells(sweep: Path):
    rows = [r for r in report.collect(sweep) if r["overrides"][MN] != "5"]  # a full 3 x 2 grid
    path = report.write_report(rows, sweep / "out")["plot"]
    width, height, colours = png_facts(path)
    assert 300 < width < 1200 and 200 < height < 800
    assert FAILED_GREY in colours  # the failed cells
    assert VIRIDIS_TOP in colours  # the best cell: the top of viridis
    assert len(colours) > 50  # text, colour bar: not a blank canvas

    # what was drawn: weight decays down (ascending), max norms across (null first)
    ax = figures.heat_map(rows, WD, MN).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.0001", "0.0005", "0.001"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["null", "1"]
    grid = ax.images[0].get_array()
    assert grid.mask.tolist() == [[False, False], [False, False], [True, True]]  # failed: grey
    assert grid[:2].tolist() == [
        [pytest.approx(52.0), pytest.approx(55.0)],
        [pytest.approx(48.0), pytest.approx(61.0)],
    ]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["52.00", "55.00", "48.00", "61.00", "no score\nincomplete", "no score\ndiverged"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == (MN, WD)


def test_one_varying_key_gives_a_bar_chart(tmp_path: Path):
    for wd, top1 in (("0.0001", 0.5), ("0.0005", 0.6)):
        write_job(tmp_path, [f"{WD}={wd}"], [top1], final=final_json([top1]))
    write_job(tmp_path, [f"{WD}=0.01"], [0.1])  # failed
    rows = report.collect(tmp_path)
    width, height, colours = png_facts(report.write_report(rows, tmp_path)["plot"])
    assert width > 300 and height > 3 * 28 and len(colours) > 50
    ax = figures.bar_chart(rows, WD).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.0001", "0.0005", "0.01"]
    assert [p.get_width() for p in ax.patches] == [pytest.approx(50.0), pytest.approx(60.0), 0.0]
    assert [t.get_text() for t in ax.texts] == ["50.00", "60.00", "no score (incomplete)"]


def test_sweep_curves_show_each_point_in_a_row_of_panels_per_value_of_the_first_axis(sweep: Path):
    rows = report.collect(sweep)
    width, height, colours = png_facts(report.write_report(rows, sweep / "out")["curves"])
    assert width > 600 and height > 300 and len(colours) > 50
    axes = figures.sweep_curves(rows).axes
    titles = [ax.get_title() for ax in axes]
    # one row per weight decay (0.0001, 0.0005, 0.001), lines labelled by max norm
    assert titles[:2] == ["weight_decay=0.0001: val top-1 (%)", "weight_decay=0.0001: train loss"]
    assert len(axes) == 6
    top1 = {line.get_label(): line for line in axes[2].get_lines()}  # weight_decay=0.0005
    assert set(top1) == {"max_norm=null", "max_norm=1"}
    best = top1["max_norm=1"]
    assert best.get_xdata().tolist() == [1, 2, 3]
    assert best.get_ydata().tolist() == [pytest.approx(100 * t) for t in GRID[("0.0005", "1")]]
    crashed = {line.get_label(): line for line in axes[4].get_lines()}["max_norm=null"]
    assert crashed.get_xdata().tolist() == [1]  # one epoch before the crash
    assert axes[1].get_lines()[0].get_ydata().tolist() == [4.0, 3.0, 2.0]
    assert sum(len(ax.get_lines()) for ax in axes[::2]) == len(rows)  # one seed each: a line per job


def write_run(run: Path, max_norm: float | None) -> Path:
    """A finished run directory: config.yaml and metrics.jsonl with the gradient-norm summary keys."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump({"trainer": {"epochs": 3}, "stabilizer": {"max_norm": max_norm}})
    )
    rows = []
    for epoch in (1, 2, 3):
        norms = {
            f"grad_norm_{q}": v / epoch for q, v in (("p50", 1.0), ("p90", 2.5), ("p99", 4.0), ("max", 9.0))
        }
        clipped = {"clipped_fraction": 0.6 / epoch}
        train = {
            "epoch": epoch,
            "split": "train",
            "loss": 3.0 / epoch,
            "top1": 0.2 * epoch,
            "lr": 0.1 / 10 ** (epoch - 1),
            "lr_end": 0.05 / 10 ** (epoch - 1),
        }
        rows += [
            {**train, **norms, **clipped},
            {"epoch": epoch, "split": "val", "loss": 3.5 / epoch, "top1": 0.15 * epoch},
        ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_a_run_directory_gets_its_curves_and_the_stabilizer_figure(tmp_path: Path, capsys):
    from resnet_repro import cli

    run = write_run(tmp_path / "runs" / "demo" / "run1", max_norm=2.0)
    cli.main(["report", str(run)])
    out = capsys.readouterr().out
    assert f"curves: {run / 'curves.png'}" in out and f"stabilizer: {run / 'stabilizer.png'}" in out
    assert not (run / "report.md").exists()  # a sweep's files are for sweeps
    for name in ("curves.png", "stabilizer.png"):
        width, height, colours = png_facts(run / name)
        assert width > 500 and height > 300 and len(colours) > 50, name

    metrics = job_rows.read_metrics(run / "metrics.jsonl")
    fig = figures.stabilizer_figure(metrics, 2.0, "run1")
    norm_ax, lr_ax, clip_ax = fig.axes  # the twin (clipped %) axis is added last
    lines = {line.get_label(): line for line in norm_ax.get_lines()}
    assert set(lines) == {"p50", "p90", "p99", "max", "max_norm = 2"}
    assert lines["p99"].get_ydata().tolist() == [pytest.approx(4.0 / e) for e in (1, 2, 3)]
    assert list(lines["max_norm = 2"].get_ydata()) == [2.0, 2.0]  # a horizontal line at max_norm
    assert norm_ax.get_yscale() == "log"
    (clipped,) = clip_ax.get_lines()
    assert clipped.get_ydata().tolist() == [pytest.approx(60.0 / e) for e in (1, 2, 3)]
    lr_start, lr_end = lr_ax.get_lines()
    assert lr_start.get_ydata().tolist() == [pytest.approx(0.1), pytest.approx(0.01), pytest.approx(0.001)]
    assert lr_end.get_ydata().tolist() == [pytest.approx(0.05), pytest.approx(0.005), pytest.approx(0.0005)]

    loss_ax, top1_ax = figures.run_curves(metrics, "run1").axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train", "val"]
    assert top1_ax.get_lines()[1].get_ydata().tolist() == [pytest.approx(15.0 * e) for e in (1, 2, 3)]


def test_report_of_one_run_names_its_damaged_metrics_lines_too(tmp_path: Path, capsys):
    from resnet_repro import cli

    run = write_run(tmp_path / "run1", max_norm=2.0)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = "{not json"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    cli.main(["report", str(run)])
    err = capsys.readouterr().err
    said = "line 2 is not a metrics row (a JSON object with an integer epoch); the report leaves it out"
    assert f"warning: {run / 'metrics.jsonl'}: {said}" in err


def test_the_stabilizer_figure_of_a_run_without_clipping_has_no_max_norm_line(tmp_path: Path):
    run = write_run(tmp_path / "run", max_norm=None)
    report.write_run_figures(run)
    assert (run / "stabilizer.png").is_file()
    fig = figures.stabilizer_figure(job_rows.read_metrics(run / "metrics.jsonl"), None, "run")
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["p50", "p90", "p99", "max"]
    assert "no clipping" in fig.axes[0].get_title()


def test_rows_without_an_epoch_number_are_left_out_of_the_figures_not_a_crash(tmp_path: Path):
    run = write_run(tmp_path / "run", max_norm=10.0)
    with open(run / "metrics.jsonl", "a") as f:
        for epoch in ('"x"', "null", "2.5", "true"):
            f.write(f'{{"epoch": {epoch}, "split": "train", "loss": 1.0, "top1": 0.5}}\n')
        f.write('{"split": "val", "loss": 1.0, "top1": 0.5}\n')
    (run / "config.yaml").write_text("trainer: {epochs: 3}\nstabilizer: {max_norm: 1e1}\n")  # YAML: a string
    report.write_run_figures(run)
    assert [r["epoch"] for r in job_rows.read_metrics(run / "metrics.jsonl")] == [1, 1, 2, 2, 3, 3]
    (run / "config.yaml").write_text("stabilizer: {max_norm: true}\n")
    with pytest.raises(UserError, match=r"stabilizer.max_norm=True is not a number or null"):
        report.write_run_figures(run)
    (run / "config.yaml").write_text("stabilizer: {max_norm: ten}\n")
    with pytest.raises(UserError, match=r"config.yaml: stabilizer.max_norm='ten' is not a number or null"):
        report.write_run_figures(run)


def test_a_run_directory_without_a_finished_epoch_is_named_in_the_error(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("trainer: {epochs: 3}\n")
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match=f"{run / 'metrics.jsonl'} holds no finished epoch"):
        report.write_run_figures(run)


def test_hparams_land_in_each_jobs_own_event_files_and_are_replaced_on_rerun(sweep: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    rows = report.collect(sweep)
    report.write_hparams(rows)
    written = report.write_hparams(rows)  # a second report run replaces, not adds
    assert len(written) == len(rows)

    point = by_point(rows)
    for key, expected_mn, expected_best in (
        (("0.0005", "1"), "1", 0.61),
        (("0.001", "null"), "null", 0.2),
    ):
        tb = point[key]["path"] / "tb"
        assert len(list(tb.glob("events.out.tfevents.*"))) == 1
        acc = EventAccumulator(str(tb))
        acc.Reload()
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        assert {metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG} <= set(content)
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        assert start.hparams[WD].number_value == pytest.approx(float(key[0]))
        # max_norm mixes null and numbers across jobs: written as text in every job
        assert start.hparams[MN].string_value == expected_mn
        # run control is no hyperparameter; trainer.epochs is
        assert set(start.hparams) == {WD, MN, "trainer.epochs"}
        experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        assert {m.name.tag for m in experiment.metric_infos} == {"hparam/best_top1", "hparam/final_top1"}
        assert acc.Scalars("hparam/best_top1")[-1].value == pytest.approx(expected_best)


def hparams_of(job: Path) -> tuple[list[str], dict[str, float]]:
    """The experiment's metric tags and the job's last value of each hparam/ scalar it wrote."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(job / "tb"))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    values = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
    return [m.name.tag for m in experiment.metric_infos], values


def test_hparams_leave_out_metrics_a_job_does_not_have_instead_of_writing_nan(tmp_path: Path):
    # no holdout and no select_on_test: no finished job has a best top-1 (TensorBoard showed NaN)
    finished = [
        write_job(tmp_path, [f"{WD}={wd}"], [0.5, 0.6], final={**final_json([0.5, 0.6]), "selection": None})
        for wd in ("0.0001", "0.0005")
    ]
    report.write_hparams(report.collect(tmp_path))
    for job in finished:
        assert hparams_of(job) == (["hparam/final_top1"], {"hparam/final_top1": pytest.approx(0.6)})

    # a crashed job has a best top-1 (of its evaluations) but no final one: each job writes what it has
    crashed = write_job(tmp_path, [f"{WD}=0.001"], [0.1])
    report.write_hparams(report.collect(tmp_path))
    assert hparams_of(crashed) == (
        ["hparam/best_top1", "hparam/final_top1"],
        {"hparam/best_top1": pytest.approx(0.1)},
    )
    assert hparams_of(finished[0])[1] == {"hparam/final_top1": pytest.approx(0.6)}


# ------------------------------------------------------------------------------------- seed groups
SEEDED = {  # (weight decay, max norm) -> final top-1 of seeds 0, 1, 2
    ("0.0001", "null"): [0.80, 0.82, 0.84],  # mean 82.0, std 2.0
    ("0.0001", "1"): [0.90, 0.91, 0.89],  # mean 90.0, std 1.0: the best point
    ("0.0005", "null"): [0.81, 0.95, 0.88],  # mean 88.0, std 7.0: within the spread of the best
    ("0.0005", "1"): [0.70, 0.71, None],  # one seed failed: mean 70.5 of 2
}


def seeded_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "seeds"
    for (wd, mn), top1s in SEEDED.items():
        for seed, top1 in enumerate(top1s):
            overrides = [f"{WD}={wd}", f"{MN}={mn}", f"trainer.seed={seed}", *COMMON]
            if top1 is None:
                write_job(sweep, overrides, [0.1], final=None)  # crashed after one epoch
                continue
            final = {"epochs": 3, "epochs_run": 3, "top1": top1, "top5": 0.99, "loss": 0.5, "selection": None}
            write_job(sweep, overrides, [top1 - 0.1, top1 - 0.05, top1], final=final)
    return sweep


def test_jobs_differing_only_in_seed_are_summarized_as_mean_std_and_n(tmp_path):

    rows = report.collect(seeded_sweep(tmp_path))
    groups = sweep_stats.seed_groups_of(rows)
    by_point = {(g.point[WD], g.point[MN]): g for g in groups}
    best = by_point[("0.0001", "1")]
    assert groups[0] is best and best.n == 3
    assert best.mean == pytest.approx(0.90) and best.std == pytest.approx(0.01)
    assert by_point[("0.0001", "null")].std == pytest.approx(0.02)
    assert by_point[("0.0005", "null")].std == pytest.approx(0.07)
    failed = by_point[("0.0005", "1")]
    assert (failed.n, failed.jobs) == (2, 3) and failed.mean == pytest.approx(0.705)
    assert best.text() == "90.0 ± 1.0 (3)" and failed.text() == "70.5 ± 0.7 (2/3 finished, 1 incomplete)"
    assert "trainer.seed" not in best.point


def test_the_report_opens_with_the_contrasts_against_off_then_the_points(tmp_path):
    from scipy.stats import ttest_ind

    sweep = seeded_sweep(tmp_path)
    rows = report.collect(sweep)
    paths = report.write_report(rows, sweep)
    text = paths["markdown"].read_text()
    # the first table is the answer: max norm 1 against off, pooled over weight decay, in words
    assert text.index("## The answer") < text.index("## Points") < text.index("## Every job")
    answer = text.split("## The answer", 1)[1].split("## Points", 1)[0]
    assert "- max norm 1 vs off: " in answer and "(5 vs 6 runs)" in answer
    with open(paths["contrasts"]) as f:
        table = {(r["factor"], r["level"], r["within"]): r for r in csv.DictReader(f)}
    assert set(next(iter(table.values()))) >= {
        "factor", "level", "baseline", "within", "estimate", "ci_low", "ci_high", "p_adjusted",
        "n_level", "n_baseline",
    }  # fmt: skip
    within = table[(MN, "1", f"{WD}=0.0001")]
    assert float(within["estimate"]) == pytest.approx(8.0) and within["baseline"] == "null"
    pooled = table[(MN, "1", "all")]
    assert float(pooled["estimate"]) == pytest.approx((8.0 + (70.5 - 88.0)) / 2)
    assert float(pooled["ci_low"]) < float(pooled["estimate"]) < float(pooled["ci_high"])
    # off's seeds spread 5.1 points (pooled over its two points), max norm 1's 0.9: Bartlett's test
    # says so, and the contrasts use each side's own noise, pooled over its points, which gives more
    # df than a Welch test of the 3 + 3 seeds alone
    assert "- seed noise differs between the values of max norm (Bartlett p 0.016;" in answer
    off_var = (np.var([80, 82, 84], ddof=1) * 2 + np.var([81, 95, 88], ddof=1) * 2) / 4
    one_var = (np.var([90, 91, 89], ddof=1) * 2 + np.var([70, 71], ddof=1)) / 3
    assert float(within["se"]) == pytest.approx(np.sqrt(off_var / 3 + one_var / 3))
    welch = ttest_ind([0.90, 0.91, 0.89], [0.80, 0.82, 0.84], equal_var=False)
    assert float(within["df"]) > welch.df
    # the points: mean with its interval, counts, and which could be the best
    with open(paths["seeds_csv"]) as f:
        points = {(r[WD], r[MN]): r for r in csv.DictReader(f)}
    assert (points[("0.0005", "1")]["n"], points[("0.0005", "1")]["jobs"]) == ("2", "3")
    assert points[("0.0005", "1")]["incomplete"] == "1"
    assert float(points[("0.0001", "1")]["mean_top1"]) == pytest.approx(0.90)
    assert points[("0.0001", "1")]["could_be_best"] == "True"
    assert points[("0.0005", "1")]["could_be_best"] == "False"  # 70.5 against 90: clearly not
    assert "biased upward" in text and "fresh seeds" in text
    # the heat map averages the seeds: one cell per point, "mean ± std (n)"
    figure = figures.seed_heat_map(sweep_stats.seed_groups_of(rows), WD, MN)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "90.0 ± 1.0\n(3)" in texts and len(texts) == 4


def test_a_seed_preempted_at_epoch_5_of_16_counts_as_incomplete_and_moves_no_colour(tmp_path):
    sweep = seeded_sweep(tmp_path)
    rows = report.collect(sweep)
    groups = sweep_stats.seed_groups_of(rows)
    before = figures.seed_heat_map(groups, WD, MN).axes[0].images[0].norm
    # a fourth seed of the best point, preempted after epoch 5 of 16 with a low top-1
    job = write_job(
        sweep,
        [f"{WD}=0.0001", f"{MN}=1", "trainer.seed=3", *COMMON],
        [0.2, 0.3, 0.35, 0.4, 0.45],
        extra_files={"preempted.json": json.dumps({"signal": "SIGUSR1", "epoch": 5})},
    )
    (job / "config.yaml").write_text(yaml.safe_dump({"trainer": {"epochs": 16}}))
    rows = report.collect(sweep)
    (row,) = [r for r in rows if r["path"] == job]
    assert (row["status"], row["outcome"], row["epochs_run"], row["epochs"]) == (
        "preempted",
        "incomplete",
        5,
        16,
    )
    paths = report.write_report(rows, sweep)
    with open(paths["seeds_csv"]) as f:
        best = next(r for r in csv.DictReader(f) if (r[WD], r[MN]) == ("0.0001", "1"))
    assert (best["n"], best["jobs"], best["incomplete"]) == ("3", "4", "1")
    assert float(best["mean_top1"]) == pytest.approx(0.90)  # the 45% of a shorter run is not in it
    groups = sweep_stats.seed_groups_of(rows)
    after = figures.seed_heat_map(groups, WD, MN).axes[0].images[0].norm
    assert (after.vmin, after.vmax) == (pytest.approx(before.vmin), pytest.approx(before.vmax))
    points = paths["markdown"].read_text().split("## Points", 1)[1].split("## Every job", 1)[0]
    (line,) = [line for line in points.splitlines() if line.startswith("| 0.0001 | 1 |")]
    assert "| 90.0 [" in line and "| 3/4 |" in line and "| 1 incomplete |" in line


def test_a_sweep_with_one_seed_per_point_has_no_seed_section(tmp_path):

    sweep = tmp_path / "plain"
    for (wd, mn), top1s in GRID.items():
        write_job(sweep, [f"{WD}={wd}", f"{MN}={mn}", *COMMON], top1s, final={"epochs": 3, "top1": top1s[-1]})
    rows = report.collect(sweep)
    assert sweep_stats.seed_groups_of(rows) is None
    assert "## Seed groups" not in report.write_report(rows, sweep)["markdown"].read_text()


# ------------------------------------------------------ the seed's question at its size: 3 x 4 x 3 seeds
WDS, MNS = ("0.00005", "0.0001", "0.0002"), ("null", "1", "2", "5")
COST = {"null": 0.0, "1": -0.003, "2": -0.003, "5": 0.0}  # max norm 1 and 2 cost 0.3 points: the truth
NORM = 3.0  # the median pre-clip gradient norm of every job
# the seed noise (std 0.15 points) of each (weight decay, max norm, seed), one fixed draw; the suite's
# calibration (tests/test_contrasts.py) measures how often such a sweep is read right (98% of draws)
SEED_NOISE = np.random.default_rng(SEED_NOISE_DRAW := 3).normal(0, 0.0015, size=(len(WDS), len(MNS), 3))


def wd_max_norm_job(
    sweep: Path, wd: str, mn: str, seed: int, *, diverged: bool = False, norm: float = NORM
) -> Path:
    """A job of a weight decay x max norm x seed sweep of known truth: top-1 76% + 10 x weight
    decay + the cost of its max norm + seed noise of 0.15 points; metrics with the stabilizer's keys
    (gradient norm 3, so max norm 1 and 2 clip every step and 5 none; the clip factor
    min(1, max_norm / 3)); a diverged job stops after epoch 1 with a nonfinite_report.json."""
    NORM = norm  # noqa: N806 (the module's default, or another sweep's gradient norm)
    noise = SEED_NOISE[WDS.index(wd), MNS.index(mn), seed]
    top1 = 0.76 + 10 * float(wd) + COST[mn] + noise
    epochs = [1] if diverged else [1, 2, 3, 4, 5]
    limit = None if mn == "null" else float(mn)
    rows = []
    for epoch in epochs:
        clipped = 0.0 if limit is None else float(NORM * 0.9**epoch > limit)
        rows.append(
            {
                "epoch": epoch,
                "split": "train",
                "loss": 1.0 + 3 * 0.8**epoch + 0.02 * seed,
                "grad_norm_p50": NORM * 0.9**epoch,
                "clipped_fraction": clipped,
                "clip_factor_mean": 1.0 if limit is None else min(1.0, limit / (NORM * 0.9**epoch)),
            }
        )
        rows.append({"epoch": epoch, "split": "holdout", "loss": 2.0, "top1": top1 - 0.05 * 0.8**epoch})
    extra = {"metrics.jsonl": "".join(json.dumps(r) + "\n" for r in rows)}
    final = None
    if diverged:
        extra["nonfinite_report.json"] = json.dumps({"epoch": 1, "step": 3})
    else:
        final = {"epochs": 5, "epochs_run": 5, "top1": top1, "best_top1": top1, "selection": "holdout"}
    return write_job(
        sweep,
        [f"{WD}={wd}", f"{MN}={mn}", f"trainer.seed={seed}", *COMMON],
        [],
        final=final,
        extra_files=extra,
    )


@pytest.mark.slow
def test_a_36_job_sweep_answers_with_contrasts_and_a_clipping_figure_read_at_a_glance(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    for wd in WDS:
        for mn in MNS:
            for seed in range(3):
                # one seed without clipping diverges: 2 of 3 finish at that point
                wd_max_norm_job(sweep, wd, mn, seed, diverged=(wd, mn, seed) == ("0.0002", "null", 2))
    rows = report.collect(sweep)
    assert len(rows) == 36
    drawn, save = {}, plots.save
    monkeypatch.setattr(plots, "save", lambda fig, path: save(drawn.setdefault(Path(path).name, fig), path))
    paths = report.write_report(rows, sweep)

    # the answer: max norm 1 and 2 cost about 0.3 points, pooled over the weight decays, and marked
    with open(paths["contrasts"]) as f:
        pooled = {r["level"]: r for r in csv.DictReader(f) if r["within"] == "all"}
    assert set(pooled) == {"1", "2", "5"}
    for level in ("1", "2"):
        assert float(pooled[level]["ci_low"]) < -0.3 < float(pooled[level]["ci_high"]) < 0
        assert float(pooled[level]["p_adjusted"]) < 0.05
        assert (pooled[level]["n_level"], pooled[level]["n_baseline"]) == ("9", "8")
    assert float(pooled["5"]["ci_low"]) < 0 < float(pooled["5"]["ci_high"])
    assert (pooled["1"]["diverged_baseline"], pooled["1"]["ended_baseline"]) == ("1", "9")
    md = paths["markdown"].read_text()
    assert "- max norm 2 vs off: -0.3" in md and "(9 vs 8 runs)" in md
    assert "max norm off: 1 of 9 runs diverged (95% CI 0-48%)" in md
    # docs/reports.md quotes this sweep's answer: its lines must be the report's, word for word
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reports.md").read_text()
    quoted = [ln.strip() for ln in doc.splitlines() if ln.startswith("    - max norm")]
    assert quoted and all(line in md.splitlines() for line in quoted), (quoted, md)

    # the diverged seed is an outcome beside its point's mean, not a reason to rank it last
    with open(paths["seeds_csv"]) as f:
        table = list(csv.DictReader(f))
    (point,) = [r for r in table if (r[WD], r[MN]) == ("0.0002", "null")]
    assert (point["n"], point["jobs"], point["diverged"]) == ("2", "3", "1") and table.index(point) < 3
    heat = drawn["report.png"]
    texts = [t.get_text() for t in heat.axes[0].texts]
    assert any(t.endswith("(2/3 finished, 1 diverged)") for t in texts)
    assert len([p for p in heat.axes[0].patches if p.get_hatch()]) == 1  # that cell is hatched
    assert "holdout" in heat.axes[0].get_title() and "colours span" in heat.axes[1].get_ylabel()

    # clipping.png: off after the largest max norm, 95% intervals, the diverged run marked, the
    # pooled contrasts written in; per epoch, the clipped share and the clip factor per max norm
    top1_ax, share_ax, kept_ax = drawn["clipping.png"].axes[:3]
    assert [t.get_text() for t in top1_ax.get_xticklabels()] == ["1", "2", "5", "null (off)"]
    assert "1/3 diverged" in [t.get_text() for t in top1_ax.texts]
    box = next(t.get_text() for t in top1_ax.texts if t.get_text().startswith("pooled against off"))
    assert f"2: {float(pooled['2']['estimate']):+.2f} points" in box and box.count(" *") == 2
    shares = {line.get_label(): line.get_ydata().tolist() for line in share_ax.get_lines()}
    assert shares["max_norm=1"] == [100.0] * 5 and shares["max_norm=5"] == [0.0] * 5
    assert shares["max_norm=2"] == [100.0, 100.0, 100.0, 0.0, 0.0]  # the norm falls below 2 at epoch 4
    kept = {line.get_label(): line.get_ydata().tolist() for line in kept_ax.get_lines()}
    assert kept["max_norm=1"][0] == pytest.approx(1 / 2.7) and kept["max_norm=5"] == [1.0] * 5

    # curves.png: a row of panels per weight decay, a line (mean) and a band per max norm
    figure = drawn["curves.png"]
    assert len(figure.axes) == 2 * len(WDS) and figure.get_figheight() > 3 * len(WDS)
    for ax in figure.axes[::2]:
        assert len(ax.get_lines()) == len(MNS) and len(ax.collections) >= len(MNS) - 1
    legend = [t.get_text() for t in figure.axes[4].get_legend().get_texts()]
    assert legend == ["max_norm=null (2/3 finished, 1 diverged)", "max_norm=1", "max_norm=2", "max_norm=5"]
    width, height, colours = png_facts(paths["curves"])
    assert height > 700 and len(colours) > 50
    if os.environ.get("RESNET_REPRO_DOC_IMAGES"):  # refresh docs/images (see docs/reports.md)
        images = Path(__file__).resolve().parents[1] / "docs" / "images"
        for name in ("curves", "clipping", "plot"):
            target = images / f"sweep36_{'heatmap' if name == 'plot' else name}.png"
            target.write_bytes(paths[name].read_bytes())


def test_clipping_statistics_per_max_norm_stand_beside_another_sweeps(tmp_path):
    from resnet_repro.reporting import clipping_stats

    # two jobs at one max norm: epochs out of order in the file, as a resumed job can leave them
    jobs = [
        [
            {"epoch": 2, "clipped_fraction": 0.2, "clip_factor_mean": 0.9, "grad_norm_p50": 1.0},
            {"epoch": 1, "clipped_fraction": 1.0, "clip_factor_mean": 0.5, "grad_norm_p50": 4.0},
        ],
        [
            {"epoch": 1, "clipped_fraction": 0.8, "clip_factor_mean": 0.6, "grad_norm_p50": 3.0},
            {"epoch": 2, "clipped_fraction": 0.0, "clip_factor_mean": 1.0, "grad_norm_p50": 2.0},
        ],
    ]
    stats = clipping_stats.level_stats(jobs)
    assert stats["clipped first epoch %"] == pytest.approx(90.0)
    assert stats["clipped last epoch %"] == pytest.approx(10.0)
    assert stats["clipped whole run %"] == pytest.approx(50.0)
    assert stats["clip factor"] == pytest.approx(0.75) and stats["median grad norm"] == pytest.approx(2.5)

    full, proxy = tmp_path / "full", tmp_path / "proxy"
    for mn in ("null", "1", "2"):
        wd_max_norm_job(full, "0.0001", mn, 0)
        wd_max_norm_job(proxy, "0.0001", mn, 0, norm=1.5)  # a proxy whose gradient norms are half
        wd_max_norm_job(proxy, "0.0002", mn, 0, norm=1.5)
    paths = report.write_report(report.collect(full), full, report.collect(proxy), "proxy")
    section = paths["markdown"].read_text().split("## Clipping per max norm", 1)[1].split("##", 1)[0]
    header, _, *lines = [line for line in section.splitlines() if line.startswith("|")]
    assert "clip factor (proxy)" in header and [line.split("|")[1].strip() for line in lines] == [
        "1",
        "2",
        "null",
    ]
    one = [c.strip() for c in lines[0].strip("|").split("|")]
    two = [c.strip() for c in lines[1].strip("|").split("|")]
    # mean over 5 epochs of min(1, max_norm / (norm x 0.9^epoch)): 0.462 at norm 3, 0.896 at 1.5
    assert one[1:3] == ["100", "100"] and one[7:9] == ["0.462", "0.896"]
    assert two[3:5] == ["0", "0"] and two[9:11] == ["2.19", "1.09"]  # median grad norm: 3 x 0.9^3


def test_a_job_that_lost_its_settings_is_named_not_silently_dropped(tmp_path: Path, capsys):
    """Its config.yaml and .hydra/ gone (a partial copy of the sweep), it still has numbers: the
    table cannot place it, so the report says which job it leaves out."""
    from resnet_repro.cli import main

    write_job(tmp_path, ["stabilizer.max_norm=null"], [0.3, 0.4], final=final_json([0.3, 0.4]))
    lost = write_job(tmp_path, ["stabilizer.max_norm=2"], [0.3, 0.5], final=final_json([0.3, 0.5]))
    shutil.rmtree(lost / ".hydra")
    (lost / "config.yaml").unlink()
    for elsewhere in (tmp_path / ".trash" / "old", tmp_path / "stabilizer.max_norm=null" / "checkpoints"):
        elsewhere.mkdir(parents=True)  # hidden, or inside a job: no job of this sweep
        (elsewhere / "metrics.jsonl").write_text("")
    main(["report", str(tmp_path), "--no-hparams"])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [
        f"resnet-repro: warning: {lost} has results but neither .hydra/overrides.yaml nor config.yaml: "
        "its settings are unknown, so the report leaves it out"
    ]


def test_damaged_job_files_are_one_line_each(tmp_path: Path):
    job = write_job(tmp_path, ["optim.lr=0.1"], [0.3])
    (job / ".hydra" / "overrides.yaml").write_text("- a: [\n")
    with pytest.raises(UserError) as e:
        report.collect(tmp_path)
    assert "overrides.yaml is not valid YAML" in str(e.value) and "\n" not in str(e.value)


def test_a_finished_jobs_final_json_this_user_may_not_read_is_named_not_read_as_unfinished(
    tmp_path: Path, monkeypatch
):
    job = write_job(tmp_path, ["optim.lr=0.1"], [0.3], final=final_json([0.3]))
    deny_reading(monkeypatch, lambda path: path.name == "final.json")
    with pytest.raises(PermissionError) as e:  # the CLI says it in one line (file_error_line)
        report.collect(tmp_path)
    assert e.value.filename == str(job / "final.json")
    # in a sweep the other jobs still count: the report leaves this one out and says so
    other = write_job(tmp_path / "b", ["optim.lr=0.2"], [0.4], final=final_json([0.4]))
    deny_reading(monkeypatch, lambda path: path == job / "final.json")
    left_out: list[str] = []
    rows = report.collect(tmp_path, left_out)
    assert [str(r["path"]) for r in rows] == [str(other)]
    assert left_out == [
        f"{job / 'final.json'}: Permission denied; this user may not use it: the report leaves {job} out"
    ]
