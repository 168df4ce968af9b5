"""Whether and from where a run resumes, and whether a checkpoint may continue this run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from resnet_repro.cluster import slurm
from resnet_repro.config import RootConfig, UserError
from resnet_repro.training.run_state import TRAINING_KEYS, job_shape
from resnet_repro.training.schedule import resume_fields
from resnet_repro.training.summary import Derived


def resume_path(cfg: RootConfig, run_dir: Path) -> Path | None:
    mode = cfg.trainer.resume
    if mode == "never":
        return None
    if mode == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        for link in (last.parent, last):  # checkpoints/ or last.pt on storage that is gone
            if link.is_symlink() and not link.exists():
                raise UserError(
                    f"{link} is a link to {os.readlink(link)}, which does not exist (storage unmounted or "
                    "purged?): make it reachable to resume, or pass trainer.resume=never to start afresh"
                )
        if last.exists() and not last.is_file():
            raise UserError(f"{last} is not a file (a run's checkpoint); move it aside to start afresh")
        return last if last.is_file() else None
    path = Path(mode).expanduser()
    if not path.is_file():
        raise UserError(f"trainer.resume={mode}: no such checkpoint file")
    return path


def _flat(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# What a run *is*: a checkpoint trained with other values of these is another experiment, and
# continuing it under this run's name would describe weights that were never trained this way
# (e.g. two `srun` steps of a seed loop sharing a run directory). Leaves not listed (data.root,
# backend, threads, logging, max_norm, early stopping, checkpoint cadence) may change on resume.
IDENTITY_KEYS = (
    "trainer.seed",
    "trainer.precision",
    "trainer.ema",
    "model",
    "regularization",
    "data.name",
    "data.train_split",
    "data.eval_split",
    "data.image_size",
    "data.crop_ratio",
    "data.augment",
    "data.normalization",
    "data.exclude_files",
    "data.subset",
    "data.holdout.size",
    "data.holdout.seed",
    "data.holdout.stats_from",
    # the numbers that drive the LR plateau, early stopping and best.pt: another image size
    # schedule, evaluation cap or selection split makes the saved plateau/early-stop state another run's
    "data.progressive",
    "data.max_eval_images",
    "trainer.select_on_test",
)
# model settings that change speed or memory, not the computation
IDENTITY_EXEMPT = ("model.channels_last",)


def _sections_flat(config: dict[str, Any]) -> dict[str, Any]:
    """The leaves of a config's sections (not its top-level plain values) by dotted key."""
    flat: dict[str, Any] = {}
    for section, node in config.items():
        if isinstance(node, dict):
            flat.update(_flat(node, f"{section}."))
    return flat


def _identity_keys(cfg: RootConfig) -> tuple[list[str], tuple[str, ...]]:
    """(keys, exempt leaves): what a checkpoint must share with this run to continue it."""
    keys = ["optim", *resume_fields(cfg.schedule.name), *IDENTITY_KEYS]
    if cfg.data.normalization != "published":  # data.mean / data.std are read only then
        return keys, (*IDENTITY_EXEMPT, "data.mean", "data.std")
    return [*keys, "data.mean", "data.std"], IDENTITY_EXEMPT


def _selected(values: dict[str, Any], keys: list[str], exempt: tuple[str, ...]) -> dict[str, Any]:
    return {
        k: v
        for k, v in values.items()
        if k not in exempt and any(k == key or k.startswith(key + ".") for key in keys)
    }


