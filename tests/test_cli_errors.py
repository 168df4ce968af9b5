"""Bad input reaches the user as one line naming the value and what is expected, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import deny_reading

from resnet_repro.cli import main


@pytest.fixture(autouse=True)
def _run_dirs_in_tmp(tmp_path: Path, monkeypatch):
    """Hydra makes its run directory (runs/...) relative to the working directory."""
    monkeypatch.chdir(tmp_path)


def run_main(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    return exc.value.code, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A data root whose train split has a class folder but val is broken in various ways."""
    (tmp_path / "train" / "a").mkdir(parents=True)
    return tmp_path


def test_missing_data_root_is_one_line_naming_the_path(tmp_path: Path, capsys):
    missing = tmp_path / "nope"
    code, err = run_main(["train", "data=folder", f"data.root={missing}", "trainer.epochs=2"], capsys)
    assert code == 2
    assert str(missing) in one_error_line(err)


def test_folder_without_class_subfolders_is_named(tmp_path: Path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "loose.JPEG").write_bytes(b"x")
    code, err = run_main(["train", "data=folder", f"data.root={tmp_path}"], capsys)
    line = one_error_line(err)
    assert code == 2 and "no class subfolders" in line and str(tmp_path / "train") in line


def test_empty_class_folder_is_named(folder: Path, capsys):
    code, err = run_main(["train", "data=folder", f"data.root={folder}"], capsys)
    line = one_error_line(err)
    assert code == 2 and "has no images" in line and str(folder / "train" / "a") in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.name=resnet51", "model.name='resnet51' is unknown; choose one of resnet18"),
        ("optim.name=adamm", "optim.name='adamm' is unknown"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be a positive"),
        ("trainer.batch_size=-8", "trainer.batch_size=-8 must be a positive"),
        ("optim.lr_per_256=0", "optim.lr_per_256=0.0 must be a positive"),
        ("optim.lr_per_256=-0.1", "optim.lr_per_256=-0.1 must be a positive"),
    ],
)
def test_bad_values_give_one_line_naming_the_value(override: str, expected: str, demo_root: Path, capsys):
    code, err = run_main(["train", f"data.root={demo_root}", override, "trainer.epochs=2"], capsys)
    assert code == 2
    assert expected in one_error_line(err)


def test_unknown_command_is_one_line(capsys):
    code, err = run_main(["trian"], capsys)
    assert code == 2 and "unknown command 'trian'" in one_error_line(err)


@pytest.mark.parametrize("show", [["--cfg", "hydra"], ["-c", "hydra"], ["--cfg=hydra"]])
def test_hydras_own_config_resolved_is_one_line_naming_what_works(capsys, show):
    """Hydra cannot resolve its own node alone (hydra.run.dir names the job's `name`): a traceback
    before; now one line pointing at --cfg all --resolve, which shows the run directory."""
    code, err = run_main(["train", *show, "--resolve"], capsys)
    line = one_error_line(err)
    assert code == 2 and "--cfg all --resolve" in line, err


def test_eval_without_checkpoint_says_what_is_needed(demo_root: Path, capsys):
    code, err = run_main(["eval", f"data.root={demo_root}"], capsys)
    assert code == 2 and "checkpoint=PATH" in one_error_line(err)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("eval.protocol=tencrop", "eval.protocol='tencrop' is not one of center, ten_crop, multiscale"),
        ("eval.scales=[]", "eval.scales=[] must be a non-empty list"),
    ],
)
def test_eval_with_a_bad_protocol_is_one_line_naming_the_value(
    override: str, expected: str, demo_root: Path, capsys
):
    code, err = run_main(["eval", "checkpoint=never_read.pt", f"data.root={demo_root}", override], capsys)
    assert code == 2 and expected in one_error_line(err)


def test_console_script_prints_no_traceback_for_a_bad_value(demo_root: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_repro", "train", f"data.root={demo_root}", "trainer.batch_size=0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert one_error_line(proc.stderr).startswith("resnet-repro: error: trainer.batch_size=0")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.epochs_x=3", "did you mean trainer.epochs?"),
        ("data.augment.hflp=true", "did you mean data.augment.hflip?"),
        ("epochs=3", "unknown config key epochs"),
    ],
)
def test_a_misspelt_config_key_is_one_line_with_the_closest_real_key(override: str, expected: str, capsys):
    code, err = run_main(["train", override], capsys)
    assert code == 2
    assert expected in one_error_line(err)


