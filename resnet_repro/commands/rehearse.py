"""`resnet-repro rehearse`: the job `train` would run, on this machine in minutes (a few steps at
each schedule change, checkpoint, resume, final evaluation, report), and its verdict."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from omegaconf import DictConfig

from resnet_repro.commands.hydra_app import (
    PROG,
    collision_message,
    compose_jobs,
    fail,
    hydra_command,
    naming_the_point,
    record_failure,
    refuse_unknown_options,
    split_hydra_args,
)
from resnet_repro.config import UserError, files_as_user_errors, sweep_collisions, to_dataclass

HELP = f"""usage: {PROG} rehearse [-m] [--check-only] [--stand-in] [--scan] [--gpu-memory GiB]
                         [--images-per-step N] [--out DIR] [train overrides]

Before you queue: the job `train` would run with these overrides, on this machine in minutes. The
same composed config and launch path (local workers for trainer.nproc, torchrun, srun), nothing
shrunk but the work: a few steps at each point of the schedule where behaviour changes (first step,
end of warm-up, LR milestones or ramp peak, each progressive-resizing size, last epoch), a
checkpoint, a second launch of the processes resuming from it, the final evaluation under
eval.protocol, `report` on the result. It judges as `train` judges: data.root through the real
listing (a missing root or split is train's error), the statistics file (loaded and checked, or
to be computed: its folder must be writable), the real run's directory (a live lock, a last.pt of
another job), the checkpoints against the free disk, and the per-process memory on the target GPU.
Data: a few images per class of data.root; a generated stand-in with the configured classes and
image sizes only when data.root is unset or with --stand-in. Ends in a verdict and a list of what
this machine did not check: exit 0, or the one-line error the real run would hit, exit 2. Writes
rehearsals/<name>/<id>/ (or --out), never the real run's directory: a hydra.run.dir given is the
real run's, checked as train meets it. The fault catalogue both must judge alike: docs/rehearse.md.

options:
  -m                     rehearse each job of the sweep (train -m's directory collisions refused)
  --check-only           only what the run decides before its first step (config, launch, batch,
                         data listing and statistics decision, run directory, model, optimizer and
                         schedule shapes, memory fit, plan, deviations); seconds, nothing written
  --stand-in             do not read data.root (e.g. not mounted here): counts estimated from the
                         dataset's size with its subset and holdout, the rehearsal on generated images
  --scan                 also read every listed image's header (verify-data without decoding): a
                         file the run could not read is refused now
  --gpu-memory GiB       the target GPU's memory (default: the visible GPU's, else 80)
  --images-per-step N    images of each process's batch a trained step uses (the loader still
                         reads the whole batch); all: the whole batch; auto (default): the whole
                         batch on a GPU, at most 2 on a CPU
  --out DIR              where the rehearsal itself runs and writes (with -m: its sweep folder);
                         default rehearsals/<name>/<id>; not a folder holding a real run

example:
  {PROG} rehearse experiment=he2016 data.root=/data/imagenet trainer.nproc=2
  {PROG} rehearse --check-only --stand-in experiment=he2016 trainer.nproc=8
