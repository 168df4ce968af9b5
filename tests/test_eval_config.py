"""`resnet-repro eval` measures a checkpoint the way its run did unless told otherwise."""

from __future__ import annotations

import dataclasses

import pytest

from resnet_repro.commands.eval import eval_config
from resnet_repro.config import DataConfig, RootConfig, TrainerConfig, UserError


def trained_config() -> dict:
    run = RootConfig(
        data=DataConfig(name="imagenet", root="/data/imagenet", image_size=160, crop_ratio=0.95),
        trainer=TrainerConfig(precision="bf16"),
    )
    return dataclasses.asdict(run)


def command_line(**data) -> RootConfig:
    data = {"name": "demo", "root": "/cache/digits", **data}
    return RootConfig(data=DataConfig(**data), trainer=TrainerConfig(precision="fp32"))


def test_without_overrides_eval_uses_the_runs_data_and_precision():
    cfg, note = eval_config(command_line(image_size=32), trained_config(), explicit={"checkpoint"})
    assert (cfg.data.name, cfg.data.root, cfg.data.image_size, cfg.data.crop_ratio) == (
        "imagenet",
        "/data/imagenet",
        160,
        0.95,
    )
    assert cfg.trainer.precision == "bf16"
    assert "checkpoint's run" in note and "NOTE" not in note


def test_an_explicit_data_key_wins_and_a_changed_image_size_is_pointed_out():
    cfg, note = eval_config(
        command_line(image_size=224, root="/elsewhere"),
        trained_config(),
        explicit={"checkpoint", "data.root", "data.image_size", "trainer.precision"},
    )
    assert cfg.data.root == "/elsewhere" and cfg.data.image_size == 224
    assert cfg.data.name == "imagenet" and cfg.data.crop_ratio == 0.95  # the rest stays the run's
    assert cfg.trainer.precision == "fp32"
    assert "NOTE data.image_size=224 differs from the run's 160" in note


def test_choosing_another_data_group_takes_the_command_lines_data_whole():
    cfg, note = eval_config(command_line(image_size=32), trained_config(), explicit={"checkpoint", "data"})
    assert cfg.data.name == "demo" and cfg.data.image_size == 32
    assert "command line" in note and "differs from the run's 160" in note


def test_a_plain_state_dict_uses_the_composed_config_as_it_is():
    composed = command_line(image_size=32)
    cfg, note = eval_config(composed, None, explicit=set())
    assert cfg is composed and "plain state dict" in note


def test_a_checkpoint_config_this_version_cannot_read_is_a_clear_error():
    saved = trained_config()
    saved["data"]["no_such_key"] = 1
    with pytest.raises(UserError, match="data config does not fit"):
        eval_config(command_line(), saved, explicit=set())


def test_a_subset_checkpoint_on_the_whole_class_list_is_refused_with_the_subset_hint(capsys):
    from resnet_repro.commands.eval import _check_classes

    data = DataConfig(name="folder", root="/data/d3")
    with pytest.raises(UserError, match=r"classes \['b', 'd'\] -> \['a', 'b', 'c', 'd'\].*give data\.subset"):
        _check_classes({"classes": ["b", "d"]}, "last.pt", data, ("a", "b", "c", "d"), say=True)
    with pytest.raises(UserError, match=r"\['a', 'b', 'x'\].*on its run's data"):
        _check_classes({"classes": ["a", "b", "c"]}, "last.pt", data, ("a", "b", "x"), say=True)
    _check_classes({"classes": ["a", "b"]}, "last.pt", data, ("a", "b"), say=True)
    _check_classes({"model": {}}, "plain.pth", data, ("a", "b"), say=True)  # no names: assumed, said
    assert "holds no class names: output i is taken to be class i of the 2 classes of /data/d3/train" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("keys", [{"model"}, {"model.name"}, {"model.name", "model.zero_init_residual"}])
def test_model_keys_for_a_runs_checkpoint_are_refused_not_ignored(keys: set[str]):
    said = r"on the command line: a checkpoint of resnet-repro holds its run's model"
    with pytest.raises(UserError, match=said):
        eval_config(command_line(), trained_config(), explicit={"checkpoint", *keys})


def test_a_normalization_on_the_command_line_is_named_in_the_note():
    _, note = eval_config(
        command_line(normalization="none"), trained_config(), explicit={"checkpoint", "data.normalization"}
    )
    assert "NOTE normalization none from the command line, not the one the run trained with" in note
    _, note = eval_config(command_line(), trained_config(), explicit={"checkpoint"})
    assert "normalization the run's (stored in the checkpoint)" in note and "NOTE" not in note


def test_a_checkpoint_that_stores_no_normalization_is_not_said_to_store_one():
    # checkpoints written before the normalization was stored: eval resolves it from the run's config
    saved = trained_config()
    saved["data"]["normalization"] = "computed"
    _, note = eval_config(command_line(), saved, explicit={"checkpoint"}, stores_normalization=False)
    said = "normalization computed as the data config from the checkpoint's run names it, resolved again"
    assert f"{said} (this checkpoint stores none)" in note
    assert "stored in the checkpoint" not in note
    named = {"checkpoint", "data.normalization"}
    _, note = eval_config(
        command_line(normalization="none"), saved, explicit=named, stores_normalization=False
    )
    assert "NOTE normalization none from the command line, not the one the run trained with" in note
    assert "stored in the checkpoint" not in note


@pytest.mark.parametrize("keys", [{"data.mean"}, {"data.mean", "data.std"}])
def test_a_mean_or_std_without_a_normalization_is_refused_not_ignored(keys: set[str]):
    said = r"eval uses the run's normalization \(stored in the checkpoint, or .*\); to replace it"
    with pytest.raises(UserError, match=said):
        eval_config(command_line(), trained_config(), explicit={"checkpoint", *keys})
    named = {"checkpoint", "data.normalization", *keys}
    _, note = eval_config(command_line(normalization="published"), trained_config(), explicit=named)
    assert "NOTE normalization published from the command line" in note


def test_channels_last_is_the_loaders_layout_and_not_refused_as_a_model_key():
    cfg, _ = eval_config(command_line(), trained_config(), explicit={"checkpoint", "model.channels_last"})
    assert cfg.data.name == "imagenet"


@pytest.mark.parametrize("saved", [trained_config(), None], ids=["run's checkpoint", "plain state dict"])
def test_evaluating_on_the_training_split_is_refused(saved):
    cfg = command_line(eval_split="train")
    explicit = {"checkpoint", "data.eval_split"}
    with pytest.raises(UserError, match=r"data.eval_split='train' is the training split"):
        eval_config(cfg, saved, explicit)