COMMANDS = ["train", "eval", "stats", "verify-data", "bench model", "rehearse", "plan"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("experiment=he2017", "Could not find 'experiment/he2017'; available: cifar10_resnet18, demo,"),
        ("optim=sgdd", "Could not find 'optim/sgdd'; available: adam, adamw, sgd"),
        (
            "trainer.batch_size=abc",
            "trainer.batch_size=abc: Value 'abc' of type 'str' could not be converted",
        ),
        ("data.augment=digits", "(a config group is chosen with /: data/augment=...)"),
        (
            "data.root=~/dd",
            "does not parse as an override: quote the value inside the argument, \"data.root='~/dd'\"",
        ),
        ("trainer.epochs=[1", "no viable alternative at input '[1'"),
    ],
)
def test_a_command_line_that_does_not_compose_is_one_line_and_exit_2_in_every_command(
    command: str, override: str, expected: str, capsys
):
    """Hydra's own report is several lines and exit 1; --check-only said one line and exit 2."""
    code, err = run_main([*command.split(), override], capsys)
    assert code == 2
    assert expected in one_error_line(err)


def test_group_choices_hydra_keys_and_sweeps_pass_the_key_check():
    from resnet_repro.config import check_override_keys

    check_override_keys(
        [
            "-m",
            "data=imagenet",
            "data/augment=light",
            "experiment=imagenet_paper",
            "hydra.run.dir=/tmp/x",
            "stabilizer.max_norm=null,2",
            "+optim.betas=[0.9,0.99]",
            "data.augment.scale=[0.1,1.0]",
        ],
        groups=["data", "experiment", "hydra"],
    )


