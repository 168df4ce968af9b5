"""The fault catalogue: faults users meet, each run through the real `train` (to its first step or
its error, on this CPU) and through `rehearse` (`--check-only` always, the full rehearsal where it
is cheap); they must agree: both go on, or both stop with the same one-line error. The oracle is
the real run: the rehearsal is right when it says what `train` does. A fault the rehearsal can
only warn about (a file it did not read) is marked so, its warning asserted, and `--scan` shown
to refuse it. docs/rehearse.md's fault table lists the same catalogue."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from resnet_repro.cli import main

# a tiny folder dataset: 3 classes, 8 training and 2 validation images each, 40 x 30 px
TRAIN, VAL = {"a": 8, "b": 8, "c": 8}, {"a": 2, "b": 2, "c": 2}
RUN = [
    "data=folder",
    "model=resnet18",
    "data.image_size=32",
    "trainer.batch_size=4",
    "trainer.epochs=1",
    "trainer.max_steps_per_epoch=1",
    "stabilizer.warmup_epochs=0",
    "logging.progress=false",
    "logging.tensorboard=false",
    "data.num_threads=1",
    "data.max_eval_images=3",
]


@dataclass(frozen=True)
class Fault:
    """One fault: `make(root, work)` breaks the data or the run directory and returns the extra
    command-line arguments; `expect`: "stop" (both refuse, `says` in the one line), "go" (both
    go on), "warn" (train refuses later, the check goes on naming what it did not read, and
    `--scan` refuses), "rehearse" (only the rehearsal can judge here: no GPU, no SLURM)."""

    name: str
    group: str
    make: Callable[[Path, Path], list[str]]
    expect: str
    says: str = ""
    full: bool = False  # also the full rehearsal (cheap here)
    rehearse_args: list[str] = field(default_factory=list)


def none(root: Path, work: Path) -> list[str]:
    return []


def args(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda root, work: list(extra)


def broken_jpeg(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"not a JPEG body" * 20)


def corrupt(relative: str) -> Callable[[Path, Path], list[str]]:
    def make(root: Path, work: Path) -> list[str]:
        broken_jpeg(root / relative)
        return []

    return make


def cmyk_jpeg(root: Path, work: Path) -> list[str]:
    pixels = np.random.default_rng(1).integers(0, 256, size=(30, 40, 4), dtype=np.uint8)
    Image.fromarray(pixels, mode="CMYK").save(root / "train" / "b" / "7.JPEG", format="JPEG")
    return []


def png_named_jpeg(root: Path, work: Path) -> list[str]:
    pixels = np.random.default_rng(2).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels, mode="RGB").save(root / "train" / "c" / "0.JPEG", format="PNG")
    return []


def excluded_by_absolute_path(root: Path, work: Path) -> list[str]:
    bad = root / "train" / "a" / "0.JPEG"  # in the sample
    broken_jpeg(bad)
    listing = work / "bad_files.txt"
    listing.write_text(f"{bad.resolve()}\n")
    return [f"data.exclude_files={listing}"]


def rename_split(split: str) -> Callable[[Path, Path], list[str]]:
    def make(root: Path, work: Path) -> list[str]:
        (root / split).rename(root / f"{split}-old")
        return []

    return make


def image_name_not_utf8(root: Path, work: Path) -> list[str]:
    import os

    (root / "train" / "a" / "0.JPEG").rename(root / "train" / "a" / os.fsdecode(b"caf\xe9.JPEG"))
    return []


def appledouble_files(root: Path, work: Path) -> list[str]:
    """macOS's `._<name>` companions beside images (a copy from a Mac's external disk)."""
    for image in list((root / "train").glob("*/*.JPEG"))[:4] + list((root / "val").glob("*/*.JPEG"))[:2]:
        (image.parent / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    return []


def uneven_classes(*extra: str) -> Callable[[Path, Path], list[str]]:
    """Class a with 30 training images, b and c with 1 each: 32 in all, the sample's per-class
    share (found by a review) fell under one global batch of 16 while the real run trains."""

    def make(root: Path, work: Path) -> list[str]:
        for name in ("b", "c"):
            for image in sorted((root / "train" / name).glob("*.JPEG"))[1:]:
                image.unlink()
        first = (root / "train" / "a" / "0.JPEG").read_bytes()
        for i in range(8, 30):
            (root / "train" / "a" / f"{i}.JPEG").write_bytes(first)
        return list(extra)

    return make


def every_training_image_of_a_class_excluded(root: Path, work: Path) -> list[str]:
    listing = work / "bad_files.txt"
    work.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"train/c/{i}.JPEG\n" for i in range(TRAIN["c"])))
    return [f"data.exclude_files={listing}"]


def empty_class(root: Path, work: Path) -> list[str]:
    (root / "train" / "d").mkdir()
    return []


def val_class_not_in_train(root: Path, work: Path) -> list[str]:
    make_image_folder(root, "val", {"zz": 1}, sizes=[(40, 30)])
    return []


def subset_of_absent_classes(root: Path, work: Path) -> list[str]:
    names = work / "classes.txt"
    names.write_text("a\nzz\n")
    return [f"data.subset.classes={names}"]


def stats_of(work: Path, *extra: str) -> Path:
    """A statistics file computed by `resnet-repro stats` with `extra` overrides."""
    path = work / f"stats-{len(list(work.glob('stats-*.json')))}.json"
    with _no_exit():
        main(["stats", *RUN, f"data.stats.path={path}", f"hydra.run.dir={work / 'stats-run'}", *extra])
    assert path.is_file()
    return path


class _no_exit:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        if kind is SystemExit and value.code not in (0, None):
            raise AssertionError(f"stats failed with exit {value.code}")
        return kind is SystemExit


def stale_stats_of_other_files(root: Path, work: Path) -> list[str]:
    listing = work / "drop.txt"
    listing.write_text("train/a/0.JPEG\n")
    path = stats_of(work, f"data.root={root}", f"data.exclude_files={listing}")
    return [f"data.stats.path={path}"]


def stale_stats_of_other_resize(root: Path, work: Path) -> list[str]:
    return [f"data.stats.path={stats_of(work, f'data.root={root}', 'data.stats.resize=16')}"]


def stats_of_another_dataset(root: Path, work: Path) -> list[str]:
    other = work / "other"
    make_image_folder(other, "train", {"a": 5, "b": 5}, sizes=[(40, 30)], seed=7)
    make_image_folder(other, "val", {"a": 1, "b": 1}, sizes=[(40, 30)], seed=8)
    return [f"data.stats.path={stats_of(work, f'data.root={other}')}"]


def locked_run_dir(root: Path, work: Path) -> list[str]:
    run_dir = work / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    LIVE.append(holder)
    import socket

    lock = {"job": None, "host": socket.gethostname(), "pid": holder.pid, "restarts": None}
    (run_dir / "run.lock").write_text(json.dumps(lock) + "\n")
    return [f"hydra.run.dir={run_dir}"]


LIVE: list[subprocess.Popen] = []


def trained_run_dir(*first: str) -> Callable[[Path, Path], list[str]]:
    """A run directory holding the last.pt of a run with the base settings; then `first`'s
    changes are what the new command asks."""

    def make(root: Path, work: Path) -> list[str]:
        run_dir = work / "run"
        with _no_exit():
            main(["train", *RUN, f"data.root={root}", f"hydra.run.dir={run_dir}", "trainer.epochs=2"])
        assert (run_dir / "checkpoints" / "last.pt").is_file()
        return [f"hydra.run.dir={run_dir}", "trainer.epochs=2", *first]

    return make


def last_pt_of_other_classes(root: Path, work: Path) -> list[str]:
    """A run trained on classes a, b, c; then class c's folders are renamed: as many classes,
    other names (the checkpoint's output 2 would be scored as another class)."""
    extra = trained_run_dir()(root, work)
    for split in ("train", "val"):
        (root / split / "c").rename(root / split / "d")
    return extra


def last_pt_of_fewer_classes(root: Path, work: Path) -> list[str]:
    """A run trained on classes a, b, c; then a class d is added and changes are allowed: the
    checkpoint's output layer has 3 outputs, the run's 4 (both rehearsals said it resumes)."""
    extra = trained_run_dir()(root, work)
    make_image_folder(root, "train", {"d": 8}, sizes=[(40, 30)], seed=3)
    make_image_folder(root, "val", {"d": 2}, sizes=[(40, 30)], seed=4)
    return [*extra, "trainer.resume_with_changes=true"]


def run_dir_under_a_file(root: Path, work: Path) -> list[str]:
    """hydra.run.dir inside a path whose part is a file (train crashed in Hydra's mkdir)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "notes").write_text("a file, not a folder\n")
    return [f"hydra.run.dir={work / 'notes' / 'run'}"]


def little_disk(root: Path, work: Path) -> list[str]:
    return []  # the free space is patched in the test (both commands ask shutil.disk_usage)


CATALOGUE = [
    # data
    Fault(
        "misspelt_data_root",
        "data",
        lambda r, w: [f"data.root={r}t"],
        "stop",
        "does not exist or is not a folder",
        full=True,
    ),
    Fault("no_train_split", "data", rename_split("train"), "stop", "split folder", full=True),
    Fault("no_val_split", "data", rename_split("val"), "stop", "split folder"),
    Fault("empty_class_folder", "data", empty_class, "stop", "has no images", full=True),
    Fault("val_class_not_in_train", "data", val_class_not_in_train, "stop", "not in the training split"),
    Fault(
        "fewer_images_than_a_global_batch",
        "data",
        args("trainer.batch_size=32"),
        "stop",
        "fewer than one global batch",
    ),
    Fault("very_uneven_classes", "data", uneven_classes("trainer.batch_size=16"), "go", full=True),
    Fault(
        "very_uneven_classes_with_a_holdout",
        "data",
        uneven_classes("trainer.batch_size=8", "data.holdout.size=0.5"),
        "go",
        full=True,
    ),
    Fault(
        "every_training_image_of_a_class_excluded",
        "data",
        every_training_image_of_a_class_excluded,
        "go",
        full=True,
    ),
    Fault("holdout_larger_than_train", "data", args("data.holdout.size=1000"), "stop", "asks for 1000"),
    Fault("subset_naming_absent_classes", "data", subset_of_absent_classes, "stop", "zz"),
    Fault(
        "subset_of_more_classes_than_the_data",
        "data",
        args("data.subset.classes=5"),
        "stop",
        "must be between 1 and the 3 classes",
    ),
    Fault(
        "corrupt_jpeg_inside_the_sample",
        "data",
        corrupt("train/a/0.JPEG"),
        "warn",
        "the statistics pass cannot decode",
        full=True,
    ),
    Fault(
        "corrupt_jpeg_outside_the_sample",
        "data",
        corrupt("train/b/7.JPEG"),
        "warn",
        "the statistics pass cannot decode",
    ),
    Fault("image_name_not_utf8", "data", image_name_not_utf8, "stop", "is not valid UTF-8", full=True),
    Fault("appledouble_files_beside_images", "data", appledouble_files, "go", full=True),
    Fault("cmyk_jpeg", "data", cmyk_jpeg, "go"),
    Fault("png_named_jpeg", "data", png_named_jpeg, "go", full=True),
    Fault("corrupt_jpeg_excluded_by_absolute_path", "data", excluded_by_absolute_path, "go", full=True),
    # statistics
    Fault(
        "stats_file_not_writable",
        "statistics",
        args("data.stats.path=/proc/resnet-repro/stats.json"),
        "stop",
        "cannot write the stats file",
        full=True,
    ),
    Fault(
        "stats_path_is_a_folder",
        "statistics",
        lambda root, work: [f"data.stats.path={root}"],
        "stop",
        "is a folder: name a file",
        full=True,
    ),
    Fault("stale_stats_of_other_files", "statistics", stale_stats_of_other_files, "stop", "stale"),
    Fault("stale_stats_of_another_resize", "statistics", stale_stats_of_other_resize, "stop", "resize"),
    Fault("stats_of_another_dataset", "statistics", stats_of_another_dataset, "stop", "stale"),
    # config
    Fault("typo_in_a_key", "config", args("trainer.epoch=3"), "stop", "trainer.epoch", full=True),
    Fault(
        "global_batch_not_divisible",
        "config",
        args("trainer.global_batch=9", "trainer.batch_size=null", "trainer.nproc=2"),
        "stop",
        "not divisible",
    ),
    Fault(
        "warmup_past_a_milestone",
        "config",
        args("stabilizer.warmup_epochs=6", "schedule.milestones=[5,7]", "trainer.epochs=8"),
        "stop",
        "reaches past the first LR milestone",
    ),
    Fault("unknown_model", "config", args("model.name=resnet51"), "stop", "resnet51", full=True),
    Fault(
        "sync_bn_on_a_cpu_run",
        "config",
        args("trainer.device=cpu", "model.sync_bn=true"),
        "stop",
        "SyncBatchNorm has no CPU implementation",
    ),
    Fault(
        "test_split_is_the_training_split",
        "config",
        args("data.eval_split=train"),
        "stop",
        "is the training split",
    ),
    # the run directory
    Fault(
        "run_directory_locked_by_a_live_run",
        "run directory",
        locked_run_dir,
        "stop",
        "is held by another run",
    ),
    Fault(
        "last_pt_of_other_settings",
        "run directory",
        trained_run_dir("optim.lr_per_256=0.3"),
        "stop",
        "was trained with other settings",
        full=True,  # and the full rehearsal leaves that run as it was
    ),
    Fault(
        "last_pt_of_other_classes",
        "run directory",
        last_pt_of_other_classes,
        "stop",
        "classes ['a', 'b', 'c'] -> ['a', 'b', 'd']",
    ),
    Fault(
        "last_pt_of_fewer_classes_with_changes_allowed",
        "run directory",
        last_pt_of_fewer_classes,
        "stop",
        "another output layer",
        full=True,
    ),
    Fault(
        "last_pt_of_another_global_batch",
        "run directory",
        trained_run_dir("trainer.batch_size=8"),
        "stop",
        "belongs to a different job",
    ),
    Fault("last_pt_of_the_same_run", "run directory", trained_run_dir(), "go", full=True),
    Fault("run_dir_under_a_file", "run directory", run_dir_under_a_file, "stop", "is a file", full=True),
    Fault(
        "resume_file_missing",
        "run directory",
        args("trainer.resume=/nonexistent/last.pt"),
        "stop",
        "no such checkpoint file",
    ),
    # launchers
    Fault(
        "multirun_collision",
        "launchers",
        args("-m", "trainer.nproc=1,2"),
        "stop",
        "would put every job in one",
    ),
    # capacity
    Fault("checkpoints_over_the_free_disk", "capacity", little_disk, "stop", "free some space"),
]


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_image_folder(root, "train", TRAIN, sizes=[(40, 30)])
    make_image_folder(root, "val", VAL, sizes=[(40, 30)])
    return root


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch):
    """Run directories (runs/..., rehearsals/...) relative to a folder of the test's own."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield
    for holder in LIVE:
        holder.kill()
    LIVE.clear()


def outcome(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, the last error line or "", stdout) of `resnet-repro <argv>` in this process."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if line.startswith("resnet-repro: error:")]
    assert "Traceback" not in out.err, out.err[-3000:]
    return code, (errors[-1] if errors else ""), out.out


def split_flags(extra: list[str]) -> tuple[list[str], list[str]]:
    flags = [a for a in extra if a in ("-m", "--multirun")]
    return flags, [a for a in extra if a not in flags]


@pytest.mark.parametrize("fault", CATALOGUE, ids=[f.name for f in CATALOGUE])
def test_train_and_rehearse_agree_on(fault: Fault, data_root: Path, tmp_path: Path, capsys, monkeypatch):
    work = tmp_path / "work"
    extra = fault.make(data_root, work)
    if fault.name == "checkpoints_over_the_free_disk":
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
    flags, extra = split_flags(extra)
    command = [*RUN, f"data.root={data_root}", *extra]
    trained = outcome(["train", *flags, *command], capsys)
    checked = outcome(["rehearse", "--check-only", *fault.rehearse_args, *flags, *command], capsys)
    if fault.expect == "stop":
        assert trained[0] == 2 and fault.says in trained[1], trained
        assert checked[:2] == trained[:2], f"train: {trained[1]}\nrehearse --check-only: {checked[1]}"
    elif fault.expect == "go":
        assert trained[0] == 0, trained
        assert checked[0] == 0 and "rehearsal verdict: the real run would start" in checked[2], checked
    elif fault.expect == "warn":
        # the real run stops with one line, also where DALI's decoder crashes (docs/rehearse.md)
        assert trained[0] == 2 and fault.says in trained[1], trained
        assert checked[0] == 0, checked
        assert "`resnet-repro verify-data data.root=...` (or rehearse --scan)" in checked[2]
        scanned = outcome(["rehearse", "--check-only", "--scan", *command], capsys)
        assert scanned[0] == 2 and "cannot be read" in scanned[1], scanned
    if fault.full:
        before = _files_of(work / "run")
        full = outcome(["rehearse", *fault.rehearse_args, *flags, *command], capsys)
        if fault.expect in ("stop", "warn"):  # warn: the file is in the sample, named as the user's
            assert full[:2] == trained[:2], f"train: {trained[1]}\nrehearse: {full[1]}"
        else:
            assert full[0] == 0 and "the real run would start and train" in full[2], full
        # a real run directory given (hydra.run.dir) is checked, never written: nothing is lost
        assert _files_of(work / "run") == before


def _files_of(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content's digest ({} when there is no folder)."""
    import hashlib

    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_out_at_a_real_run_or_at_the_run_directory_given_is_refused_and_nothing_is_written(
    data_root: Path, tmp_path: Path, capsys
):
    work = tmp_path / "work"
    given = trained_run_dir()(data_root, work)  # hydra.run.dir=<work/run>: a finished real run
    run = work / "run"
    before = _files_of(run)
    command = [*RUN, f"data.root={data_root}"]
    code, error, _ = outcome(["rehearse", f"--out={run}", *command], capsys)
    assert code == 2 and f"--out={run} holds a run that is not a rehearsal (checkpoints/last.pt" in error
    code, error, _ = outcome(["rehearse", f"--out={run}", *command, *given], capsys)
    assert code == 2 and "is the real run's directory" in error
    assert _files_of(run) == before


# ------------------------------------------------------------- what only the rehearsal can judge here
def test_a_batch_over_the_gpus_memory_is_refused_naming_the_memory_it_needs(capsys):
    code, error, _ = outcome(
        [
            "rehearse",
            "--check-only",
            "--stand-in",
            "experiment=imagenet_paper",
            "trainer.global_batch=null",
            "trainer.batch_size=4096",
        ],
        capsys,
    )
    assert code == 2
    assert "a per-process batch of 4096 at 224 px needs about" in error and "80 GiB GPU" in error, error


def test_the_slurm_launcher_is_reported_as_its_tasks_and_per_task_batch(capsys):
    code, _, out = outcome(
        [
            "rehearse",
            "--check-only",
            "--stand-in",
            "-m",
            "experiment=imagenet_paper",
            "hydra/launcher=slurm",
            "hydra.launcher.nodes=2",
        ],
        capsys,
    )
    assert code == 0
    assert (
        "processes        16: 16 SLURM tasks of the submitit launcher (2 node(s) x 8 tasks_per_node)" in out
    )
    assert "16 per process, 256 global" in out


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("trainer.device=cuda", "trainer.device=cuda -> cpu"),
        ("model.sync_bn=true", "model.sync_bn=true -> BatchNorm per process"),
        ("trainer.compile=true", "trainer.compile=true -> eager"),
    ],
)
def test_gpu_only_settings_are_rehearsed_with_the_cpus_equivalent_and_said_so(setting, said, capsys):
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is here: nothing is substituted")
    code, error, out = outcome(
        ["rehearse", "--check-only", "--stand-in", "experiment=imagenet_paper", setting], capsys
    )
    assert code == 0, error
    assert f"substituted      {said}" in out


