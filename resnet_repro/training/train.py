"""train(cfg): one worker per device. `_train` reads as the run's table of contents: prepare the
data, build the parts, resume, describe the run, run the epochs, finish. The step itself is in
loop.py, what a checkpoint holds in run_state.py, the evaluations in run_eval.py."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from resnet_repro import checkpoint
from resnet_repro.cluster import distributed
from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.cluster.preemption import Interrupts, after_preemption
from resnet_repro.config import (
    EVAL_PROTOCOLS,
    RootConfig,
    UserError,
    eval_protocols,
    files_as_user_errors,
    to_dataclass,
    validate,
)
from resnet_repro.data import progressive
from resnet_repro.data.selection import Normalization
from resnet_repro.evaluation.protocols import flips
from resnet_repro.models import build_model
from resnet_repro.training import disk_space
from resnet_repro.training.compiling import compile_for_shapes
from resnet_repro.training.ema import WeightEMA
from resnet_repro.training.loop import Parts, train_one_epoch
from resnet_repro.training.metrics import make_logger
from resnet_repro.training.optim import build_optimizer
from resnet_repro.training.resume import (
    acquire_run_lock,
    check_job_shape,
    check_resumable,
    release_run_lock,
    resume_path,
)
from resnet_repro.training.run_data import RunData, make_train_loader, prepare_data
from resnet_repro.training.run_eval import EvalSets, feed_model_selection, final_test_eval, selection_split
from resnet_repro.training.run_start import describe_run
from resnet_repro.training.run_state import RunState, job_shape
from resnet_repro.training.schedule import build_scheduler
from resnet_repro.training.stabilizers import EarlyStopper, NonFiniteError, NonFiniteGuard, chance_loss
from resnet_repro.training.step_plan import FirstImages, StepPlan
from resnet_repro.training.summary import Derived

log = logging.getLogger("resnet_repro")


def _configure_console(env: DistEnv, run_dir: Path) -> None:
    """Console output (Hydra's in the launching process; a plain one in spawned workers), plus
    <run_dir>/train.log, by rank 0 only, however the ranks were started (Hydra silences the others
    under torchrun and srun): a warning only one rank meets must reach rank 0 first."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    log.setLevel(logging.INFO if env.is_main else logging.ERROR)
    _close_train_log()  # an earlier job's, should one have been left
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s"))
        log.addHandler(handler)


def _close_train_log() -> None:
    """Detach and close train.log's: nothing after its run (a sweep's next job) writes there."""
    for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(old)
        old.close()


def train(cfg: RootConfig, run_dir: Path, rehearsal: StepPlan | None = None) -> dict[str, Any]:
    """Train in this process: a single process, or one rank of a torchrun / srun / local launch.
    `rehearsal`: train only the plan's steps, in its phase(s) (`resnet-repro rehearse`)."""
    env = distributed.detect()
    device = distributed.pick_device(cfg.trainer.device, env)
    _configure_console(env, run_dir)
    try:
        distributed.init(env, device, cfg.trainer.dist_timeout_s)
        # every rank uses rank 0's run directory (under torchrun each process composed its own, and
        # a start-time name can differ by a second): it decides where to resume from
        run_dir = Path(distributed.broadcast_object(env, str(run_dir)))
        if rehearsal is None:
            return _train(cfg, run_dir, env, device)
        return _rehearse(cfg, run_dir, env, device, rehearsal)
    finally:
        distributed.teardown()
        _close_train_log()


def _rehearse(
    cfg: RootConfig, run_dir: Path, env: DistEnv, device: torch.device, plan: StepPlan
) -> dict[str, Any]:
    """A rehearsal's phase(s), each a build of the run from nothing: the first trains every window
    of the step plan but the last and stops with last.pt; the second, whose parts know nothing of
    the first's but that checkpoint (trainer.resume=<it>), trains the last window and finishes
    like the real run. Each rank's peak memory in each launch goes to
    <run_dir>/rehearsal/peak_memory_rank<r>_<phase>.json."""
    from resnet_repro.training.metrics import peak_memory_mb

    result: dict[str, Any] = {}
    if plan.phase in ("first", "both"):
        # a rehearsal starts from scratch (trainer.resume=auto in a fresh run directory), even where
        # its directory is reused (hydra.run.dir given twice); a checkpoint path given is loaded as
        # the run would
        fresh = "never" if cfg.trainer.resume == "auto" else cfg.trainer.resume
        first = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, resume=fresh))
        result = _train(first, run_dir, env, device, dataclasses.replace(plan, phase="first"))
    if plan.phase in ("second", "both"):
        last = run_dir / "checkpoints" / "last.pt"
        resumed = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, resume=str(last)))
        result = _train(resumed, run_dir, env, device, dataclasses.replace(plan, phase="second"))
    out = run_dir / "rehearsal"
    out.mkdir(parents=True, exist_ok=True)
    memory = {"rank": env.rank, "device": str(device), "peak_memory_mb": peak_memory_mb(device.type)}
    (out / f"peak_memory_rank{env.rank}_{plan.phase}.json").write_text(json.dumps(memory) + "\n")
    distributed.barrier(env)
    return result


