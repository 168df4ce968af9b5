"""`resnet-repro eval`: a checkpoint measured the way its run measured it. Nothing heavy (torch) is
imported before the command runs: the CLI imports this module to dispatch."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from resnet_repro.commands.hydra_app import PROG, fail, hydra_command
from resnet_repro.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    RootConfig,
    UserError,
    eval_protocols,
    per_device_batch,
    refuse_training_split_as_test,
    to_dataclass,
    validate,
)

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

# `eval --help`, shown by conf/hydra/help/resnet_repro.yaml with the config groups
HELP = f"""usage: {PROG} eval checkpoint=PATH [key=value ...]

Top-1 / top-5 / loss of a checkpoint (a run's last.pt or best.pt, or a plain torchvision ResNet
state dict) on data.eval_split; prints one JSON line. From a run's checkpoint it takes that run's
model, data, normalization and precision; data.* keys and trainer.precision on the command line
win (model keys apply to plain state dicts only).

key overrides:
  checkpoint=PATH                   the checkpoint (required)
  data.root=DIR data.eval_split=val trainer.precision=bf16

example:
  {PROG} eval checkpoint=runs/demo/<run id>/checkpoints/last.pt
"""


def eval_command(args: list[str]) -> None:
    # the small Hydra output (config, log) goes to runs/eval/<time>, apart from training runs (a
    # name= on the command line still wins)
    hydra_command(_eval, ["name=eval", *args], "eval", HELP)


def _override_keys() -> set[str]:
    """The config keys and groups named on this command line (`data.root=..` -> `data.root`)."""
    from hydra.core.hydra_config import HydraConfig

    keys = set()
    for item in HydraConfig.get().overrides.task:
        key = item.split("=", 1)[0].lstrip("+~")
        keys.add(key.split("@", 1)[0])
    return keys


def _eval(dcfg: DictConfig) -> None:
    try:
        cfg = to_dataclass(dcfg)
        validate(cfg)
        if not cfg.checkpoint:
            raise UserError("eval needs checkpoint=PATH (a last.pt of a run, or a torchvision state dict)")
        result = evaluate_checkpoint(cfg, cfg.checkpoint, explicit=_override_keys())
    except UserError as e:
        fail(str(e))
    from resnet_repro.cluster import distributed

    if distributed.detect().is_main:  # under torchrun: one line, not one per process
        print(json.dumps(result))


def load_model_for_eval(
    cfg: RootConfig, state: dict[str, Any], path: str, num_classes: int, device: torch.device
) -> nn.Module:
    """A training checkpoint of this tool (its own model config is used) or a plain state dict."""
    from resnet_repro.models import build_model

    if "model" in state and "config" in state:
        try:
            model_cfg = ModelConfig(**state["config"]["model"])
        except (TypeError, KeyError) as e:
            raise UserError(
                f"checkpoint {path} describes its model with settings this version does not know ({e})"
            ) from e
        weights = state["model"]
    else:
        model_cfg, weights = cfg.model, state
    model = build_model(model_cfg, num_classes)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(
            f"checkpoint {path} does not fit model {model_cfg.name} with {num_classes} classes: "
            f"{' '.join(line.strip() for line in str(e).splitlines()[1:2])[:200]}"
        ) from e
    return model.to(device)


def eval_config(
    cfg: RootConfig, saved: dict[str, Any] | None, explicit: set[str], stores_normalization: bool = True
) -> tuple[RootConfig, str]:
    """The config `resnet-repro eval` runs with, and a one-line account of where it came from.

    For a checkpoint of this tool (`saved` = its run's config), the data section (root, splits,
    backend, image size, crop ratio) and the precision are the run's own, so that evaluating a
    checkpoint measures what the run measured; a key named on the command line (`explicit`, e.g.
    `data.root`, `data.image_size`, `trainer.precision`) wins over the run's value, and choosing
    another `data` group or `experiment` takes the composed data section whole. Without `saved`
    (a plain state dict) the composed config is used as it is. The run's model is the checkpoint's:
    model keys on the command line are refused, not ignored; normalization keys replace the
    normalization the checkpoint stores (see `normalization_named`), and the note says so. A
    checkpoint older than the stored normalization (`stores_normalization` false) has its run's
    normalization resolved again from the config, and the note says that instead.
    """
    from omegaconf import OmegaConf

    if saved is None:
        refuse_training_split_as_test(cfg.data)
        return cfg, "eval: plain state dict: data and precision from the command line"
    # the model is the checkpoint's; channels_last is only how the loaders lay out its input
    model_keys = sorted(
        k for k in explicit if (k == "model" or k.startswith("model.")) and k != "model.channels_last"
    )
    if model_keys:
        raise UserError(
            f"{', '.join(model_keys)} on the command line: a checkpoint of resnet-repro holds its run's "
            f"model ({saved.get('model', {}).get('name', 'unnamed')}), which eval uses; model keys apply "
            "to plain state dicts only"
        )
    whole_data = bool(explicit & {"data", "experiment"})
    if whole_data:
        data = cfg.data
    else:
        try:
            merged = OmegaConf.merge(OmegaConf.structured(DataConfig), saved["data"])
        except Exception as e:  # omegaconf raises several types for keys or values the schema refuses
            raise UserError(
                f"the checkpoint's data config does not fit this version of resnet-repro ({e}); "
                "name the data explicitly, e.g. data=imagenet data.root=/path"
            ) from e
        composed = OmegaConf.structured(cfg.data)
        for key in sorted(k for k in explicit if k.startswith("data.")):
            OmegaConf.update(merged, key[len("data.") :], OmegaConf.select(composed, key[len("data.") :]))
        data = OmegaConf.to_object(merged)
        assert isinstance(data, DataConfig)
    run_precision = saved.get("trainer", {}).get("precision", cfg.trainer.precision)
    precision = cfg.trainer.precision if "trainer.precision" in explicit else run_precision
    protocol, protocol_source = _eval_protocol(cfg.eval, saved.get("eval"), explicit)
    out = dataclasses.replace(
        cfg, data=data, trainer=dataclasses.replace(cfg.trainer, precision=precision), eval=protocol
    )
    source = "the command line" if whole_data else "the checkpoint's run"
    note = (
        f"eval: data from {source} ({data.name} at {data.root}, split {data.eval_split}, "
        f"{data.image_size} px, crop ratio {data.crop_ratio}), precision {precision}, "
        f"protocol {', '.join(eval_protocols(protocol))} from {protocol_source}"
    )
    trained = saved["data"]
    for key in ("image_size", "crop_ratio"):
        if getattr(data, key) != trained[key]:
            note += f"; NOTE data.{key}={getattr(data, key)} differs from the run's {trained[key]}"
    if normalization_named(explicit):
        note += (
            f"; NOTE normalization {data.normalization} from the command line, not the one the run "
            f"trained with{' (stored in the checkpoint)' if stores_normalization else ''}"
        )
    elif stores_normalization:
        note += ", normalization the run's (stored in the checkpoint)"
    else:
        note += (
            f", normalization {data.normalization} as the data config from {source} names it, resolved "
            "again (this checkpoint stores none)"
        )
    refuse_training_split_as_test(data)
    return out, note


def normalization_named(explicit: set[str]) -> bool:
    """Whether the command line replaces the normalization a checkpoint stores: data.normalization
    named (data.mean / data.std alone are refused: they are read only under data.normalization=
    published, and would otherwise be ignored)."""
    if "data.normalization" in explicit:
        return True
    alone = sorted(explicit & {"data.mean", "data.std"})
    if alone:
        raise UserError(
            f"{' and '.join(alone)} on the command line: eval uses the run's normalization (stored in "
            "the checkpoint, or named in its run's config); to replace it, give "
            "data.normalization=published too"
        )
    return False


def _eval_protocol(
    composed: EvalConfig, saved: dict[str, Any] | None, explicit: set[str]
) -> tuple[EvalConfig, str]:
    """The run's test protocol (its final evaluation's) with the command line's eval.* keys on top;
    the command line's whole when the run recorded none (older checkpoints) or `eval=` is given."""
    if saved is None or "eval" in explicit:
        return composed, "the command line"
    named = sorted(k[len("eval.") :] for k in explicit if k.startswith("eval."))
    try:
        run = EvalConfig(**saved)
    except TypeError as e:
        raise UserError(
            f"the checkpoint's eval config does not fit this version of resnet-repro ({e}); "
            "pass eval=default to use the command line's"
        ) from e
    merged = dataclasses.replace(run, **{key: getattr(composed, key) for key in named})
    return merged, "the command line and the checkpoint's run" if named else "the checkpoint's run"