@pytest.mark.slow
def test_a_rehearsal_under_torchrun_trains_both_ranks_in_one_launch_and_resumes_in_the_same_processes(
    data_root: Path, tmp_path: Path
):
    """The single-launch path: torchrun starts the ranks (as srun would); the rehearsal cannot
    launch them again, so its second build happens in the same processes."""
    run_dir = tmp_path / "rehearsal"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "resnet_repro",
            "rehearse",
            *RUN,
            f"data.root={data_root}",
            "trainer.epochs=2",
            f"--out={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "processes        2: rank 0 of 2 (torchrun)" in run.stdout, run.stdout
    assert "the same processes, every part rebuilt resumed it" in run.stdout
    record = json.loads((run_dir / "rehearsal.json").read_text())
    assert record["launches"] == 1 and len(record["peak_memory_mb"]) == 2
    assert [w["why"] for w in record["trained"]] == ["first step", "last epoch"], record["trained"]


SLURM_AND_TORCHRUN = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_STEP_ID")


@pytest.mark.parametrize(
    "env",
    [{}, {"SLURM_JOB_ID": "7"}, {"SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "0"}],
    ids=["outside-slurm", "slurm-job", "slurm-array"],
)
@pytest.mark.parametrize("resume", ["auto", "never"])
def test_rehearsal_checks_the_directory_train_names(monkeypatch, env, resume):
    """The run directory the rehearsal checks (a lock, a last.pt of other settings) is the one
    `train` with the same command names, or none where train starts a fresh one."""
    from omegaconf import OmegaConf

    from resnet_repro.commands.hydra_app import train_run_id
    from resnet_repro.config import compose
    from resnet_repro.planning.rehearse import real_run_dir

    for key in (*SLURM_AND_TORCHRUN, "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = compose([f"trainer.resume={resume}"])
    named_by_train = train_run_id(OmegaConf.structured(cfg))
    checked = real_run_dir([], cfg, multirun=False)
    if checked is None:
        assert not named_by_train.startswith("cfg-"), named_by_train  # a fresh directory each start
    else:
        assert checked == Path("runs") / cfg.name / named_by_train


def test_one_slurm_task_of_the_launcher_starts_trainer_nproc_workers_as_train_does(capsys):
    # a single-task job step is not a world of SLURM tasks: train starts trainer.nproc workers there
    code, _, out = outcome(
        [
            "rehearse", "--check-only", "--stand-in", "-m", "experiment=imagenet_paper",
            "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=1", "trainer.nproc=4",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert "processes        4: 4 local worker processes (trainer.nproc) in one SLURM task" in out, out
    assert "64 per process, 256 global" in out
