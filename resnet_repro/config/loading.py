"""From Hydra to dataclasses: conf/ composed with overrides, and a DictConfig converted to a RootConfig
(interpolations resolved, undeclared keys and missing values as UserErrors)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_repro.config.errors import UnresolvedInterpolation, UserError
from resnet_repro.config.schemas import RootConfig, child_schema, register_configs

if TYPE_CHECKING:
    from omegaconf import DictConfig

# conf/: conf/config.yaml and one folder per config group
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _unknown_keys(node: Any, schema: type, prefix: str = "") -> list[str]:
    """Keys of `node` that `schema` (a dataclass) does not declare, searched recursively."""
    import dataclasses

    from omegaconf import DictConfig

    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = []
    for key in node.keys() if isinstance(node, DictConfig) else []:
        if key not in fields:
            unknown.append(prefix + str(key))
            continue
        child = child_schema(schema, key)
        if child is not None and isinstance(node[key], DictConfig):
            unknown.extend(_unknown_keys(node[key], child, f"{prefix}{key}."))
    return unknown


def to_dataclass(cfg: DictConfig) -> RootConfig:
    """Resolve interpolations and convert the Hydra config to typed dataclasses.

    A key the schema does not declare (e.g. added with `+optim.lrr=0.1`) is an error, not dropped.
    """
    from omegaconf import OmegaConf

    unknown = _unknown_keys(cfg, RootConfig)
    if unknown:
        raise UserError(
            f"unknown config key(s) {', '.join(unknown)}; see conf/ and resnet_repro/config/schemas.py"
        )
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    merged = OmegaConf.merge(OmegaConf.structured(RootConfig), cfg)
    try:
        obj: Any = OmegaConf.to_object(merged)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", None) or "a required value"
        example = " (e.g. data.root=/path/to/imagenet)" if key == "data.root" else ""
        raise UserError(f"{key} is required but not set: pass {key}=...{example}") from e
    except InterpolationResolutionError as e:  # e.g. ${oc.env:VAR} of a variable not set here
        key = getattr(e, "full_key", None) or "a value"
        why = str(e).splitlines()[0].split(" raised while resolving interpolation: ")[-1]
        raise UnresolvedInterpolation(f"{key}: its interpolation cannot be resolved here: {why}") from e
    assert isinstance(obj, RootConfig)
    if obj.data.holdout.seed is None:  # null: the holdout follows the training seed
        obj.data.holdout.seed = obj.trainer.seed
    return obj


def compose(overrides: Sequence[str]) -> RootConfig:
    """conf/config.yaml composed with `overrides` (as `resnet-repro train` would compose it),
    converted to dataclasses, not validated. Works inside a running Hydra app too: its global
    state is put back afterwards."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    register_configs()
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            return to_dataclass(hydra_compose(config_name="config", overrides=list(overrides)))
    finally:
        restore_gh_from_backup(backup)
