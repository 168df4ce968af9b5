"""Who am I in the job: DistEnv from torchrun, SLURM or a single process; init, teardown, reductions.

Everything that knows about torch.distributed lives here; the rest of the code receives a DistEnv
and asks `is_main`.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
import signal
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from resnet_repro.cluster import slurm
from resnet_repro.config import UserError

T = TypeVar("T")

TORCHRUN_RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
TORCHRUN_VARS = (*TORCHRUN_RANK_VARS, "MASTER_ADDR", "MASTER_PORT")
SLURM_VARS = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS", "SLURM_JOB_NODELIST")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm
    local_world_size: int | None = None  # processes on this node sharing its GPUs, where the launcher says

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# set in the environment of workers that launch_local starts: their agent is resnet-repro itself
LOCAL_AGENT_VAR = "RESNET_REPRO_LOCAL_AGENT"
FORWARDED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
SRUN_FORM = "srun --ntasks-per-node=<GPUs per node> resnet-repro train ... (scripts/slurm/*.sbatch)"


def _refuse_torchrun_in_srun(env: Mapping[str, str]) -> None:
    """`srun torchrun ...`: SLURM signals every process of the step, and torchrun's agent dies of
    the time-limit warning (USR1; it handles only TERM, INT, HUP and QUIT), taking the workers with
    it before they save. torchrun outside an srun step (a workstation, the batch shell) is fine."""
    if env.get("TORCHELASTIC_RUN_ID") and not env.get(LOCAL_AGENT_VAR) and slurm.in_srun_step(env):
        job, step = env.get("SLURM_JOB_ID", "?"), env["SLURM_STEP_ID"]
        raise UserError(
            f"torchrun inside an srun step (SLURM job {job}, step {step}) is not "
            "supported: SLURM's USR1 time-limit warning kills torchrun's agent before the workers save; "
            f"start one task per GPU instead: {SRUN_FORM}"
        )


def detect(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables. torchrun wins over SLURM (torchrun inside an allocation)."""
    env = os.environ if environ is None else environ
    present = [v for v in TORCHRUN_RANK_VARS if v in env]
    if present:
        missing = [v for v in TORCHRUN_VARS if v not in env]
        if missing:
            raise UserError(
                f"partial torchrun environment: {', '.join(present)} set but {', '.join(missing)} missing"
            )
        _refuse_torchrun_in_srun(env)
        return DistEnv(
            rank=_whole(env, "RANK"),
            local_rank=_whole(env, "LOCAL_RANK"),
            world_size=_whole(env, "WORLD_SIZE"),
            master_addr=env["MASTER_ADDR"],
            master_port=_whole(env, "MASTER_PORT"),
            source="torchrun",
            local_world_size=_whole(env, "LOCAL_WORLD_SIZE") if env.get("LOCAL_WORLD_SIZE") else None,
        )
    # Only inside an `srun` step is each process one task of the job: srun sets SLURM_STEP_NUM_TASKS.
    # The batch shell of an sbatch job (which may also carry SLURM_PROCID=0 and SLURM_NTASKS=8) is a
    # single process that may launch its own workers.
    if "SLURM_PROCID" in env and _whole(env, "SLURM_STEP_NUM_TASKS", default="1") > 1:
        missing = [v for v in SLURM_VARS if v not in env]
        if missing:
            raise UserError(f"partial SLURM environment: {', '.join(missing)} missing under srun")
        return DistEnv(
            rank=_whole(env, "SLURM_PROCID"),
            local_rank=_whole(env, "SLURM_LOCALID"),
            world_size=_whole(env, "SLURM_STEP_NUM_TASKS"),
            master_addr=env.get("MASTER_ADDR") or slurm.rendezvous_host(env),
            master_port=_whole(env, "MASTER_PORT", default=str(slurm.rendezvous_port(env))),
            source="slurm",
        )
    return DistEnv()


def _whole(env: Mapping[str, str], name: str, default: str | None = None) -> int:
    """An environment variable that must hold a whole number (a rank, a size, a port), or one line;
    `default` where it is unset or empty."""
    value = (env.get(name) or default) if default is not None else env[name]
    if not value.strip().isdigit():
        raise UserError(f"{name}={value!r} in the environment is not a whole number (rank, count, port)")
    return int(value)


def local_workers(nproc: int, env: DistEnv) -> bool:
    """Whether the CLI starts `trainer.nproc` local workers itself: only a single process does.
    Under srun or torchrun the launcher's processes are the world, and trainer.nproc > 1 there
    is refused: two nodes with one srun task each trained 2 ranks of 4 times the batch instead."""
    if env.source == "single":
        return nproc > 1
    if nproc > 1:
        raise UserError(
            f"trainer.nproc={nproc} under {env.source}, which started {env.world_size} processes itself: "
            "one process per GPU comes from the launcher (srun --ntasks-per-node=<GPUs>, torchrun "
            "--nproc-per-node=<GPUs>); drop trainer.nproc, or start resnet-repro once per node outside it"
        )
    return False


