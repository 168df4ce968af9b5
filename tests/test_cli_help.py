"""`resnet-repro <command> --help` works for every command: what it does, its options or key
overrides, an example; the Hydra-based ones list the config groups without the typed schemas."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnet_repro.cli import COMMANDS, main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a command might write stays in tmp


def _help(args: list[str], capsys) -> str:
    """Output of a --help run, which must exit 0 (argparse and Hydra exit; plain help returns)."""
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr()
    out = capsys.readouterr().out
    assert "Traceback" not in out
    return out


# something each command's help must say besides its usage and example
SAYS = {
    "train": "experiment=",
    "eval": "checkpoint=PATH",
    "make-demo-data": "--out",
    "prepare-imagenet": "--train-tar",
    "verify-data": "--no-decode",
    "stats": "data.stats.max_images",
    "report": "MULTIRUN_DIR|RUN_DIR",
    "bench": "loop-overhead",  # the modes: `bench --help` is help, not an unknown mode
    "prepare-cifar10": "--archive",
    "plan": "plan.img_per_s_per_gpu",
    "rehearse": "--check-only",
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_usage_and_an_example(command: str, capsys, tmp_path: Path):
    out = _help([command, "--help"], capsys)

    assert out.lstrip().startswith(f"usage: resnet-repro {command}"), out
    assert SAYS[command] in out
    assert f"\n  resnet-repro {command} " in out.split("example:", 1)[1], out
    assert not list(tmp_path.iterdir())  # help runs nothing: no run directory


def test_train_help_names_the_tool_and_lists_groups_without_schemas(capsys):
    out = _help(["train", "--help"], capsys)

    assert "_schema" not in out
    assert "powered by Hydra" not in out and "cli " not in out
    assert "\n  data: cifar10, demo, folder, imagenet\n" in out
    assert "\n  model: resnet101, resnet152, resnet18, resnet34, resnet50\n" in out
    assert "--cfg job" in out


def test_bench_mode_help_is_the_bench_help(capsys):
    out = _help(["bench", "model", "--help"], capsys)
    assert out.lstrip().startswith("usage: resnet-repro bench MODE") and "loop-overhead" in out


def test_top_level_help_lists_every_command_and_points_to_command_help(capsys):
    out = _help(["--help"], capsys)
    assert all(f"\n  {c} " in out for c in COMMANDS)
    assert "resnet-repro <command> --help" in out