def resume_identity(cfg: RootConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with this run to continue it (the ones
    resume_config_changes compares), plus the experiment's name and its batch: a rerun of the same
    command has the same identity, so it is given the same run directory (commands/hydra_app.py)."""
    keys, exempt = _identity_keys(cfg)
    identity = _selected(_sections_flat(dataclasses.asdict(cfg)), keys, exempt)
    t = cfg.trainer
    # A step cap changes the steps per epoch, which a resume refuses: a capped smoke run and the
    # full run of the same command must not share a directory. Only when set, so that an uncapped
    # run keeps the directory name it had before the cap counted.
    capped = {"max_steps_per_epoch": t.max_steps_per_epoch} if t.max_steps_per_epoch is not None else {}
    # Clipping and early stopping change the numbers but may change on an explicit resume (a run
    # rescued from NaNs with a max norm): named here, not in the resume check, so that `train` and
    # `train stabilizer.max_norm=2` are two runs. Only when set, as the cap.
    st = cfg.stabilizer
    clipped = {"max_norm": st.max_norm} if st.max_norm is not None else {}
    stopping = {"early_stop": dataclasses.asdict(st.early_stop)} if st.early_stop.patience is not None else {}
    return {
        "name": cfg.name,
        "batch": [t.batch_size, t.global_batch],
        **capped,
        **clipped,
        **stopping,
        **identity,
    }


def resume_config_changes(saved: dict[str, Any], cfg: RootConfig) -> list[str]:
    """Settings that a resume would silently not honour, changed on this command line, as
    "key old -> new": the optimizer's and the LR schedule's (their state comes from the
    checkpoint: LR, momentum, weight decay, milestones, warm-up; with cosine also the length of
    the run), and the settings that make the run what it is (IDENTITY_KEYS)."""
    keys, exempt = _identity_keys(cfg)
    old_values = _sections_flat(saved)
    new_values = _selected(_sections_flat(dataclasses.asdict(cfg)), keys, exempt)
    changes = []
    for k in sorted(new_values):
        if k in old_values and old_values[k] != new_values[k]:
            changes.append(f"{k} {old_values[k]} -> {new_values[k]}")
    return changes


def rerun_id(cfg: RootConfig) -> str:
    """A training run's directory name outside SLURM: `cfg-` and a hash of the settings a
    checkpoint must share to continue the run (resume.resume_identity), so that the same command
    run again (after a stop, a crash or a reboot) finds its run and resumes it."""
    import hashlib

    text = json.dumps(resume_identity(cfg), sort_keys=True, default=str)
    return "cfg-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def rerun_dir_name(cfg: RootConfig) -> str | None:
    """The run directory's last part when the run's settings name it: `rerun_id` under
    trainer.resume=auto outside SLURM, so the same command run again finds its run; None where each
    start gets a directory of its own (a SLURM job's id, torchrun's id or the start time). `train`
    names its directory by this and `rehearse` checks the one it names."""
    env = os.environ
    if env.get("SLURM_JOB_ID") or env.get("SLURM_ARRAY_JOB_ID") or cfg.trainer.resume != "auto":
        return None
    return rerun_id(cfg)


def check_job_shape(state: dict[str, Any], path: Path, derived: Derived) -> str | None:
    """None when the checkpoint's job shape is this run's; a line for the log when only the world
    size changed (the global batch kept: every step reads the same images, data/sharding.py);
    otherwise a UserError (the LR schedule and the data position are counted in global batches
    and steps per epoch)."""
    job = state.get("job")
    now = job_shape(derived)
    if job is not None and not isinstance(job, dict):
        raise UserError(f"checkpoint {path}: its job record {job!r} is not readable (a world size, a batch)")
    if job is not None and job != now:
        diff = ", ".join(f"{k} {job[k]} -> {now[k]}" for k in now if job.get(k) != now[k])
        if any(job.get(k) != now[k] for k in now if k != "world_size"):
            raise UserError(
                f"checkpoint {path} belongs to a different job ({diff}); resume with the same global batch "
                "(trainer.global_batch) and data, or start a new run directory (trainer.resume=never or "
                "another hydra.run.dir)"
            )
        per_rank = f"{now['global_batch'] // job['world_size']} -> {now['global_batch'] // now['world_size']}"
        return (
            f"world size {job['world_size']} -> {now['world_size']} with the same global batch "
            f"{now['global_batch']}: the same images in every step; images per rank (and per BatchNorm) "
            f"{per_rank}"
        )
    return None


def check_resumable(
    state: dict[str, Any],
    path: Path,
    derived: Derived,
    cfg: RootConfig,
    normalization: tuple[list[float], list[float]] | None = None,
    classes: tuple[str, ...] | None = None,
) -> list[str]:
    """A checkpoint continues only the job it came from: the same global batch and steps per epoch
    (the LR schedule and the data position are counted in those), the same optimizer and schedule
    settings (their state comes from the checkpoint: a change would be ignored), and the same
    experiment (IDENTITY_KEYS, the normalization values in use and the training split's class
    names, where the checkpoint holds them: data.root may move, its classes may not). The world
    size may change with the global batch kept: every global batch holds the same images whatever
    the number of ranks (data/sharding.py); the change is returned as a line for the log (BatchNorm
    then normalizes over another per-rank batch).

    With trainer.resume_with_changes=true the setting differences are accepted and returned (for
    the log); the job's shape and the class count (the output layer) never are."""
    for key in TRAINING_KEYS:
        if key not in state:
            raise UserError(
                f"checkpoint {path} is not a training checkpoint of this tool (no {key!r}); "
                "to evaluate weights use `resnet-repro eval checkpoint=...`"
            )
    check_job_shape(state, path, derived)
    changes = resume_config_changes(state["config"], cfg) if isinstance(state.get("config"), dict) else []
    saved_norm = state.get("normalization")
    if normalization is not None and isinstance(saved_norm, dict):
        for name, values in zip(("mean", "std"), normalization, strict=True):
            old = [round(float(v), 6) for v in saved_norm.get(name, [])]
            new = [round(float(v), 6) for v in values]
            if old != new:
                changes.append(f"normalization {name} {old} -> {new}")
    saved_classes = state.get("classes")
    if classes is not None and isinstance(saved_classes, list):
        if len(saved_classes) != len(classes):  # not a setting: the model itself differs
            raise UserError(
                f"checkpoint {path} was trained on {len(saved_classes)} classes and this run's data has "
                f"{len(classes)} classes: another output layer, it cannot be continued; resume with the "
                "run's data (data.root, data.subset) or start a new run directory"
            )
        changed = class_change(saved_classes, classes)
        if changed:
            changes.append(changed)
    if changes and not cfg.trainer.resume_with_changes:
        raise UserError(
            f"checkpoint {path} was trained with other settings ({'; '.join(changes[:4])}"
            f"{'; ...' if len(changes) > 4 else ''}): it is another run (optimizer and schedule state "
            "would come from the checkpoint, ignoring the new values); resume with the run's settings, "
            "start a new run directory (trainer.resume=never or another hydra.run.dir), or set "
            "trainer.resume_with_changes=true to continue it anyway"
        )
    return changes


def class_change(trained: list[str], data: tuple[str, ...] | list[str]) -> str | None:
    """How the data's class names differ from a checkpoint's (`trained`: its outputs' names), as
    "classes [...] -> [...] (...)", or None when they are the same names in the same order."""
    if list(trained) == list(data):
        return None

    def shown(names) -> str:
        return (
            repr(list(names))
            if len(names) <= 4
            else f"[{', '.join(map(repr, names[:3]))}, ... ({len(names)})]"
        )

    if len(trained) != len(data):
        where = f"{len(trained)} classes -> {len(data)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(trained, data, strict=True)) if a != b)
        where = f"output {i}: {trained[i]!r} -> {data[i]!r}"
    return f"classes {shown(trained)} -> {shown(data)} ({where})"


# ------------------------------------------------------------------------------ run directory lock

LOCK_NAME = "run.lock"
# job states (or flags) of a job that may still write: its lock is live
LIVE_JOB_STATES = frozenset({"RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "STOPPED", "SIGNALING"})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _stale_because(
    holder: dict[str, Any], me: dict[str, Any], query: Callable[[str], tuple[slurm.JobView | None, str]]
) -> str | None:
    """Why the lock `holder` wrote is stale (its writer is gone), or None while it may be live.
    The SLURM job comes first: after a requeue the job's old pid may belong to another process."""
    job, host, pid = holder.get("job"), holder.get("host"), holder.get("pid")
    if job is not None and job == me["job"]:
        before, now = holder.get("restarts"), me.get("restarts")
        if before is None or now is None or before < now:
            return f"it is this SLURM job's own ({job}), from before a requeue"
        # the same job, never requeued since: another process of this very start (a second step)
    if host == me["host"] and isinstance(pid, int):
        if not _pid_alive(pid):
            return f"process {pid} on {host} is gone"
        return None
    if job is None or job == me["job"]:
        return None
    view, how = query(job)
    if view is None:  # a job purged from the controller (23.11+: an empty answer) no longer runs
        return f"SLURM no longer knows job {job}" if slurm.UNKNOWN_JOB in how else None
    if LIVE_JOB_STATES & set(view.states):
        return None
    return f"SLURM job {job} is {view.base or view.describe()}"


def _lock_owner(env: Mapping[str, str]) -> dict[str, Any]:
    """What a lock taken by this process records."""
    job = slurm.job_ref(env)
    # SLURM sets SLURM_RESTART_COUNT in a requeued job: a lock of the same job with a lower count
    # is from before the requeue, whatever its pid has become
    restarts = int(env.get("SLURM_RESTART_COUNT", "0") or 0) if job else None
    return {"job": job, "host": socket.gethostname(), "pid": os.getpid(), "restarts": restarts}


def run_dir_problem(run_dir: Path) -> str | None:
    """Why `run_dir` cannot be made or written, before anything starts there; None when it can."""
    from resnet_repro.checkpoint import folder_problem

    problem = folder_problem(run_dir, "run directory")
    return None if problem is None else f"{problem}; choose another hydra.run.dir"


def check_lock(
    run_dir: Path,
    me: dict[str, Any] | None = None,
    query: Callable[[str], tuple[slurm.JobView | None, str]] = slurm.query_job,
) -> str | None:
    """None when <run_dir>/run.lock is absent; why it is stale when its writer is gone; the
    UserError naming its holder when it may be live (what `train` would meet; `rehearse` asks too)."""
    path = run_dir / LOCK_NAME
    if path.is_symlink() and not path.exists():
        return f"it is a link to {os.readlink(path)}, which does not exist"
    if path.exists() and not path.is_file():
        raise UserError(
            f"{path} is not a file (the run directory's lock): remove it if no run is writing here"
        )
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as e:  # a lock this user may not read may be a live run's
        raise UserError(
            f"cannot read the lock {path} ({e.strerror or e}): it may be a live run's; use another "
            f"hydra.run.dir, or delete {path} if that run is gone"
        ) from e
    except ValueError:  # cut or empty: no holder to check
        holder = {}
    if not isinstance(holder, dict):  # not this tool's record (a bare pid): no holder to check
        holder = {}
    me = me if me is not None else _lock_owner(os.environ)
    stale = _stale_because(holder, me, query) if holder else "it is unreadable"
    if stale is None:
        who = ", ".join(f"{k} {holder.get(k)}" for k in ("job", "host", "pid"))
        raise UserError(
            f"run directory {run_dir} is held by another run ({who}; {path}): two jobs must not "
            f"write one run directory; use another hydra.run.dir, or delete {path} if that run "
            "is gone"
        )
    return stale


def acquire_run_lock(
    run_dir: Path,
    environ: Mapping[str, str] | None = None,
    query: Callable[[str], tuple[slurm.JobView | None, str]] = slurm.query_job,
) -> Path:
    """Take <run_dir>/run.lock (SLURM job, host, pid), so that two jobs never write one run
    directory. A lock whose writer is gone (a dead process on this host, this job before its
    requeue, a SLURM job that no longer runs) is taken over with a log line; a live one, or one
    that cannot be checked (another host, no job, SLURM unreachable), is refused naming its holder."""
    me = _lock_owner(os.environ if environ is None else environ)
    path = run_dir / LOCK_NAME
    run_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            stale = check_lock(run_dir, me, query)
            if stale is not None:  # None: its holder removed it meanwhile
                logging.getLogger("resnet_repro").info(f"taking over the stale lock {path}: {stale}")
                path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        return path
    raise UserError(f"could not take the lock {path}: other processes keep taking it")


def release_run_lock(path: Path | None) -> None:
    """Remove the lock when it is still this process's."""
    if path is None:
        return
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(holder, dict):
        return
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