def pick_device(requested: str, env: DistEnv) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but CUDA is not available on this machine; use auto or cpu")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    gpus = torch.cuda.device_count()
    # every process sees the same GPUs only where nothing bound them per rank (a wrapper exporting
    # CUDA_VISIBLE_DEVICES=$LOCAL_RANK gives each its own, then local_rank % 1 picks it)
    shared = "CUDA_VISIBLE_DEVICES" not in os.environ
    if shared and env.local_world_size is not None and env.local_world_size > gpus:
        raise UserError(
            f"{env.local_world_size} processes on this node but {_gpus(gpus)}: two ranks on one GPU, "
            "which NCCL refuses; start one process per GPU (torchrun --nproc-per-node)"
        )
    index = env.local_rank % gpus
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _gpus(count: int) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{count} visible GPU{'s' if count != 1 else ''}" + (
        f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    )


def local_launch_check(
    nproc: int, requested: str, gpus: int | None = None, cores: int | None = None
) -> str | None:
    """Before `trainer.nproc` local workers start: more than the visible GPUs is refused (two ranks
    on one GPU fail in NCCL's first collective); more than this process's CPU cores on the CPU is
    the warning returned (each worker holds a model and its data pipeline: slow, and 64 of them
    fill the memory of a small machine without a word). `gpus`, `cores`: this machine's unless given."""
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cores is None:
        cores = len(os.sched_getaffinity(0))
    if requested != "cpu" and gpus > 0:
        if nproc > gpus:
            raise UserError(
                f"trainer.nproc={nproc} but this machine has {_gpus(gpus)}: two ranks on one GPU, "
                f"which NCCL refuses; set trainer.nproc to at most {gpus}"
            )
        return None
    if nproc > cores:
        return (
            f"trainer.nproc={nproc} processes on {cores} CPU core{'s' if cores != 1 else ''}: each holds "
            "a model and a data pipeline, so this runs slowly and may run out of memory"
        )
    return None


