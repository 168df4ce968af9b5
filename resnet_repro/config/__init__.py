"""The config: schemas (dataclasses registered in Hydra's ConfigStore), their loading from conf/ and
the command line, and cross-field validation. This package only re-exports its modules' public names:

- errors.py: UserError, an error in input the user controls (UnresolvedInterpolation: a value this
  process cannot resolve); hydra_error_line, Hydra's in one line; file_error_line, an OSError about
  a named file in one line (files_as_user_errors: as a UserError)
- schemas.py: the dataclass schemas and register_configs (Hydra's ConfigStore)
- loading.py: CONF_DIR, compose (conf/ + overrides) and to_dataclass (DictConfig -> RootConfig)
- validation.py: validate, one validator per section, the allowed values of each choice, and
  refuse_training_split_as_test (for the commands that measure top-1)
- derived.py: per_device_batch and eval_protocols, values read off a config
- run_control.py: RUN_CONTROL_KEYS and is_run_control (how a run executes, not what it learns)
- references.py: the published recipes a run may claim (REFERENCES) and NOT_RECIPE_KEYS
- overrides.py: checks of command-line overrides (unknown, renamed, deprecated, swept run control)

No module here imports torch: the CLI imports the config before anything heavy. Its modules import
each other, never this package.
"""

from resnet_repro.config.derived import eval_protocols, per_device_batch
from resnet_repro.config.errors import (
    UnresolvedInterpolation,
    UserError,
    file_error_line,
    files_as_user_errors,
    hydra_error_line,
)
from resnet_repro.config.loading import CONF_DIR, compose, to_dataclass
from resnet_repro.config.overrides import (
    DEPRECATED_OPTIONS,
    RENAMED_KEYS,
    check_override_keys,
    deprecation_warnings,
    sweep_collisions,
)
from resnet_repro.config.references import FFCV_RN50_RAMPS, NOT_RECIPE_KEYS, REFERENCES, Reference
from resnet_repro.config.run_control import RUN_CONTROL_KEYS, is_run_control
from resnet_repro.config.schemas import (
    GROUP_SCHEMAS,
    MISSING,
    AugmentConfig,
    BenchConfig,
    DataConfig,
    EarlyStopConfig,
    EmaConfig,
    EvalConfig,
    HoldoutConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    PlanConfig,
    ProgressiveConfig,
    RegularizationConfig,
    RootConfig,
    ScheduleConfig,
    StabilizerConfig,
    StatsConfig,
    SubsetConfig,
    TrainerConfig,
    register_configs,
)
from resnet_repro.config.validation import (
    BACKENDS,
    EVAL_PROTOCOLS,
    NORMALIZATIONS,
    PRECISIONS,
    STEMS,
    check_job,
    refuse_training_split_as_test,
    validate,
)

__all__ = [
    "file_error_line",
    "files_as_user_errors",
    "hydra_error_line",
    "BACKENDS",
    "CONF_DIR",
    "DEPRECATED_OPTIONS",
    "EVAL_PROTOCOLS",
    "FFCV_RN50_RAMPS",
    "GROUP_SCHEMAS",
    "MISSING",
    "NORMALIZATIONS",
    "NOT_RECIPE_KEYS",
    "PRECISIONS",
    "REFERENCES",
    "RENAMED_KEYS",
    "RUN_CONTROL_KEYS",
    "STEMS",
    "AugmentConfig",
    "BenchConfig",
    "DataConfig",
    "EarlyStopConfig",
    "EmaConfig",
    "EvalConfig",
    "HoldoutConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "PlanConfig",
    "ProgressiveConfig",
    "Reference",
    "RegularizationConfig",
    "RootConfig",
    "ScheduleConfig",
    "StabilizerConfig",
    "StatsConfig",
    "SubsetConfig",
    "TrainerConfig",
    "UnresolvedInterpolation",
    "UserError",
    "check_job",
    "check_override_keys",
    "compose",
    "deprecation_warnings",
    "eval_protocols",
    "is_run_control",
    "per_device_batch",
    "refuse_training_split_as_test",
    "register_configs",
    "sweep_collisions",
    "to_dataclass",
    "validate",
]