def _check_classes(
    state: dict[str, Any], path: str, data: DataConfig, classes: tuple[str, ...], say: bool
) -> None:
    """The data's classes must be the ones the checkpoint's outputs stand for: the same count is not
    enough (the digits' checkpoint scores 10% on CIFAR-10's ten classes, without a word)."""
    from resnet_repro.data import subset
    from resnet_repro.training.resume import class_change

    where = f"{data.root}/{data.train_split}" + (" (data.subset's)" if subset.is_active(data.subset) else "")
    trained = state.get("classes")
    if not isinstance(trained, list):  # a plain state dict, or a checkpoint of an earlier version
        if say:
            print(
                f"eval: checkpoint {path} holds no class names: output i is taken to be class i of the "
                f"{len(classes)} classes of {where}, in sorted order",
                file=sys.stderr,
                flush=True,
            )
        return
    change = class_change(trained, classes)
    if change is not None:
        hint = "evaluate it on its run's data (data.root=...)"
        if set(trained) < set(classes):
            hint = (
                "its run trained a subset of them: give data.subset as the run did, or leave data= and "
                "experiment= out to take the run's data section"
            )
        raise UserError(
            f"checkpoint {path} was trained on other classes than {where} holds: {change}; {hint}"
        )


def _stored_normalization(stored: Any, path: str) -> tuple[tuple[float, ...], tuple[float, ...], Any]:
    """(mean, std, mean image or None) of a checkpoint's `normalization` entry, checked: a file
    edited or written by another tool gets one line, not a KeyError."""
    import math

    import torch

    def channels(key: str) -> tuple[float, ...] | None:
        values = stored.get(key) if isinstance(stored, dict) else None
        if not isinstance(values, (list, tuple)) or len(values) != 3:
            return None
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            return None
        return tuple(float(v) for v in values)

    mean, std = channels("mean"), channels("std")
    image = stored.get("mean_image") if isinstance(stored, dict) else None
    if (
        mean is None
        or std is None
        or any(v <= 0 for v in std)
        or not (image is None or torch.is_tensor(image))
    ):
        raise UserError(
            f"checkpoint {path}: its normalization entry {str(stored)[:120]} is not what training writes "
            "(mean and std: 3 finite numbers each, std > 0; mean_image: a tensor); evaluate a checkpoint "
            "written by `resnet-repro train`"
        )
    return mean, std, image.double().numpy() if image is not None else None


