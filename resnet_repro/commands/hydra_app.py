"""The Hydra glue of the Hydra-based commands: the run directory's id, the `--help` resolvers of
conf/hydra/help/, the checks made before Hydra composes (override keys, sweep collisions), the
launch under hydra.main, and the composition of a command line's jobs without running them."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from omegaconf import DictConfig

from resnet_repro.config import (
    CONF_DIR,
    RootConfig,
    UnresolvedInterpolation,
    UserError,
    check_override_keys,
    deprecation_warnings,
    file_error_line,
    hydra_error_line,
    register_configs,
    sweep_collisions,
    to_dataclass,
)

PROG = "resnet-repro"


def _help_groups() -> str:
    """The config groups and their options (YAML files in conf/ and configs in Hydra's ConfigStore,
    such as the launcher plugins'), without the schemas config.register_configs stores in each
    group, and of Hydra's own groups only the launcher. Listed here rather than through Hydra's
    config loader, which copies its whole config repository for every group (seconds in all)."""
    from hydra.core.config_store import ConfigStore

    conf, store = Path(CONF_DIR), ConfigStore.instance()
    lines = []
    for folder in sorted(d for d in conf.rglob("*") if d.is_dir()):
        group = folder.relative_to(conf).as_posix()
        if group.startswith("hydra") and group != "hydra/launcher":
            continue
        options = {f.stem for f in folder.glob("*.yaml")}
        with contextlib.suppress(OSError):  # no ConfigStore entries in this group
            options |= {n.removesuffix(".yaml") for n in store.list(group) if n.endswith(".yaml")}
        options = {o for o in options if not o.endswith("_schema")}
        if options:
            lines.append(f"  {group}: {', '.join(sorted(options))}")
    return "\n".join(lines)


def _register_help(help_text: str) -> None:
    """The resolver conf/hydra/help/resnet_repro.yaml reads for `<command> --help`: the command's
    own text (`help_text`), then the config groups; "$" doubled: Hydra's help template is a
    string.Template."""
    from omegaconf import OmegaConf

    def text(part: str) -> str:
        return (help_text if part == "command" else _help_groups()).replace("$", "$$")

    OmegaConf.register_new_resolver("resnet_repro_help", text, replace=True)


def fail(message: str) -> None:
    """The one-line error of every command: `resnet-repro: error: ...`, exit 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_id() -> str:
    """The last part of a run directory, the same in every process of one job step and across
    requeues: the SLURM job id (array: <array id>_<task>), plus `.<step>` for the second and later
    `srun` steps of one allocation (a seed loop in one sbatch script gets one directory per step;
    a requeued job's script numbers its steps the same way again); else torchrun's rendezvous id,
    else the start time: with this process's id when no launcher started it (two commands started
    in one second from a shell loop get two directories), bare under a torchrun that names no
    rendezvous (a static one: its ranks each resolve the directory and must agree)."""
    import os
    import time

    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        job = f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    elif env.get("SLURM_JOB_ID"):
        job = f"slurm-{env['SLURM_JOB_ID']}"
    else:
        rdzv = env.get("TORCHELASTIC_RUN_ID")
        started = time.strftime("%Y-%m-%d_%H-%M-%S")
        if rdzv is None:
            return f"{started}-{os.getpid()}"
        return f"torchrun-{rdzv}" if rdzv != "none" else started
    step = env.get("SLURM_STEP_ID", "")
    # the batch script itself has no step id (or SLURM's "batch" number); step 0 keeps the plain name
    return f"{job}.{step}" if step.isdigit() and 0 < int(step) < 0xFFFFFFF0 else job


def train_run_id(_root_: DictConfig) -> str:
    """runs/<name>/<this>: with trainer.resume=auto outside SLURM, the settings' own name
    (resume.rerun_dir_name: a rerun resumes); else run_id (the SLURM job's id, stable across
    requeues; torchrun's id or the start time: trainer.resume=never starts a fresh directory)."""
    from omegaconf import OmegaConf

    from resnet_repro.training.resume import rerun_dir_name

    try:
        job = OmegaConf.masked_copy(_root_, [k for k in _root_ if k != "hydra"])
        cfg = to_dataclass(job)
    except Exception:  # a bad config: the command fails on it with its own message right after
        return run_id()
    return rerun_dir_name(cfg) or run_id()


def collision_message(swept: list[str]) -> str:
    return (
        f"sweeping {', '.join(swept)} (run control, left out of job directory names) would put every "
        "job in one directory; name the jobs by number: 'hydra.sweep.subdir=${hydra.job.num}_"
        "${hydra.job.override_dirname}'"
    )


def shows_hydra_node_only(args: list[str]) -> bool:
    """Whether `args` ask Hydra to print only its own node (`--cfg hydra`, `-c hydra`, `-chydra`)."""
    flag_args = split_hydra_args(args).flag_args
    for i, arg in enumerate(flag_args):
        name, attached = hydra_flag(arg) or ("", None)
        following = flag_args[i + 1] if i + 1 < len(flag_args) else None
        if name == "--cfg" and (attached if attached is not None else following) == "hydra":
            return True
    return False


# Hydra's own command-line flags (hydra/_internal/utils.py get_args_parser)
HYDRA_FLAGS = (
    "--help",
    "--hydra-help",
    "--version",
    "--cfg",
    "--resolve",
    "--package",
    "--run",
    "--multirun",
    "--shell-completion",
    "--config-path",
    "--config-name",
    "--config-dir",
    "--experimental-rerun",
    "--info",
)
# the long names of Hydra's short flags
HYDRA_SHORT = {
    "-h": "--help",
    "-c": "--cfg",
    "-p": "--package",
    "-r": "--run",
    "-m": "--multirun",
    "-sc": "--shell-completion",
    "-cp": "--config-path",
    "-cn": "--config-name",
    "-cd": "--config-dir",
    "-i": "--info",
}
HYDRA_FLAGS += tuple(HYDRA_SHORT)


# Hydra's flags whose value is the next argument unless attached (--cfg=job, -cjob)
HYDRA_VALUED = (
    "--cfg",
    "--package",
    "--config-path",
    "--config-name",
    "--config-dir",
    "--experimental-rerun",
)
# --info's optional value
HYDRA_INFO = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
# the flags of which Hydra takes one at a time
HYDRA_MODES = ("--run", "--multirun", "--cfg", "--info", "--shell-completion")
# the flags under which Hydra composes the command's own config from its overrides (the others
# show help, compose another config, or complete a shell's words)
COMPOSING_FLAGS = frozenset(("--multirun", "--run", "--cfg", "--resolve", "--package", "--info"))


def hydra_flag(arg: str) -> tuple[str, str | None] | None:
    """(Hydra's flag by its long name, its attached value) for a dash argument Hydra's argparse
    takes (an unambiguous abbreviation `--res` too); None for any other argument."""
    if arg.startswith("--"):
        name, eq, value = arg.partition("=")
        found = [f for f in HYDRA_FLAGS if f.startswith("--") and f.startswith(name)]
        if name in HYDRA_FLAGS or len(found) == 1:
            return (name if name in HYDRA_FLAGS else found[0]), (value if eq else None)
        return None
    if arg.startswith("-"):
        for short in sorted(HYDRA_SHORT, key=len, reverse=True):  # -cn before -c
            if arg.startswith(short):
                attached = arg[len(short) :].removeprefix("=")
                return HYDRA_SHORT[short], attached or None
    return None


class HydraArgs(NamedTuple):
    flags: set[str]  # Hydra's flags given, by their long names
    flag_args: list[str]  # the arguments that give them, with their values, in order
    overrides: list[str]


def split_hydra_args(args: list[str]) -> HydraArgs:
    """A command line's Hydra flags apart from its overrides."""
    split = HydraArgs(set(), [], [])
    args = list(args)
    while args:
        arg = args.pop(0)
        flag = hydra_flag(arg)
        if flag is None:
            split.overrides.append(arg)
            continue
        name, attached = flag
        split.flags.add(name)
        split.flag_args.append(arg)
        takes_next = name in HYDRA_VALUED or (name == "--info" and bool(args) and args[0] in HYDRA_INFO)
        if attached is None and args and takes_next:
            split.flag_args.append(args.pop(0))
    return split


def refuse_unknown_options(
    args: list[str], command: str, own: Sequence[str] = (), hydra_flags: bool = True
) -> None:
    """A dash option neither Hydra (where Hydra parses the command line: `hydra_flags`) nor the
    command knows (`--nodecode`): one line naming it and the closest known one, not Hydra's usage
    text or an override's parse error."""
    import difflib

    for arg in args:
        flag = arg.split("=", 1)[0]
        if not flag.startswith("-") or flag in own or (hydra_flags and hydra_flag(arg) is not None):
            continue
        known = [*own, *(f for f in HYDRA_FLAGS if f.startswith("--") and hydra_flags)]
        close = difflib.get_close_matches(flag, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        fail(f"unknown option {flag}{hint} (see `{PROG} {command} --help`)")


def hydra_command(
    task: Callable[[DictConfig], object],
    args: list[str],
    command: str,
    help_text: str = "",
    check_point: Callable[[RootConfig, DictConfig], None] | None = None,
) -> None:
    """Run `task` under hydra.main with `args` as the command-line overrides; `help_text`: what
    `<command> --help` says above the config groups; `check_point(cfg, launcher)`: the checks
    every point of a `-m` sweep passes before its first job starts (a UserError refuses the sweep)."""
    import hydra
    from omegaconf import OmegaConf

    from resnet_repro.cluster import distributed

    register_configs()
    refuse_unknown_options(args, command)
    flags, flag_args, overrides = split_hydra_args(args)
    modes = flags & set(HYDRA_MODES)
    if len(modes) > 1:  # Hydra's rule, which it raises as a ValueError (a traceback)
        fail(f"{' and '.join(sorted(modes))} cannot be given together: only one of {', '.join(HYDRA_MODES)}")
    if "--resolve" in flags and not flags & {"--cfg", "--help"}:  # Hydra's rule, a traceback too
        fail(f"--resolve shows the config only with --cfg: `{PROG} {command} --cfg job --resolve ...`")
    if "--resolve" in flags and shows_hydra_node_only(args):
        fail(
            "--cfg hydra cannot be shown with --resolve (hydra.run.dir names the job's `name`, which "
            f"Hydra's node alone lacks); use `{PROG} {command} --cfg all --resolve`"
        )
    try:
        check_override_keys(args, groups=[d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()])
        _compose_before_launch(args, command, check_point)
    except UserError as e:
        fail(str(e))
    for line in deprecation_warnings(args):
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    swept = sweep_collisions(args) if "--multirun" in flags else []
    if swept and not any(a.startswith("hydra.sweep.subdir=") for a in args):
        fail(collision_message(swept))
    # a training run's directory is named after its settings (a rerun resumes it); the other
    # commands' after the start time
    if command == "train":
        memo: dict[str, str] = {}  # one value per process, as use_cache (refused with _root_) would

        def memoized_run_id(_root_: DictConfig) -> str:
            if "id" not in memo:
                memo["id"] = train_run_id(_root_)
            return memo["id"]

        OmegaConf.register_new_resolver("run_id", memoized_run_id, replace=True)
    else:
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True, replace=True)
    _register_help(help_text)
    try:
        rank = distributed.detect().rank
    except UserError as e:
        fail(str(e))
    extra: list[str] = []
    if rank != 0:  # only rank 0 writes Hydra's config copy and log file into the run directory
        extra = ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    elif command == "train" and not any(a.startswith("hydra.output_subdir=") for a in args):
        from resnet_repro.training.metrics import LAUNCH_HYDRA_DIR

        extra = [f"hydra.output_subdir={LAUNCH_HYDRA_DIR}"]  # .hydra/ once the run goes on there
    # every override, then the flags: Hydra's parser takes the overrides as one run of arguments
    # (`name=eval --cfg job checkpoint=X` was "unrecognized arguments: checkpoint=X"), and a bare
    # --info (its value optional) must not take an override for its value
    sys.argv = [f"{PROG} {command}", *extra, *overrides, *flag_args]

    def guarded(cfg: DictConfig) -> object:
        """The task, with a file of the user's that cannot be used (unreadable, a file where a
        folder belongs) as one line, not Hydra's traceback."""
        try:
            return task(cfg)
        except OSError as e:
            line = file_error_line(e)
            if line is None:
                raise
            fail(line)

    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(guarded)()


def _compose_before_launch(
    args: list[str], command: str, check_point: Callable[[RootConfig, DictConfig], None] | None
) -> None:
    """Compose the command's (first) job before Hydra runs it, so that a composition error is one
    line and exit 2, as everywhere else, not Hydra's multi-line report and exit 1; for a sweep with
    `check_point`, compose and check every point, so that a bad value in its last point is refused
    before the first one trains. Where Hydra only shows the config (--cfg, --resolve, --package,
    --info) each job is composed, so that an error is the same line; where it shows help or composes
    another config (--help, --config-name, ...) Hydra reports."""
    from resnet_repro.planning.plan import expand_sweep

    flags, _, overrides = split_hydra_args(args)
    if flags - COMPOSING_FLAGS:
        return
    multirun = "--multirun" in flags
    jobs = list(expand_sweep(overrides, multirun))
    if not jobs:
        return
    if flags & {"--cfg", "--info"}:  # Hydra shows the config and runs nothing
        with _composer() as compose_one:
            for number, job in enumerate(jobs, start=1):
                with naming_the_point(jobs, number):
                    compose_one(job)
        return
    if multirun and check_point is not None:
        _check_every_point(jobs, check_point)
        return
    first = jobs[0]
    dcfg = _compose(first)
    if command == "train" and not multirun:  # Hydra makes the run directory: a traceback if it cannot
        from resnet_repro.planning.rehearse_checks import real_run_dir
        from resnet_repro.training.resume import run_dir_problem

        run_dir = real_run_dir(first, _job_config(dcfg), multirun=False)
        problem = None if run_dir is None else run_dir_problem(run_dir)
        if problem is not None:
            raise UserError(problem)


def _check_every_point(jobs: list[list[str]], check_point: Callable[[RootConfig, DictConfig], None]) -> None:
    """Each point of a sweep composed and checked (`check_point(cfg, launcher)`); the first that
    fails is refused, named by the overrides that set it apart from the other points, or, where
    every point fails for the same reason (a value they share), as every point. A point that
    another machine runs (submitit's SLURM launcher) and whose interpolation only fails here
    (`${oc.env:VAR}` of the compute node's variable) is left to its job."""
    from resnet_repro.planning.rehearse_checks import runs_elsewhere

    first: tuple[int, UserError] | None = None
    every_point_alike = True
    with _composer() as compose_one:
        for number, job in enumerate(jobs, start=1):
            try:
                dcfg = compose_one(job)
                launcher = dcfg.hydra.launcher
                try:
                    cfg = _job_config(dcfg, blank_missing_root=False)  # a missing data.root: refused
                except UnresolvedInterpolation:
                    if runs_elsewhere(launcher):
                        continue
                    raise
                check_point(cfg, launcher)
            except UserError as e:
                if first is None:
                    first = (number, e)
                    every_point_alike = number == 1
                elif str(e) != str(first[1]):
                    every_point_alike = False
            else:
                every_point_alike = False
            if first is not None and not every_point_alike:
                break  # the first refused point is the one to name
    if first is None:
        return
    number, error = first
    if len(jobs) == 1:
        raise error
    where = f"every sweep point ({len(jobs)})" if every_point_alike else sweep_point(jobs, number)
    raise UserError(f"{where}: {error}; no point was started") from error


def sweep_point(jobs: list[list[str]], number: int) -> str:
    """Point `number` (from 1) of a sweep's `jobs` in words, with the overrides that set it apart."""
    shared = set.intersection(*(set(job) for job in jobs))
    own = " ".join(o for o in jobs[number - 1] if o not in shared)
    return f"sweep point {number} of {len(jobs)}" + (f" ({own})" if own else "")


@contextlib.contextmanager
def naming_the_point(jobs: list[list[str]], number: int) -> Iterator[None]:
    """A UserError raised inside, for a sweep of several points, names point `number` first."""
    try:
        yield
    except UserError as e:
        if len(jobs) == 1:
            raise
        raise UserError(f"{sweep_point(jobs, number)}: {e}") from e


def record_failure(run_dir: Path, message: str) -> None:
    """A failed sweep point's reason, left in its directory (error.txt) for `resnet-repro report`."""
    if _is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        from resnet_repro.checkpoint import write_text_atomic

        write_text_atomic(run_dir / "error.txt", message + "\n")  # never half a reason


def _is_main_process() -> bool:
    from resnet_repro.cluster import distributed

    try:
        return distributed.detect().is_main
    except UserError:
        return True


def _compose(job: list[str]) -> DictConfig:
    """One job's config as Hydra composes it (with its `hydra` node); a composition error (an
    unknown group option, a value of the wrong type, an override that does not parse) as a
    one-line UserError."""
    with _composer() as compose_one:
        return compose_one(job)


@contextlib.contextmanager
def _composer() -> Iterator[Callable[[list[str]], DictConfig]]:
    """`_compose` for many jobs: Hydra initialized once for all of them (a fifth less time each)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    def compose_one(job: list[str]) -> DictConfig:
        try:
            return compose(config_name="config", overrides=job, return_hydra_config=True)
        except HydraException as e:
            raise UserError(hydra_error_line(e)) from e

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            yield compose_one
    finally:
        GlobalHydra.instance().clear()


def compose_jobs(args: list[str]) -> list[tuple[list[str], RootConfig, DictConfig]]:
    """The jobs of a command line (`-m`: each job of the sweep), composed as `train` composes them
    and converted to dataclasses (an unset data.root is left empty: the caller decides), each with
    the Hydra launcher it composed with (`hydra.launcher`). A sweep point that does not compose is
    refused by its number (`naming_the_point`)."""
    from resnet_repro.planning.plan import expand_sweep

    flags, _, overrides = split_hydra_args(args)
    multirun = "--multirun" in flags
    register_configs()
    check_override_keys(overrides, groups=[d.name for d in Path(CONF_DIR).iterdir() if d.is_dir()])
    jobs = list(expand_sweep(overrides, multirun))
    composed = []
    with _composer() as compose_one:
        for number, job in enumerate(jobs, start=1):
            with naming_the_point(jobs, number):
                dcfg = compose_one(job)
                launcher = dcfg.hydra.launcher
                composed.append((job, _job_config(dcfg), launcher))
    return composed


def _job_config(dcfg: DictConfig, blank_missing_root: bool = True) -> RootConfig:
    """A composed job's config as the dataclass, without Hydra's node (taken out of `dcfg`); an
    unset data.root left empty (the caller decides), or refused as `train` refuses it."""
    from omegaconf import OmegaConf, open_dict

    with open_dict(dcfg):
        del dcfg["hydra"]
    if blank_missing_root and OmegaConf.is_missing(dcfg.data, "root"):
        dcfg.data.root = ""
    return to_dataclass(dcfg)