def test_an_unset_required_data_root_is_one_line_naming_the_key(capsys):
    code, err = run_main(["train", "experiment=imagenet_paper"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "data.root is required" in line and "data.root=" in line


@pytest.mark.parametrize(
    "command",
    [
        ["make-demo-data"],
        ["prepare-cifar10", "--archive", "cifar-10-python.tar.gz"],
        ["prepare-imagenet", "--train-tar", "train.tar", "--val-tar", "val.tar"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize("under", [False, True], ids=["out-is-a-file", "out-under-a-file"])
def test_an_out_folder_that_is_a_file_is_one_line_before_any_work(command, under, tmp_path: Path, capsys):
    """A review: NotADirectoryError / FileExistsError tracebacks, after reading the archive."""
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    out = notes / "data" if under else notes
    code, err = run_main([*command, "--out", str(out)], capsys)
    assert code == 2
    assert f"--out {out} cannot be made: {notes} is a file, not a folder" in one_error_line(err)
    assert notes.read_text() == "keep"


def test_make_demo_data_into_a_foreign_folder_is_one_line_and_deletes_nothing(tmp_path: Path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, err = run_main(["make-demo-data", "--out", str(tmp_path)], capsys)
    assert code == 2
    assert "is not the demo dataset" in one_error_line(err)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_make_demo_data_where_the_file_system_refuses_it_is_one_line(capsys):
    """/proc passes the permission checks (root may write anywhere) and refuses every new file."""
    code, err = run_main(["make-demo-data", "--out", "/proc/no-demo-here"], capsys)
    assert code == 2
    assert one_error_line(err).startswith(
        "resnet-repro: error: the demo data cannot be written to /proc/no-demo-here: "
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.global_batch=128"], "trainer.batch_size=64 per process x 1 process"),  # the demo's 64
        (["experiment=imagenet_paper", "trainer.batch_size=64"], "trainer.batch_size=64 per process x 1"),
        (["experiment=imagenet_paper", "trainer.batch_size=32", "trainer.nproc=2"], "x 2 processes"),
    ],
)
def test_a_batch_size_that_disagrees_with_the_global_batch_is_one_line_naming_both(
    overrides: list[str], expected: str, demo_root: Path, capsys
):
    # a short run, should the check ever be missed
    short = ["trainer.epochs=2", "trainer.max_steps_per_epoch=1", "logging.progress=false"]
    code, err = run_main(["train", f"data.root={demo_root}", *overrides, *short], capsys)
    assert code == 2
    line = one_error_line(err)
    assert expected in line and "trainer.global_batch=" in line and "trainer.batch_size=null" in line


def test_the_paper_preset_leaves_the_per_device_batch_to_the_global_batch(capsys):
    main(["train", "experiment=imagenet_paper", "data.root=/data", "--cfg", "job"])
    job = capsys.readouterr().out
    assert "global_batch: 256" in job and "batch_size: null" in job


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["verify-data", "--nodecode"], "unknown option --nodecode; did you mean --no-decode?"),
        (["train", "--resolvee"], "unknown option --resolvee; did you mean --resolve?"),
        (["stats", "--frobnicate"], "unknown option --frobnicate"),
    ],
)
def test_a_misspelt_option_is_one_line_naming_it_not_hydras_usage(args, words, capsys):
    code, err = run_main(args, capsys)
    assert code == 2
    line = one_error_line(err)
    assert words in line and f"resnet-repro {args[0]} --help" in line


def test_hydras_own_flags_abbreviated_or_with_a_value_attached_still_reach_hydra():
    from resnet_repro.commands.hydra_app import refuse_unknown_options

    for args in (["--cfg", "job", "--res"], ["-cjob"], ["--info=config"], ["-m", "--cfg=job"], ["--inf"]):
        refuse_unknown_options(args, "train")  # no SystemExit


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "--cfg", "job", "optim=adamx"], "Could not find 'optim/adamx'; available: adam, adamw"),
        (["train", "-c", "job", "--resolve", "trainer.epochs=abc"], "trainer.epochs=abc: Value 'abc'"),
        (["eval", "--cfg=all", "--package", "optim", "optim=adamx"], "Could not find 'optim/adamx'"),
        (["stats", "--info", "defaults", "optim=adamx"], "Could not find 'optim/adamx'"),
    ],
    ids=["cfg", "cfg-resolve", "package", "info"],
)
def test_a_composition_error_beside_hydras_show_flags_is_one_line_not_hydras_report(args, words, capsys):
    """--cfg, --resolve, --package and --info used to leave composition errors to Hydra: a report of
    a dozen lines, exit 1, where the same overrides alone give one line and exit 2."""
    code, err = run_main(args, capsys)
    assert code == 2, err
    assert words in one_error_line(err)


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "--cfg", "job", "data.root=/elsewhere"],
        ["eval", "-c", "job", "checkpoint=/x", "data.root=/elsewhere"],
    ],
    ids=["stats", "eval"],
)
def test_hydras_flags_before_the_overrides_show_the_config_of_commands_that_add_overrides(args, capsys):
    # the command's own `name=...` went before them: "unrecognized arguments: data.root=/elsewhere"
    main(args)
    assert "root: /elsewhere" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [["eval", "--info"], ["stats", "-i"], ["train", "trainer.seed=1", "--info"]],
    ids=["eval", "stats", "train"],
)
def test_a_bare_info_flag_shows_hydras_info_whatever_overrides_the_command_adds(args, capsys):
    # --info takes an optional value: put before the overrides it took the first one for its value
    main(args)
    assert "Config search path" in capsys.readouterr().out


def test_resolve_without_cfg_is_one_line_not_hydras_traceback(capsys):
    code, err = run_main(["train", "--resolve"], capsys)
    line = one_error_line(err)
    assert code == 2 and "--resolve shows the config only with --cfg" in line, line


def test_package_without_cfg_still_checks_every_sweep_point_before_the_first_runs(capsys):
    # --package alone is not one of Hydra's modes: the sweep runs, so its points are checked first
    code, err = run_main(["train", "-m", "-p", "trainer", "optim.weight_decay=1e-4,-1"], capsys)
    line = one_error_line(err)
    assert code == 2 and "sweep point 2 of 2 (optim.weight_decay=-1)" in line, line


def test_two_of_hydras_modes_at_once_are_one_line_not_its_traceback(capsys):
    code, err = run_main(["train", "-m", "--cfg", "job", "optim=sgd,adam"], capsys)
    line = one_error_line(err)
    assert code == 2 and "--cfg and --multirun cannot be given together" in line, line