def evaluate_checkpoint(cfg: RootConfig, path: str, explicit: set[str] | None = None) -> dict[str, float]:
    """`resnet-repro eval`: top-1 / top-5 / loss of a checkpoint on its run's eval split.

    `explicit`: the config keys given on the command line (see eval_config)."""
    from resnet_repro import checkpoint
    from resnet_repro.cluster import distributed
    from resnet_repro.data.normalization import Normalization
    from resnet_repro.data.normalization import resolve as resolve_normalization
    from resnet_repro.training.run_data import load_file_lists
    from resnet_repro.training.run_eval import evaluate_protocol

    state = checkpoint.load(path)
    saved = state.get("config") if isinstance(state.get("config"), dict) and "model" in state else None
    cfg, note = eval_config(cfg, saved, explicit or set(), stores_normalization="normalization" in state)
    env = distributed.detect()
    if env.is_main:
        print(note, file=sys.stderr, flush=True)
    device = distributed.pick_device(cfg.trainer.device, env)
    distributed.init(env, device, cfg.trainer.dist_timeout_s)
    try:
        splits = load_file_lists(cfg.data)
        _check_classes(state, path, cfg.data, splits.test.classes, env.is_main)
        model = load_model_for_eval(cfg, state, path, len(splits.test.classes), device)
        if "normalization" in state and not normalization_named(explicit or set()):
            # exactly what the run trained and evaluated with
            mean, std, image = _stored_normalization(state["normalization"], path)
            norm = Normalization(mean, std, "checkpoint", str(path), mean_image=image)
        else:
            norm, _ = resolve_normalization(cfg.data, splits, env, device)
        batch = per_device_batch(cfg.trainer, env.world_size)
        return evaluate_protocol(cfg, model, splits.test, env, device, batch, norm)
    finally:
        distributed.teardown()