"""


def rehearse_command(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        print(HELP)
        return
    options, args = _rehearse_options(args)
    own = ("--check-only", "--stand-in", "--scan", "--gpu-memory", "--images-per-step", "--out")
    refuse_unknown_options(args, "rehearse", own=own)
    if "--check-only" in args:
        _rehearse_check([a for a in args if a != "--check-only"], options)
        return
    flags = [a for a in args if a in ("-m", "--multirun")]
    # the real run's directory (hydra.run.dir given, else runs/<name>/cfg-<hash>) and a sweep's
    # folder are the real job's: checked as train meets them, never written; the rehearsal runs in
    # rehearsals/<name>/... or --out
    key = "hydra.sweep.dir" if flags else "hydra.run.dir"
    real = [a for a in args if a.startswith(f"{key}=")]
    rest = [a for a in args if a not in flags and a not in real]
    where = options.out or (
        "rehearsals/${name}/multirun-${now:%Y-%m-%d_%H-%M-%S}" if flags else "rehearsals/${name}/${run_id:}"
    )
    if options.out:
        _refuse_a_real_run_as_out(Path(options.out).expanduser(), real)

    def rehearse_job(dcfg: DictConfig) -> None:
        _rehearse(dcfg, options, None if flags else real)

    hydra_command(rehearse_job, [*flags, f"{key}={where}", *rest], "rehearse")
    if _REHEARSAL_FAILURES:
        raise SystemExit(2)


@dataclasses.dataclass(frozen=True)
class RehearseOptions:
    images_per_step: str = "auto"
    stand_in: bool = False
    scan: bool = False
    gpu_memory_gib: float | None = None  # None: the visible GPU's, else memory_fit's default
    out: str | None = None  # where the rehearsal runs (--out); None: rehearsals/<name>/<id>


def _rehearse_options(args: list[str]) -> tuple[RehearseOptions, list[str]]:
    """(rehearse's own options, the other arguments: flags and train overrides)."""
    from resnet_repro.planning import rehearse

    values: dict[str, object] = {}
    rest: list[str] = []
    it = iter(args)
    for a in it:
        name, eq, value = a.partition("=")
        if name in ("--images-per-step", "--gpu-memory", "--out"):
            given = value if eq else next(it, None)
            if given is None:
                fail(f"{name} needs a value")
            values[name] = given
        elif a in ("--stand-in", "--scan"):
            values[a] = True
        else:
            rest.append(a)
    if values.get("--stand-in") and values.get("--scan"):
        fail("--scan reads every listed image of data.root and --stand-in does not read data.root: give one")
    images = str(values.get("--images-per-step", "auto"))
    try:
        rehearse.parse_images_per_step(images)
    except UserError as e:
        fail(str(e))
    gpu = values.get("--gpu-memory")
    if gpu is not None:
        try:
            gpu = float(str(gpu))
        except ValueError:
            gpu = -1.0
        if not gpu > 0:
            fail(f"--gpu-memory={values['--gpu-memory']}: expected the GPU's memory in GiB, e.g. 80")
    out = str(values["--out"]) if "--out" in values else None
    options = RehearseOptions(images, bool(values.get("--stand-in")), bool(values.get("--scan")), gpu, out)
    return options, rest


def _refuse_a_real_run_as_out(out: Path, real: list[str]) -> None:
    """--out must not be the real run's directory, nor any folder holding a run that is not a
    rehearsal's (its checkpoints would be overwritten)."""
    if any(Path(r.split("=", 1)[1]).expanduser().resolve() == out.resolve() for r in real):
        fail(f"--out={out} is the real run's directory ({real[-1]}): the rehearsal needs a folder of its own")
    from resnet_repro.checkpoint import folder_problem

    problem = folder_problem(out, "--out")
    if problem is not None:
        fail(problem)
    holds = [n for n in ("checkpoints/last.pt", "final.json", "metrics.jsonl") if (out / n).exists()]
    if holds and not (out / "rehearsal").is_dir():
        fail(
            f"--out={out} holds a run that is not a rehearsal ({', '.join(holds)}): a rehearsal there would "
            "overwrite it; choose a new folder"
        )


def _rehearse_check(args: list[str], options: RehearseOptions) -> None:
    """`rehearse --check-only`: every job's checks and verdict; exit 2 at the first refusal."""
    from resnet_repro.planning import rehearse

    multirun = "--multirun" in split_hydra_args(args).flags
    swept = sweep_collisions(args) if multirun else []
    if swept and not any(a.startswith("hydra.sweep.subdir=") for a in args):
        fail(collision_message(swept))  # as `train -m` refuses it
    try:
        jobs = compose_jobs(args)
        for number, (job, cfg, launcher) in enumerate(jobs, start=1):
            with naming_the_point([j for j, _, _ in jobs], number):
                launch = rehearse.launcher_description(launcher, cfg.trainer.nproc)
                real_dir = rehearse.real_run_dir(job, cfg, bool(multirun))
                shape = rehearse.check(
                    cfg, launch, options.stand_in, options.gpu_memory_gib, options.scan, real_dir
                )
            print(f"{PROG} rehearse --check-only {' '.join(job)}".rstrip())
            print(rehearse.verdict(shape))
    except UserError as e:
        fail(str(e))


_REHEARSAL_FAILURES: list[str] = []


def _rehearse(dcfg: DictConfig, options: RehearseOptions, real: list[str] | None) -> None:
    """One job's rehearsal in Hydra's run directory; `real`: the hydra.run.dir given for the real
    run ([] for its default directory), checked as train meets it; None for a sweep's job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from resnet_repro.cluster import distributed
    from resnet_repro.planning import rehearse
    from resnet_repro.reporting.report import write_run_figures
    from resnet_repro.training.step_plan import StepPlan
    from resnet_repro.training.train import train, train_worker

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if OmegaConf.is_missing(dcfg.data, "root"):
            dcfg.data.root = ""  # the stand-in takes its place (the verdict says so)
        cfg = to_dataclass(dcfg)
        launch = rehearse.launch_description(cfg.trainer.nproc)
        real_dir = rehearse.real_run_dir(real, cfg, multirun=False) if real is not None else None
        shape = rehearse.check(cfg, launch, options.stand_in, options.gpu_memory_gib, options.scan, real_dir)
        local_launch, world, _ = launch
        plan = StepPlan(
            rehearse.STEPS_PER_POINT,
            images_per_step=rehearse.images_per_step(
                options.images_per_step, shape.per_process_batch, shape.device
            ),
        )
        # under torchrun / srun every rank writes the same sample (idempotently) and reads it
        run_here = rehearse.cpu_equivalent(cfg)[0]  # the GPU-only settings as the verdict says
        rcfg, note = rehearse.rehearsal_config(run_here, world, run_dir, options.stand_in)
        try:
            if local_launch:  # two launches: the second process state knows the first's by last.pt only
                too_many = distributed.local_launch_check(cfg.trainer.nproc, rcfg.trainer.device)
                if too_many:  # as train warns: this rehearsal starts them too
                    print(f"{PROG}: warning: {too_many}", file=sys.stderr)
                yaml = OmegaConf.to_yaml(OmegaConf.structured(rcfg))
                for phase in ("first", "second"):
                    fields = dataclasses.asdict(dataclasses.replace(plan, phase=phase))
                    try:
                        distributed.launch_local(cfg.trainer.nproc, train_worker, yaml, str(run_dir), fields)
                    except UserError as e:
                        reason = run_dir / "error.txt"
                        raise UserError(reason.read_text().strip() if reason.exists() else str(e)) from e
            else:
                with files_as_user_errors():
                    train(rcfg, run_dir, dataclasses.replace(plan, phase="both"))
        except UserError as e:  # a file of the sample is named as the user's own file
            if options.stand_in:
                raise
            raise UserError(rehearse.real_paths(str(e), rcfg, cfg)) from e
        if not distributed.detect().is_main:
            return
        write_run_figures(run_dir)
        record = rehearse.collect(run_dir, shape, cfg, note, plan, launches=2 if local_launch else 1)
    except UserError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # the other jobs are rehearsed too
            print(f"{PROG}: error: {e}", file=sys.stderr)
            record_failure(run_dir, str(e))
            _REHEARSAL_FAILURES.append(str(e))
            return
        fail(str(e))
    (run_dir / "rehearsal.json").write_text(json.dumps(record, indent=2) + "\n")
    print(rehearse.verdict(shape, record))
