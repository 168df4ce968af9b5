"""Every numeric key of the schema, at values a user can mistype (negative, zero, huge, NaN), goes
through what `rehearse --check-only --stand-in` checks before a run: it is either taken or refused
with one line (a UserError naming it), never a traceback. The oracle is the outcome's form, not a
list of valid ranges: a key added tomorrow is tried without anyone writing its row."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing

import pytest
from conftest import compose
from omegaconf import OmegaConf

from resnet_repro.config import RootConfig, UserError, to_dataclass
from resnet_repro.planning import rehearse

pytestmark = pytest.mark.slow

VALUES = {int: (-1, 0, 10**9), float: (-1.0, 0.0, 1e9, float("nan"))}

# sections read only when something else turns them on: tried again with it on
FEATURES = {
    "data.progressive.": [
        "data.progressive.start_size=16",
        "data.progressive.end_size=32",
        "data.progressive.step=8",
    ],
    "regularization.dropblock": ["regularization.dropblock=0.1"],
    "schedule.": ["schedule=linear_ramp", "stabilizer.warmup_epochs=0"],
    "stabilizer.early_stop.": ["stabilizer.early_stop.patience=2", "data.holdout.size=0.1"],
}


def numeric_keys(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted key, int or float) for every field typed int or float (or either or None)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            keys += numeric_keys(kind, f"{prefix}{field.name}.")
            continue
        if typing.get_origin(kind) not in (None, typing.Union, types.UnionType):
            continue  # a list or a tuple of numbers
        base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        if len(base) == 1 and base[0] in (int, float):
            keys.append((f"{prefix}{field.name}", base[0]))
    return keys


def outcome(base, key: str, value) -> str | None:
    """None when the value is taken or refused in one line; else what went wrong."""
    cfg = copy.deepcopy(base)
    OmegaConf.update(cfg, key, value)
    try:
        rehearse.check(to_dataclass(cfg), stand_in=True)
    except UserError as e:
        return None if "\n" not in str(e) else f"a refusal of several lines: {e}"
    except Exception as e:  # a traceback for the user
        return f"{type(e).__name__}: {e}"
    return None


def test_the_schema_has_numeric_keys_to_try():
    keys = dict(numeric_keys(RootConfig))
    assert len(keys) > 60 and keys["optim.weight_decay"] is float and keys["trainer.epochs"] is int


def test_every_numeric_key_at_a_mistyped_value_is_taken_or_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the check names a run directory; it writes nothing
    bases = {"": compose([])} | {prefix: compose(extra) for prefix, extra in FEATURES.items()}
    for base in bases.values():  # a refused base would refuse every value tried on it
        rehearse.check(to_dataclass(copy.deepcopy(base)), stand_in=True)
    broken = []
    for key, kind in numeric_keys(RootConfig):
        for prefix, base in bases.items():
            if not key.startswith(prefix):
                continue
            for value in VALUES[kind]:
                problem = outcome(base, key, value)
                if problem is not None:
                    broken.append(f"{' '.join(FEATURES.get(prefix, []))} {key}={value}: {problem}".strip())
    assert broken == []