def init(env: DistEnv, device: torch.device, timeout_s: int) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPU). A rank that stops answering fails the
    collectives of the others after `timeout_s` instead of hanging them forever."""
    if not env.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )


def teardown() -> None:
    if dist.is_initialized():
        # a DDP module kept only by a reference cycle would otherwise be freed by a later GC, after
        # destroy_process_group, and could drop the last reference to a gloo process group while
        # holding the GIL (torch 2.11: its destructor then waits for gloo's thread, which waits
        # for the GIL): free such modules while the group still lives
        gc.collect()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(env: DistEnv, values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns the input unchanged for a single process)."""
    if env.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_buffers(env: DistEnv, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: DDP syncs them only at the
    start of each forward, so after the last step each rank holds its own."""
    if env.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_object(env: DistEnv, obj: object) -> object:
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(env: DistEnv, obj: T) -> list[T]:
    """Every rank's `obj`, in rank order (a one-element list for a single process)."""
    if not env.distributed:
        return [obj]
    objects: list[T] = [obj] * env.world_size
    dist.all_gather_object(objects, obj)
    return objects


def all_or_none(env: DistEnv, fn: Callable[[], T]) -> T:
    """fn() on every rank; a UserError on any rank is raised on all of them (naming the rank), so
    no rank is left waiting in the next collective until the timeout while another has exited."""
    value, error = None, None
    try:
        value = fn()
    except UserError as e:
        error = str(e)
    if env.distributed:
        errors: list[str | None] = [None] * env.world_size
        dist.all_gather_object(errors, error)
        failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
        if failed:
            rank, message = failed[0]
            raise UserError(message if rank == env.rank or rank == 0 else f"(rank {rank}) {message}")
    elif error is not None:
        raise UserError(error)
    return value  # type: ignore[return-value]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkersSignalled(Exception):
    """A stop signal reached the process that launched the local workers (`trainer.nproc=N`); the
    workers' own stop (checkpoint, decision, preempted.json) is in the run directory."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def launch_local(nproc: int, fn: Callable[..., T], *args: object, what: str = "training") -> dict[int, T]:
    """Run fn(*args) in `nproc` local worker processes through torch.distributed.elastic.

    The workers see torchrun's variables (RANK, WORLD_SIZE, ...), so `detect` treats them exactly
    like a torchrun launch. If one worker dies, the agent stops the others and this raises, naming
    the `what` worker, its rank and exit code; the worker has said why in one line (a UserError) or
    its own way (a crash), so the agent's traceback of the exit, which adds nothing, is not logged.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the agent's folder for the workers' error files; left to torch, it would stay in /tmp
    agent_dir = tempfile.TemporaryDirectory(prefix="resnet-repro-agent-", ignore_cleanup_errors=True)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        run_id=f"resnet-repro-{os.getpid()}",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=agent_dir.name),
    )
    os.environ[LOCAL_AGENT_VAR] = str(os.getpid())  # the workers' agent is this process, not torchrun
    sets_threads = "OMP_NUM_THREADS" not in os.environ
    if sets_threads:  # the spawned workers inherit it (torch's agent passes it on too)
        os.environ["OMP_NUM_THREADS"] = str(worker_threads(nproc))
    # torch's agent sets its own handler for these (TORCHELASTIC_SIGNALS_TO_HANDLE) and leaves it
    # there: given back with ours, as a local sweep's next point runs in this process
    previous = _handlers(os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT"))
    previous.update({sig: signal.signal(sig, _forward_to_workers) for sig in FORWARDED_SIGNALS})
    agent_log = logging.getLogger("torch.distributed.elastic")
    agent_level = agent_log.level
    agent_log.setLevel(logging.CRITICAL)
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as e:
        failures = ", ".join(f"rank {r} exit code {f.exitcode}" for r, f in sorted(e.failures.items()))
        raise UserError(f"a {what} worker failed ({failures}); see its output above") from e
    except SignalException as e:
        # SIGTERM (a cancel, a time limit, a preemption) reached this launcher: torch's agent has
        # passed it on to the workers and waited for them (up to 30 s), and they saved and decided
        _close_rendezvous(e)
        raise WorkersSignalled(e.sigval.name) from e
    finally:
        agent_log.setLevel(agent_level)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.environ.pop(LOCAL_AGENT_VAR, None)
        if sets_threads:
            os.environ.pop("OMP_NUM_THREADS", None)
        agent_dir.cleanup()


def worker_threads(nproc: int) -> int:
    """Intra-op threads for each of `nproc` local workers: the CPUs this process may use, shared out
    (at least one each). Left to torch, every worker starts a thread per CPU, and nproc workers on
    as many cores oversubscribe them (a 3-epoch demo run of trainer.nproc=2 on 2 cores: 1.8x slower);
    torchrun sets one per worker (its OMP_NUM_THREADS=1 default). A user's OMP_NUM_THREADS wins."""
    return max(1, len(os.sched_getaffinity(0)) // nproc)


def _handlers(names: str) -> dict[signal.Signals, Any]:
    """The handlers now set for the comma-separated signal `names` (those Python can set again)."""
    signals = [getattr(signal, name.strip(), None) for name in names.split(",")]
    found = {sig: signal.getsignal(sig) for sig in signals if isinstance(sig, signal.Signals)}
    return {sig: handler for sig, handler in found.items() if handler is not None}


def _close_rendezvous(stopped: BaseException) -> None:
    """Close the rendezvous torch's launch left open when a signal stopped its agent (so that a
    restarted agent could join it again; this launcher never restarts one). Left open, its heartbeat
    thread ran on until the handler was collected; where that happened on the heartbeat thread
    itself, its finalizer joined its own thread and the process printed a traceback ("cannot join
    current thread") into a correct stop's log. The handler is found in the frames the exception
    passed through (torch's launch_agent keeps it in its worker spec)."""
    import traceback

    from torch.distributed.elastic.rendezvous import RendezvousHandler

    handlers = {
        id(value): value
        for frame, _ in traceback.walk_tb(stopped.__traceback__)
        for value in (*frame.f_locals.values(), getattr(frame.f_locals.get("spec"), "rdzv_handler", None))
        if isinstance(value, RendezvousHandler)
    }
    for handler in handlers.values():
        try:
            handler.shutdown()  # stops the heartbeat thread from this one, then closes the rendezvous
        except Exception:  # noqa: BLE001 - the stop's own outcome matters more than a clean close
            pass


def _worker_pids(parent: int) -> list[int]:
    """The spawned worker processes of `parent` (multiprocessing's spawn children; not its resource
    tracker, which a USR1 would kill)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"--multiprocessing-fork" in cmdline and b"spawn_main" in cmdline:
            pids.append(int(entry))
    return pids


def _forward_to_workers(signum: int, frame: object) -> None:
    """The launching process passes SLURM's time-limit warning (USR1) or submitit's USR2 on to its
    workers instead of dying of it (the default action) and taking them down before they save."""
    for pid in _worker_pids(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