@pytest.mark.parametrize("option", ["--cfg", "--resolve", "--frobnicate"])
def test_an_option_plan_does_not_take_is_one_line_naming_it(option, capsys):
    # it was blamed on Hydra's override grammar: "--cfg does not parse as an override"
    code, err = run_main(["plan", option, "job"], capsys)
    line = one_error_line(err)
    assert code == 2 and f"unknown option {option}" in line and "resnet-repro plan --help" in line, line


def test_a_plan_setting_of_the_wrong_type_names_the_type_expected(capsys):
    code, err = run_main(["plan", "plan.img_per_s_per_gpu=abc"], capsys)
    assert code == 2
    expected = "plan.img_per_s_per_gpu=abc: Value 'abc' of type 'str' could not be converted"
    assert expected in one_error_line(err)


def test_a_file_this_user_may_not_read_is_one_line_naming_it(tmp_path: Path, monkeypatch, capsys):
    """A run directory on shared storage written by another user: report read it with a traceback."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("trainer: {epochs: 1}\n")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "split": "train", "loss": 1.0, "top1": 0.5}\n')
    deny_reading(monkeypatch, lambda path: path.name == "metrics.jsonl")
    code, err = run_main(["report", str(run)], capsys)
    line = one_error_line(err)
    assert code == 2 and f"{run / 'metrics.jsonl'}: Permission denied" in line


def one_step_train(demo_root: Path, run: Path) -> list[str]:
    """`train` for one step of one epoch on the digits, into `run`."""
    return [
        "train",
        f"data.root={demo_root}",
        f"hydra.run.dir={run}",
        "trainer.epochs=1",
        "stabilizer.warmup_epochs=0",
        "trainer.max_steps_per_epoch=1",
        "data.max_eval_images=20",
        "logging.progress=false",
    ]


def test_a_tensorboard_folder_that_is_a_file_is_one_line_naming_it(demo_root: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tb").write_text("not a folder")
    args = one_step_train(demo_root, run)
    code, err = run_main(args, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{run / 'tb'}: File exists; expected a folder there" in lines[0]


@pytest.mark.parametrize("tb_is_a_file", [False, True], ids=["finished", "failed"])
def test_a_run_in_this_process_lets_go_of_its_train_log_when_it_ends(
    demo_root: Path, tmp_path: Path, capsys, tb_is_a_file
):
    """In-process runs (Hydra's basic launcher runs a sweep's jobs in one process): an ended run's
    train.log is closed and detached, so a later job's or a caller's warnings never go to it."""
    import logging

    run = tmp_path / "run"
    run.mkdir()
    if tb_is_a_file:
        (run / "tb").write_text("not a folder")
    args = one_step_train(demo_root, run)
    try:
        main(args)
    except SystemExit as e:
        assert e.code == (2 if tb_is_a_file else 0), capsys.readouterr().err
    assert (run / "train.log").is_file()
    handlers = logging.getLogger("resnet_repro").handlers
    assert [h.baseFilename for h in handlers if isinstance(h, logging.FileHandler)] == []


def test_only_a_path_that_exists_but_cannot_be_used_is_the_users_one_line():
    import errno

    from resnet_repro.config import UserError, file_error_line, files_as_user_errors

    denied = PermissionError(errno.EACCES, "Permission denied", "/runs/x/metrics.jsonl")
    assert file_error_line(denied) == "/runs/x/metrics.jsonl: Permission denied; this user may not use it"
    # a missing file, or an error naming no file, is more often a bug here: its traceback is kept
    assert file_error_line(FileNotFoundError(errno.ENOENT, "No such file", "/runs/x/a")) is None
    assert file_error_line(OSError(errno.EIO, "I/O error")) is None
    with pytest.raises(UserError, match="metrics.jsonl: Permission denied"), files_as_user_errors():
        raise denied
    with pytest.raises(FileNotFoundError), files_as_user_errors():
        raise FileNotFoundError(errno.ENOENT, "No such file", "/runs/x/a")


@pytest.mark.parametrize("command", ["train", "rehearse"])
@pytest.mark.parametrize("split", ["train", "train/", "./train"])
def test_a_test_split_that_is_the_training_split_is_refused_before_training(
    command: str, split: str, demo_root: Path, capsys
):
    code, err = run_main(
        [command, f"data.root={demo_root}", f"data.eval_split={split}", "data.normalization=published"],
        capsys,
    )
    line = one_error_line(err)
    assert code == 2 and f"data.eval_split={split!r} is the training split" in line, err


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["train"], "data.root={} does not hold the demo dataset"),
        (["rehearse", "--check-only"], "data.root={} does not hold the demo dataset"),
        (["verify-data"], "data root {} does not exist or is not a folder"),
    ],
)
def test_a_demo_data_root_that_does_not_exist_is_refused_not_filled_with_the_digits(
    command: list[str], said: str, tmp_path: Path, capsys
):
    """data=demo (the default group) with a data.root of the user's: a typo, or a forgotten
    data=imagenet; the digits are built on first use in their cache folder only."""
    typo = tmp_path / "imagenett"
    code, err = run_main([*command, f"data.root={typo}"], capsys)
    line = one_error_line(err)
    assert code == 2 and said.format(typo) in line, err
    assert not typo.exists()


def test_a_refused_resume_leaves_the_runs_own_hydra_files(demo_root: Path, tmp_path: Path, capsys):
    """Hydra writes .hydra/ as a launch starts, before the run decides it may go on there: a
    launch with other settings, refused, must not leave its settings as the run's (report reads
    .hydra/overrides.yaml for a job's settings and its files' times for its start)."""
    run = tmp_path / "run"
    main(one_step_train(demo_root, run))
    capsys.readouterr()
    before = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
    code, err = run_main([*one_step_train(demo_root, run), "trainer.seed=1"], capsys)
    assert code == 2 and "was trained with other settings" in err, err
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == before
    assert not (run / ".hydra.launch").exists()
    main(one_step_train(demo_root, run))  # the same settings again: resumes (finished) and keeps them
    assert "trainer.seed=1" not in (run / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize("failure", ["refused_resume", "tensorboard_folder_is_a_file"])
def test_a_run_that_fails_in_this_process_gives_back_its_signal_handlers(
    demo_root: Path, tmp_path: Path, capsys, failure
):
    """Hydra's basic launcher runs a sweep's points in one process, and a failed point does not end
    the sweep: a failed run must not leave its preemption handlers installed. A later run's watch
    would take the dead one's handler for a launcher's own and leave the requeue to it (nothing
    requeued, the run saying "requeued by the launcher")."""
    import signal

    run = tmp_path / "run"
    args = one_step_train(demo_root, run)
    if failure == "refused_resume":
        main(args)
        capsys.readouterr()
        args = [*args, "trainer.seed=1"]  # other settings in the same folder: refused after set-up
    else:
        run.mkdir()
        (run / "tb").write_text("not a folder")
    watched = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    before = {sig: signal.getsignal(sig) for sig in watched}
    code, err = run_main(args, capsys)
    assert code == 2, err
    assert {sig: signal.getsignal(sig) for sig in watched} == before


def test_a_first_launch_that_fails_keeps_its_hydra_files_for_the_report(tmp_path: Path, capsys):
    run = tmp_path / "run"
    args = ["train", "data=folder", f"data.root={tmp_path / 'missing'}", f"hydra.run.dir={run}"]
    code, _ = run_main(args, capsys)
    assert code == 2
    assert (run / ".hydra" / "overrides.yaml").is_file() and not (run / ".hydra.launch").exists()


def test_an_image_size_too_large_for_torch_to_size_is_one_line_from_rehearse(
    tmp_path: Path, monkeypatch, capsys
):
    # the memory check sizes the activations on the meta device: torch refused 1e9 px with a traceback
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["rehearse", "--check-only", "--stand-in", "data.image_size=1000000000"], capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith("resnet-repro: error: a training crop of 1000000000 px is too large")
    assert "data.image_size" in line


def test_an_environment_variable_that_is_not_set_is_one_line_naming_the_key(monkeypatch, capsys):
    monkeypatch.delenv("NODE_LOCAL_SCRATCH", raising=False)
    code, err = run_main(["train", "data.root=${oc.env:NODE_LOCAL_SCRATCH}/imagenet"], capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith("resnet-repro: error: data.root: ")
    assert "NODE_LOCAL_SCRATCH" in line