def train_worker(cfg_yaml: str, run_dir: str, rehearsal: dict[str, Any] | None = None) -> dict[str, Any]:
    """Entry point of a locally launched worker process (picklable: plain values in);
    `rehearsal`: a StepPlan's fields (see `train`)."""
    from omegaconf import OmegaConf

    cfg = to_dataclass(OmegaConf.create(cfg_yaml))
    plan = StepPlan(**rehearsal) if rehearsal is not None else None
    try:
        with files_as_user_errors():
            outcome = train(cfg, Path(run_dir), plan)
    except UserError as e:  # one line from the failing rank, not a traceback per rank
        print(f"resnet-repro: error: {e}", file=sys.stderr)
        with contextlib.suppress(OSError):  # the reason, for the launching process to report
            checkpoint.write_text_atomic(Path(run_dir) / "error.txt", f"{e}\n")  # never half a reason
        raise SystemExit(2) from None
    if outcome.get("preempted"):
        # torch's worker wrapper now waits for the agent to collect this result. An agent that got
        # the same SIGTERM (a cancel or a time limit signals every process of the job) is shutting
        # down instead and never does: it waits 30 s for the workers, as long as SLURM's usual
        # KillWait, and both die before the launcher can say how to resume. preempted.json holds
        # the outcome; leave soon whatever the agent does.
        _exit_soon(WORKER_EXIT_AFTER_STOP_S)
    return outcome


# seconds a stopped worker leaves its agent to collect its result before it exits on its own
WORKER_EXIT_AFTER_STOP_S = 3.0


def _exit_soon(delay_s: float) -> None:
    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(delay_s, leave)
    timer.daemon = True
    timer.start()


def check_device(cfg: RootConfig, device: torch.device) -> None:
    """What the config asks of the device that only the device can refuse."""
    if cfg.model.sync_bn and device.type != "cuda":
        raise UserError("model.sync_bn=true needs CUDA devices (SyncBatchNorm has no CPU implementation)")


