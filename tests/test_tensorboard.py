"""TensorBoard, checked for real: a tiny demo sweep plus `resnet-repro report`, served by TensorBoard,
read back through its HTTP API (what the scalars, text and hparams dashboards show), and the
`make tensorboard` address."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHT_DECAYS = ("0.0001", "0.0005")


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_repro", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    """`python -m tensorboard.main` over `logdir` on 127.0.0.1, and JSON from its HTTP API."""

    def __init__(self, logdir: Path, out: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = open(out, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
            + ["--port", self.url.rsplit(":", 1)[1], "--reload_interval", "1"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, body: dict | None = None) -> object:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_for_runs(self, count: int, timeout_s: float = 60) -> dict:
        """The scalar tags once `count` runs are loaded (TensorBoard reads event files in the background)."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, "TensorBoard exited; see its log"
            try:
                tags = self.get("/data/plugin/scalars/tags")
                if len([run for run in tags if run.endswith("tb")]) >= count:
                    return tags
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, f"TensorBoard did not load {count} runs in {timeout_s} s"
            time.sleep(0.5)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="module")
def sweep(demo_root: Path, tmp_path_factory) -> Path:
    """A finished 2-job demo sweep over weight decay (1 epoch of 2 steps each), reported."""
    sweep = tmp_path_factory.mktemp("tb") / "sweep"
    cli(
        "train",
        "-m",
        f"data.root={demo_root}",
        f"optim.weight_decay={','.join(WEIGHT_DECAYS)}",
        "trainer.epochs=1",
        "trainer.max_steps_per_epoch=2",
        "trainer.batch_size=16",
        "stabilizer.warmup_epochs=0",
        "logging.progress=false",
        f"hydra.sweep.dir={sweep}",
    )
    cli("report", str(sweep))
    return sweep


@pytest.fixture(scope="module")
def tensorboard(sweep: Path):
    board = TensorBoard(sweep, sweep.parent / "tensorboard.log")
    try:
        board.wait_for_runs(len(WEIGHT_DECAYS))
        yield board
    finally:
        board.close()


@pytest.mark.slow
def test_tensorboard_serves_the_train_and_val_scalars_of_every_job(sweep: Path, tensorboard: TensorBoard):
    plugins = tensorboard.get("/data/plugins_listing")
    assert all(plugins[name]["enabled"] for name in ("scalars", "text", "hparams")), plugins

    tags = tensorboard.get("/data/plugin/scalars/tags")
    runs = sorted(run for run in tags if run.endswith("/tb"))
    assert [run.split(",")[0] for run in runs] == [f"optim.weight_decay={wd}" for wd in WEIGHT_DECAYS]
    for run in runs:
        # the per-epoch rows of metrics.jsonl as <split>/<key>, and the per-step gradient norm
        expected = {"train/loss", "train/top1", "train/lr", "train/grad_norm_p99", "train/clipped_fraction"}
        expected |= {"train/clip_factor_mean", "train/grad_norm", "val/loss", "val/top1", "val/top5"}
        assert expected <= set(tags[run]), sorted(tags[run])

    run = runs[0]
    query = urlencode({"run": run, "tag": "val/top1"})
    series = tensorboard.get(f"/data/plugin/scalars/scalars?{query}")
    val = next(
        json.loads(line)
        for line in (sweep / run.removesuffix("/tb") / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "val"
    )
    assert [(step, pytest.approx(value, abs=1e-6)) for _, step, value in series] == [(2, val["top1"])]


@pytest.mark.slow
def test_tensorboard_shows_the_start_up_summary_as_text(tensorboard: TensorBoard):
    tags = tensorboard.get("/data/plugin/text/tags")
    run = sorted(run for run in tags if run.endswith("/tb"))[0]
    assert "summary/text_summary" in tags[run]
    query = urlencode({"run": run, "tag": "summary/text_summary"})
    (entry,) = tensorboard.get(f"/data/plugin/text/text?{query}")
    assert "resnet18 on demo" in entry["text"] and "param group" in entry["text"]


@pytest.mark.slow
def test_tensorboard_hparams_show_the_swept_keys_without_run_control_and_no_nan_metric(
    tensorboard: TensorBoard,
):
    experiment = tensorboard.get("/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {info["name"] for info in experiment["hparamInfos"]}
    assert hparams == {
        "optim.weight_decay",
        "trainer.epochs",
        "trainer.batch_size",
        "stabilizer.warmup_epochs",
    }
    # the demo has no holdout, so no job has a best top-1 (that column showed NaN before)
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == ["hparam/final_top1"]

    request = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": "optim.weight_decay"}, {"metric": {"tag": "hparam/final_top1"}}],
        "startIndex": 0,
        "sliceSize": 10,
    }
    groups = tensorboard.get("/data/plugin/hparams/session_groups", request)["sessionGroups"]
    assert sorted(g["hparams"]["optim.weight_decay"] for g in groups) == [float(wd) for wd in WEIGHT_DECAYS]
    for group in groups:
        (metric,) = group["metricValues"]
        assert metric["name"]["tag"] == "hparam/final_top1" and 0.0 <= metric["value"] <= 1.0


def make_dry_run(*args: str, **env: str) -> str:
    proc = subprocess.run(
        ["make", "-n", "tensorboard", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    return next(line for line in proc.stdout.splitlines() if "tensorboard --logdir" in line)


def test_make_tensorboard_listens_on_localhost_unless_host_is_given():
    assert "--host 127.0.0.1" in make_dry_run(HOST="my-laptop")  # an exported HOST does not widen it
    assert "--host 0.0.0.0" in make_dry_run("HOST=0.0.0.0")
    assert "--bind_all" not in make_dry_run()


@pytest.mark.parametrize("port", ["abc", "0", "65536", "60 06"])
def test_make_tensorboard_refuses_a_port_that_is_not_one_in_one_line(port: str):
    command = ["make", "-s", "tensorboard", f"PORT={port}"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert proc.returncode == 2 and "usage" not in proc.stderr
    assert proc.stdout.strip() == f"error: PORT={port}: expected a port number from 1 to 65535"
