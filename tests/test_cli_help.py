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


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_usage_and_an_example(command: str, capsys, tmp_path: Path):
    out = _help([command, "--help"], capsys)

    assert out.lstrip().startswith(f"usage: resnet-repro {command}"), out
    assert f"\n  resnet-repro {command} " in out.split("example:", 1)[1], out
    assert not list(tmp_path.iterdir())  # help runs nothing: no run directory


def test_train_help_names_the_tool_and_lists_groups_without_schemas(capsys):
    out = _help(["train", "--help"], capsys)

    assert "_schema" not in out
    assert "powered by Hydra" not in out and "cli " not in out
    assert "\n  data: demo, folder, imagenet\n" in out
    assert "\n  model: resnet101, resnet152, resnet18, resnet34, resnet50\n" in out
    assert "--cfg job" in out


def test_bench_help_is_help_not_an_unknown_mode(capsys):
    out = _help(["bench", "--help"], capsys)
    assert "loop-overhead" in out and "unknown" not in out
    assert _help(["bench", "model", "--help"], capsys) == out


def test_verify_data_help_names_no_decode(capsys):
    assert "--no-decode" in _help(["verify-data", "--help"], capsys)


def test_top_level_help_lists_every_command_and_points_to_command_help(capsys):
    out = _help(["--help"], capsys)
    assert all(f"\n  {c} " in out for c in COMMANDS)
    assert "resnet-repro <command> --help" in out