def _build_model(
    cfg: RootConfig, num_classes: int, env: DistEnv, device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """(bare model, the module that runs: DDP-wrapped and/or compiled)."""
    check_device(cfg, device)
    torch.manual_seed(cfg.trainer.seed)  # identical initial weights on every rank
    net = build_model(cfg.model, num_classes, cfg.regularization).to(device)
    model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if env.distributed else net
    if device.type == "cuda":
        # the input shape is fixed within an epoch (training drops the partial last batch): let
        # cuDNN time its convolution algorithms once per shape and keep the fastest
        torch.backends.cudnn.benchmark = True
    if cfg.trainer.compile:
        model = compile_for_shapes(model, len(progressive.train_sizes(cfg.data, cfg.trainer.epochs)))
    return net, model


def _train(
    cfg: RootConfig, run_dir: Path, env: DistEnv, device: torch.device, plan: StepPlan | None = None
) -> dict[str, Any]:
    validate(cfg)
    lock = distributed.all_or_none(env, lambda: acquire_run_lock(run_dir) if env.is_main else None)
    try:
        return _train_locked(cfg, run_dir, env, device, plan)
    finally:
        release_run_lock(lock)


def _train_locked(
    cfg: RootConfig, run_dir: Path, env: DistEnv, device: torch.device, plan: StepPlan | None
) -> dict[str, Any]:
    data = prepare_data(cfg, env, device)
    parts = build_parts(
        cfg,
        data.derived,
        env,
        device,
        run_dir,
        norm=data.norm,
        checkpoints=True,
        classes=data.splits.train.classes,
    )
    # from here the process's signal handlers are the run's (its preemption watch) and so is its
    # train.log: a run that fails gives both back (a sweep's next point may run in this process)
    try:
        selection = selection_split(cfg, data.splits)
        needed = disk_space.files_needed_bytes(cfg, parts.state.net, selection is not None)
        room = (lambda: disk_space.check_free_space(run_dir, needed)) if env.is_main else (lambda: None)
        distributed.all_or_none(env, room)
        _resume(parts, cfg, run_dir, env, data)
        describe_run(parts, cfg, run_dir, env, data, selection)
        evals = EvalSets(cfg, data.splits, data.norm, env, device, data.batch)
        return _train_and_finish(parts, cfg, run_dir, data, evals, env, device, selection, plan)
    finally:
        parts.interrupts.close()
        parts.logger.close()


def _train_and_finish(
    parts: Parts,
    cfg: RootConfig,
    run_dir: Path,
    data: RunData,
    evals: EvalSets,
    env: DistEnv,
    device: torch.device,
    selection: str | None,
    plan: StepPlan | None,
) -> dict[str, Any]:
    """The epochs, then the final evaluation, or what a stop decides; a non-finite loss or a full
    disk on the way is the user's one line."""
    try:
        last = _run_epochs(parts, cfg, data, evals, env, device, selection, plan)
        if parts.interrupts.stopped_by is None and _long_final_evaluation(cfg, last):
            # a signal during the last epoch: stop before a long final evaluation, not in it
            parts.interrupts.stop_requested(parts.state.step, force_check=True)
        if parts.interrupts.stopped_by is not None:  # last.pt holds the position reached
            state = parts.state
            return after_preemption(cfg, env, run_dir, parts.interrupts, state.epoch, state.epoch_step)
        if plan is not None and plan.phase == "first":  # a rehearsal drops the process state here
            return {"rehearsed_to_step": parts.state.step}
        final = _finish(parts, cfg, run_dir, data, evals, last, env, device, selection)
        late = parts.interrupts.watch.received
        if late and env.is_main:
            log.warning(f"{late} arrived after the last epoch's training; the run finished first")
        return final
    except NonFiniteError as e:
        raise UserError(str(e)) from e
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        last = run_dir / "checkpoints" / "last.pt"
        then = (
            f"it resumes from {last}, the last checkpoint written whole"
            if last.is_file()
            else "no checkpoint was written yet, so it starts afresh"
        )
        raise UserError(
            f"no space left on the device of {e.filename or run_dir} ({e.strerror}) after step "
            f"{parts.state.step}: free some space and run the same command again; {then}"
        ) from e


def build_parts(
    cfg: RootConfig,
    derived: Derived,
    env: DistEnv,
    device: torch.device,
    run_dir: Path,
    norm: Normalization | None = None,
    checkpoints: bool = False,
    classes: tuple[str, ...] | None = None,
) -> Parts:
    """Model, optimizer, schedule, scaler and guards for a fresh run (training or a benchmark);
    `checkpoints`: rank 0 saves to <run_dir>/checkpoints (otherwise nothing is saved)."""
    t = cfg.trainer
    net, model = _build_model(cfg, derived.num_classes, env, device)
    optimizer = build_optimizer(cfg.optim, net, derived.global_batch)
    state = RunState(
        net=net,
        model=model,
        optimizer=optimizer,
        schedule=build_scheduler(
            cfg.schedule, cfg.stabilizer, optimizer, steps_per_epoch=derived.steps_per_epoch, epochs=t.epochs
        ),
        scaler=torch.amp.GradScaler(device.type, enabled=t.precision == "fp16"),
        early_stop=EarlyStopper(cfg.stabilizer.early_stop),
        config=cfg,
        job=job_shape(derived),
        normalization=norm,
        classes=classes,
        ema=WeightEMA(net, t.ema.decay) if t.ema.decay is not None else None,
    )
    return Parts(
        state=state,
        guard=NonFiniteGuard(
            cfg.stabilizer.nonfinite, cfg.stabilizer.max_skips, run_dir / "nonfinite_report.json"
        ),
        logger=make_logger(env.is_main, run_dir, cfg.logging),
        interrupts=Interrupts(cfg, env, device),
        ckpt_dir=run_dir / "checkpoints" if checkpoints and env.is_main else None,
    )


def _resume(parts: Parts, cfg: RootConfig, run_dir: Path, env: DistEnv, data: RunData) -> None:
    """Continue from trainer.resume's checkpoint when there is one; rank 0 decides (a node-local or
    stale view of the file system must not split the ranks)."""
    decided = distributed.all_or_none(env, lambda: resume_path(cfg, run_dir) if env.is_main else None)
    resume_from = distributed.broadcast_object(env, decided)
    if resume_from is None:
        torch.manual_seed(cfg.trainer.seed + env.rank)  # per-rank stream for dropout-like randomness
        parts.logger.start_afresh()  # an earlier launch's rows and events, if any, are not this run's
        return

    def load_resumable() -> tuple[dict[str, Any], list[str], str | None]:
        state = checkpoint.load(resume_from)
        norm = (data.norm.mean, data.norm.std)
        changes = check_resumable(state, resume_from, data.derived, cfg, norm, data.splits.train.classes)
        return state, changes, check_job_shape(state, resume_from, data.derived)

    saved, accepted_changes, shape_change = distributed.all_or_none(env, load_resumable)
    # every rank read last.pt itself: a stale network-file-system view must not split them
    seen = distributed.all_gather(env, checkpoint.fingerprint(saved))
    if any(f != seen[0] for f in seen):
        differ = ", ".join(f"rank {r}: {f}" for r, f in enumerate(seen) if f != seen[0])
        raise UserError(
            f"ranks read different contents of {resume_from} (rank 0: {seen[0]}; {differ}): a stale view "
            "of a network file system; run again once every node sees the same file"
        )
    if shape_change:
        log.info(f"resuming {resume_from} on another world size: {shape_change}")
    if accepted_changes:
        log.warning(
            f"resuming {resume_from} despite changed settings (trainer.resume_with_changes=true): "
            + "; ".join(accepted_changes)
        )
    try:
        parts.state.load_state_dict(saved)
    except (RuntimeError, ValueError, KeyError) as e:
        # torch's load_state_dict says "Error(s) in loading state_dict for ResNet:" and the
        # mismatches on the lines after it: the first of those is the one that says what differs
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        first = " ".join(lines[:2])[:300] if lines else type(e).__name__
        raise UserError(
            f"checkpoint {resume_from} does not fit this run's model or optimizer: {first}"
        ) from e
    state = parts.state
    if own_checkpoint(resume_from, run_dir):
        finals = [f"{cfg.data.eval_split}-{protocol}" for protocol in EVAL_PROTOCOLS]  # written again
        parts.logger.continue_from(state.epoch, state.step, finals)
    else:  # another run's checkpoint: the directory's own rows and events are not its history
        parts.logger.start_afresh()
    log.info(
        f"resumed from {resume_from}: epoch {state.epoch + 1}, step {state.step} "
        f"({state.epoch_step} into the epoch)"
    )


def own_checkpoint(path: Path, run_dir: Path) -> bool:
    """Whether `path` lies in `run_dir`'s own checkpoints/ folder (a link to scratch storage
    included), so that the run's rows and events before it are this run's history."""
    folder = run_dir / "checkpoints"
    try:
        return os.path.samefile(path.parent, folder)
    except OSError:  # either is gone
        return False


def _run_epochs(
    parts: Parts,
    cfg: RootConfig,
    data: RunData,
    evals: EvalSets,
    env: DistEnv,
    device: torch.device,
    selection: str | None,
    plan: StepPlan | None = None,
) -> dict[str, dict[str, Any]] | None:
    """Epochs until trainer.epochs, an early stop, or a preemption (parts.interrupts.stopped_by is
    then set). Returns the last epoch's evaluations; None when no epoch ended here.

    `plan` (a rehearsal): only its windows' steps are trained, each window ending its epoch; the
    position jumps to each window's start as if the steps before it had been trained."""
    state, last = parts.state, None
    pending = plan.windows(cfg, data.derived.steps_per_epoch) if plan is not None else None
    while state.epoch < cfg.trainer.epochs and state.stopped is None:
        steps = None
        if pending is not None:
            while pending and pending[0].end <= state.step:  # trained before a resume
                pending.pop(0)
            if not pending:
                break
            window = pending.pop(0)
            _jump(state, window.start, data.derived.steps_per_epoch)
            log.info(f"rehearsal: steps {window.start + 1}-{window.end} ({window.why})")
            steps = window.end - state.step
        epoch = state.epoch
        if state.epoch_metrics is not None:  # resumed after a stop on the epoch's last step
            train_metrics, state.epoch_metrics = state.epoch_metrics, None
            state.epoch, state.epoch_step, state.epoch_skipped = epoch + 1, 0, 0
        else:
            _seed_epoch(state, cfg, env)
            loader = make_train_loader(
                cfg,
                data.splits.train,
                env,
                device,
                epoch,
                skip_steps=state.epoch_step,
                norm=data.norm,
                steps=steps,
            )
            if plan is not None and plan.images_per_step is not None:
                loader = FirstImages(loader, plan.images_per_step)
            train_metrics = train_one_epoch(parts, loader, cfg, env, device)
            del loader
            if train_metrics is None:
                return None
        distributed.broadcast_buffers(env, state.net)  # rank 0's BatchNorm statistics everywhere
        last = evals.run(state.net)
        if state.ema is not None:  # the weight average beside the weights: "<split>-ema" rows
            last.update({f"{name}-ema": m for name, m in evals.run(state.ema.module).items()})
        _end_epoch(parts, cfg, epoch, train_metrics, last, selection, data.derived.num_classes)
        if state.stopped:
            log.warning(state.stopped)
            break
        if state.epoch < cfg.trainer.epochs and parts.interrupts.stop_requested(state.step, force_check=True):
            return None
    return last


def _jump(state: RunState, step: int, steps_per_epoch: int) -> None:
    """Move the data position and the LR schedule to global step `step` (a rehearsal's next window)
    as if the steps in between had been trained."""
    for _ in range(step - state.step):
        state.schedule.step()
    if step > state.step:  # a new position, in an epoch of its own as far as skips go
        state.epoch_skipped, state.epoch_lr = 0, None
    state.step = max(state.step, step)
    state.epoch, state.epoch_step = divmod(state.step, steps_per_epoch)


def _seed_epoch(state: RunState, cfg: RootConfig, env: DistEnv) -> None:
    """Per-rank dropout-family randomness as a function of (seed, epoch, rank): a run resumed at an
    epoch boundary draws what the uninterrupted one would have, on every rank; one resumed
    mid-epoch draws fresh numbers from its resume point (not a replay of the epoch's first steps)."""
    seed, epoch, mid = cfg.trainer.seed, state.epoch, state.epoch_step
    torch.manual_seed((seed * 1_000_003 + epoch * 1009 + env.rank * 7919 + mid * 104_729) % 2**63)
    if state.net.dropblock_rate is not None:
        state.net.dropblock_rate.set_epoch(epoch)


def _end_epoch(
    parts: Parts,
    cfg: RootConfig,
    epoch: int,
    train_metrics: dict[str, Any],
    evals: dict[str, dict[str, Any]],
    selection: str | None,
    num_classes: int,
) -> None:
    """Record the epoch, feed model selection, save the checkpoints, log."""
    state = parts.state
    train_size = progressive.train_data_config(cfg.data, epoch, cfg.trainer.epochs).image_size
    row = {"epoch": epoch + 1, "split": "train", "step": state.step, "image_size": train_size}
    parts.logger.record({**row, **train_metrics}, state.step)
    for name, metrics in evals.items():
        row = {"epoch": epoch + 1, "split": name, "step": state.step, "lr": train_metrics["lr"], **metrics}
        parts.logger.record(row, state.step)
    improved = False
    if selection is not None:
        chosen = evals[selection]
        improved = chosen["top1"] > state.best_top1
        state.best_top1 = max(state.best_top1, chosen["top1"])
        state.stopped = feed_model_selection(state.schedule, state.early_stop, chosen)
    parts.save()
    if improved:
        parts.save("best.pt")
    if cfg.trainer.keep_last_k > 0:
        parts.save(f"epoch_{state.epoch:04d}.pt")
        _prune_epoch_checkpoints(parts.ckpt_dir, cfg.trainer.keep_last_k)
    _log_epoch(cfg, epoch, train_metrics, evals)
    _warn_if_diverged(cfg, epoch, train_metrics, evals)
    _warn_if_not_learning(cfg, epoch, train_metrics["loss"], num_classes)


def _long_final_evaluation(cfg: RootConfig, last: dict[str, dict[str, Any]] | None) -> bool:
    """Whether the final numbers need evaluations still to run: a resumed finished run (its last
    epoch's are not kept) or a protocol beyond the per-epoch centre crop (ten crops, five scales)."""
    return last is None or eval_protocols(cfg.eval) != ["center"] or flips(cfg.eval)


def _finish(
    parts: Parts,
    cfg: RootConfig,
    run_dir: Path,
    data: RunData,
    evals: EvalSets,
    last: dict[str, dict[str, Any]] | None,
    env: DistEnv,
    device: torch.device,
    selection: str | None,
) -> dict[str, Any]:
    """The final numbers (the test split under eval.protocol) -> final.json."""
    state, test_name = parts.state, cfg.data.eval_split
    if _long_final_evaluation(cfg, last) and env.is_main:
        # a signal now is not acted on before the evaluation ends (nor after: the run is then done)
        log.info(f"final evaluation: a stop during it loses only it; resume with hydra.run.dir={run_dir}")
    if last is None:  # resumed a finished run: report its final numbers
        last = evals.run(state.net)
        if state.ema is not None:
            last.update({f"{name}-ema": m for name, m in evals.run(state.ema.module).items()})
    final: dict[str, Any] = {"epochs_run": state.epoch, **last[test_name]}
    if "holdout" in last:
        final["holdout"] = last["holdout"]
    if f"{test_name}-ema" in last:  # the weight average's centre-crop numbers
        final["ema"] = last[f"{test_name}-ema"]
    final = final_test_eval(
        cfg, final, state.net, parts.logger, data.splits.test, env, device, data.batch, data.norm, state.step
    )
    final = {
        "epochs": cfg.trainer.epochs,
        **final,
        "best_top1": state.best_top1 if selection is not None else None,
        "selection": selection,
        "stopped": state.stopped,
    }
    if env.is_main:
        checkpoint.write_text_atomic(run_dir / "final.json", json.dumps(final) + "\n")
    distributed.barrier(env)
    return final


def _log_epoch(cfg: RootConfig, epoch: int, train: dict[str, Any], evals: dict[str, dict[str, Any]]) -> None:
    evaluated = " | ".join(
        f"{name} loss {m['loss']:.4f} top-1 {m['top1']:.4f} top-5 {m['top5']:.4f}"
        for name, m in evals.items()
    )
    log.info(
        f"epoch {epoch + 1}/{cfg.trainer.epochs}: train loss {train['loss']:.4f} top-1 {train['top1']:.4f} | "
        f"{evaluated} | {train['img_per_s']:.0f} img/s | grad norm p50 "
        f"{train.get('grad_norm_p50', float('nan')):.3g}, "
        f"clipped {100 * train.get('clipped_fraction', 0.0):.0f}%"
        + (f" | {train['compiled_graphs']} compiled graphs" if "compiled_graphs" in train else "")
    )


def _warn_if_diverged(
    cfg: RootConfig, epoch: int, train: dict[str, Any], evals: dict[str, dict[str, Any]]
) -> None:
    """A non-finite loss that did not stop the run: stabilizer.nonfinite=off trains on through one,
    and an evaluation after the epoch's last step can be the first to see non-finite weights."""
    losses = {"train": train["loss"], **{name: m["loss"] for name, m in evals.items()}}
    bad = [f"{name} loss {loss}" for name, loss in losses.items() if not math.isfinite(loss)]
    if bad:
        goes_on = " and trains on (stabilizer.nonfinite=off)" if cfg.stabilizer.nonfinite == "off" else ""
        log.warning(
            f"epoch {epoch + 1}: {', '.join(bad)}: the model has diverged{goes_on}; "
            "`resnet-repro report` counts this run as diverged unless a later epoch ends finite"
        )


def _warn_if_not_learning(cfg: RootConfig, epoch: int, train_loss: float, num_classes: int) -> None:
    st = cfg.stabilizer
    if not math.isfinite(train_loss):
        return  # _warn_if_diverged says it
    if st.loss_warn_after_epochs is None or epoch + 1 != st.loss_warn_after_epochs:
        return
    threshold = st.loss_warn_threshold if st.loss_warn_threshold is not None else chance_loss(num_classes)
    if train_loss > threshold:
        log.warning(
            f"train loss {train_loss:.3f} is still above {threshold:.3f} after {epoch + 1} epochs: check the "
            "labels, the normalization statistics and the LR (try stabilizer.warmup_epochs or max_norm)"
        )


def _prune_epoch_checkpoints(ckpt_dir: Path | None, keep: int) -> None:
    if ckpt_dir is not None:  # rank 0's
        for old in sorted(ckpt_dir.glob("epoch_*.pt"))[:-keep]:
            old.unlink()
