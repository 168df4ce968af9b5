"""Checks of command-line overrides before Hydra sees them: unknown or renamed keys, deprecated
options, and sweeps of run-control keys (whose jobs would share one directory)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from resnet_repro.config.errors import UserError
from resnet_repro.config.run_control import is_run_control
from resnet_repro.config.schemas import RootConfig, child_schema

# Old config option names that still work, and what they are now called
DEPRECATED_OPTIONS: dict[tuple[str, str], str] = {("data/augment", "paper"): "torchvision"}


def sweep_collisions(overrides: Sequence[str]) -> list[str]:
    """Run-control keys given several values on a multirun command line (`key=a,b`, `key=range(..)`):
    their jobs would share one directory, since these keys are left out of its name."""
    swept = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not is_run_control(key) or key.lstrip("+~").startswith("hydra."):
            continue
        depth, top_level_comma = 0, False  # a comma inside [..] is a list value, not a sweep
        for char in value:
            if char in "[{(":
                depth += 1
            elif char in "]})":
                depth -= 1
            elif char == "," and depth == 0:
                top_level_comma = True
        if top_level_comma or value.strip().startswith(("range(", "choice(", "glob(")):
            swept.append(key.lstrip("+~"))
    return swept


def deprecation_warnings(overrides: Sequence[str]) -> list[str]:
    """One line per command-line `group=option` (also in a sweep's comma list) that names a
    deprecated option."""
    lines = []
    for item in overrides:
        if "=" not in item:
            continue
        group, options = item.split("=", 1)
        group = group.lstrip("+~").removeprefix("/")
        for option in options.split(","):
            new = DEPRECATED_OPTIONS.get((group, option.strip()))
            if new is not None:
                lines.append(f"{group}={option.strip()} is deprecated; use {group}={new} (the same settings)")
    return lines


# Keys that were renamed because their meaning changed: an old script fails with the new name
RENAMED_KEYS = {
    "plan.img_per_s": "use plan.img_per_s_per_gpu=N, the images/s of ONE GPU at plan.img_per_s_size px "
    "(the old key meant all of a job's processes together)",
}


def check_override_keys(overrides: Sequence[str], groups: Iterable[str]) -> None:
    """A command-line `key=value` whose key the schema does not declare is a UserError naming it
    (with the closest real key), before Hydra turns it into a multi-line message.

    `+key=value` additions are left to `to_dataclass`; `hydra.*`, `group=option` and
    `group/sub=option` are Hydra's own."""
    import dataclasses
    import difflib

    groups = set(groups)
    for item in overrides:
        if item.startswith("-") or "=" not in item:
            continue
        key = item.split("=", 1)[0].split("@", 1)[0]
        if key.lstrip("+~") in RENAMED_KEYS:
            raise UserError(f"{key} was renamed: {RENAMED_KEYS[key.lstrip('+~')]}")
        if key.startswith(("+", "~", "hydra")) or "/" in key or key in groups:
            continue
        schema: type | None = RootConfig
        path = []
        for part in key.split("."):
            if schema is None:
                break  # inside a plain value (a list or dict): Hydra checks the rest
            names = [f.name for f in dataclasses.fields(schema)]
            if part not in names:
                close = difflib.get_close_matches(part, names, n=1)
                hint = f"; did you mean {'.'.join([*path, close[0]])}?" if close else ""
                where = ".".join(path) or "the top level"
                raise UserError(f"unknown config key {key} (no {part!r} in {where}){hint}")
            path.append(part)
            schema = child_schema(schema, part)
