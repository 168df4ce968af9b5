"""`resnet-repro plan [overrides]` (`-m` for a sweep): what a run or a sweep costs before it is queued.

For each job: images per epoch (counted from data.root's file lists, or plan.train_images), the
global batch, steps per epoch (full batches only: the trainer drops the incomplete last one), total
steps and images processed, each epoch's training crop (`train_sizes`: progressive resizing
included), how far weight decay alone shrinks a decayed weight (`weight_decay_shrink`, ln(w0/wT):
the optimizer's effective step, momentum included), and the expected wall time of each epoch's
training steps, and of the evaluations separately.

Throughput is per GPU (one process) at a training crop: given (plan.img_per_s_per_gpu at
plan.img_per_s_size px) or measured here with a short `bench train` (bench.py) at each distinct
training crop of the run. A given number is carried to other crops by pixel count (a ResNet's
compute per image grows with its pixels). A job's img/s is per-GPU x processes x
plan.scaling_efficiency. Evaluation runs forward passes only: plan.eval_img_per_s_per_gpu, or by
default three times the training rate at the evaluation size (forward ~ a third of a training
step's compute). Start-up is not in the estimate. Nothing is written and nothing is launched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_repro.config import RootConfig, UserError, eval_protocols, hydra_error_line, per_device_batch

IMAGENET_TRAIN_IMAGES = 1_281_167  # for the hint when data.root is not there yet


# Forward-only evaluation against a training step (forward + backward ~ 3 forwards)
EVAL_SPEEDUP = 3.0


@dataclass(frozen=True)
class Throughput:
    """Training images/s of one GPU (process): `by_size` at the crops that were measured, else
    `img_per_s_per_gpu` at `size` px carried to other crops by pixel count."""

    img_per_s_per_gpu: float
    size: int  # the training crop (px) img_per_s_per_gpu holds at
    source: str  # where the number came from, in words
    by_size: dict[int, float] = dataclasses.field(default_factory=dict)

    def at(self, size: int) -> float:
        """Images/s of one GPU training at a `size` px crop."""
        if size in self.by_size:
            return self.by_size[size]
        return self.img_per_s_per_gpu * (self.size / size) ** 2


def expand_sweep(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The jobs of a command line, each as its list of overrides, in the order Hydra's basic sweeper
    launches them (the cartesian product of comma lists, range() and choice() values)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UserError(hydra_error_line(e)) from e
    if not multirun:
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise UserError(f"{sweeps[0]} is a sweep: add -m to plan each of its jobs")
        return [list(overrides)]
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def world_size(cfg: RootConfig) -> int:
    return cfg.plan.world_size or cfg.trainer.nproc


def count_images(cfg: RootConfig) -> tuple[int, int | None, str]:
    """(training images per epoch, evaluation images per epoch or None, where the count came from)."""
    if cfg.plan.train_images is not None:
        from resnet_repro.planning.rehearse_data import given_train_images

        images, source = given_train_images(cfg)
        return images, None, source
    from resnet_repro.training.run_data import load_file_lists

    if not cfg.data.root:
        raise UserError(
            f"data.root is not set: give data.root=DIR to count its training images, or the count as "
            f"plan.train_images=N (ImageNet-1K: {IMAGENET_TRAIN_IMAGES})"
        )
    try:
        splits = load_file_lists(cfg.data)
    except UserError as e:
        raise UserError(
            f"cannot count the training images ({e}); fix that, or give the count as "
            f"plan.train_images=N (ImageNet-1K: {IMAGENET_TRAIN_IMAGES})"
        ) from e
    evaluated = len(splits.test) + (len(splits.holdout) if splits.holdout is not None else 0)
    return len(splits.train), evaluated, f"file lists of {cfg.data.root}"


def _readable(cfg: RootConfig) -> bool:
    return bool(cfg.data.root) and (Path(cfg.data.root).expanduser() / cfg.data.train_split).is_dir()


def train_sizes(cfg: RootConfig) -> list[int]:
    """The training crop of each epoch (progressive resizing included), in px."""
    from resnet_repro.data.progressive import train_data_config

    return [train_data_config(cfg.data, e, cfg.trainer.epochs).image_size for e in range(cfg.trainer.epochs)]


def measure(cfg: RootConfig, readable: bool) -> Throughput:
    """A short `bench train` on this machine (one untimed pass of plan.measure_steps steps, then one
    timed) at each distinct training crop of the run, one process with the job's per-device batch;
    `bench model` on synthetic batches when the data cannot be read (`readable` false)."""
    import torch

    from resnet_repro.cluster import distributed
    from resnet_repro.cluster.distributed import DistEnv
    from resnet_repro.planning import bench

    batch = per_device_batch(cfg.trainer, world_size(cfg))
    steps = cfg.plan.measure_steps
    sizes = sorted(set(train_sizes(cfg)))
    if cfg.trainer.device != "cpu" and not torch.cuda.is_available():
        raise UserError(
            f"plan.img_per_s_per_gpu is not given and there is no GPU here to measure it "
            f"(trainer.device={cfg.trainer.device}): give plan.img_per_s_per_gpu=N, one GPU's training "
            f"img/s at {cfg.plan.img_per_s_size} px (e.g. from `resnet-repro bench train` on a GPU node), "
            "or trainer.device=cpu to plan the run on this machine's CPU"
        )
    one = dataclasses.replace(cfg.trainer, batch_size=batch, global_batch=None, nproc=1)
    quiet = dataclasses.replace(cfg.logging, tensorboard=False, progress=False)
    device = distributed.pick_device(cfg.trainer.device, DistEnv())
    crops = ", ".join(f"{x} px" for x in sizes)
    print(
        f"plan: measuring training img/s here on {device.type}: {steps} untimed and {steps} timed steps of "
        f"{batch} at each training crop ({crops}); plan.img_per_s_per_gpu=N skips this",
        file=sys.stderr,
        flush=True,
    )
    b = dataclasses.replace(cfg.bench, warmup=steps, steps=steps, trials=1, min_images=steps * batch)
    fixed = dataclasses.replace(cfg.data.progressive, start_size=None)
    by_size = {}
    with tempfile.TemporaryDirectory(prefix="resnet-repro-plan-") as tmp:
        for size in sizes:
            torch.manual_seed(cfg.trainer.seed)
            data = dataclasses.replace(cfg.data, image_size=size, progressive=fixed)
            mcfg = dataclasses.replace(cfg, data=data, trainer=one, logging=quiet, bench=b)
            if readable:
                result = bench.bench_train(mcfg, device, Path(tmp))
            else:
                result = bench.bench_model(mcfg, device, Path(tmp))
            by_size[size] = float(result["img_per_s"])
    what = (
        f"bench train (data.backend={cfg.data.backend})"
        if readable
        else "bench model on synthetic batches (data.root not readable: no input pipeline)"
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    sizes = ", ".join(f"{s} px" for s in by_size)
    source = f"measured here: {what}, {steps} timed steps of {batch} per crop ({sizes}) on one {name}"
    first = min(by_size)
    return Throughput(by_size[first], first, source, by_size)


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=lambda o: dataclasses.asdict(o))


def throughput_key(cfg: RootConfig) -> str:
    """Settings that change a GPU's img/s: jobs of a sweep that agree on these share one measurement."""
    d, t = cfg.data, cfg.trainer
    return _key(
        cfg.model,
        cfg.regularization,
        [d.root, d.backend, d.decoder, d.num_threads, d.augment, sorted(set(train_sizes(cfg)))],
        [per_device_batch(t, world_size(cfg)), t.precision, t.compile, t.device],
        cfg.stabilizer.max_norm is not None,
    )


def given_throughput(cfg: RootConfig) -> Throughput | None:
    """plan.img_per_s_per_gpu at plan.img_per_s_size px, when given."""
    pl = cfg.plan
    if pl.img_per_s_per_gpu is None:
        return None
    given = f"plan.img_per_s_per_gpu={pl.img_per_s_per_gpu:g} at {pl.img_per_s_size} px"
    source = f"{given}, other crops by pixel count"
    return Throughput(pl.img_per_s_per_gpu, pl.img_per_s_size, source)


# Steps per epoch of the LR-schedule simulation behind weight_decay_shrink: the LR over a run hardly
# depends on the steps per epoch, and 10 keep the simulation short
_LR_STEPS_PER_EPOCH = 10


def lr_factors(cfg: RootConfig) -> tuple[float, ...]:
    """The LR of each step as a fraction of the peak, at _LR_STEPS_PER_EPOCH steps an epoch, from the
    schedule itself (schedule.py stepped with a dummy optimizer); plateau cuts react to evaluations
    and are not foreseen (factor 1)."""
    st = cfg.stabilizer  # what the schedule depends on
    key = _key(cfg.schedule, st.warmup_epochs, st.warmup_start_factor, cfg.trainer.epochs)
    if key not in _LR_FACTORS:
        _LR_FACTORS[key] = _simulate_lr_factors(cfg)
    return _LR_FACTORS[key]


_LR_FACTORS: dict[str, tuple[float, ...]] = {}


def _simulate_lr_factors(cfg: RootConfig) -> tuple[float, ...]:
    import warnings

    import torch

    from resnet_repro.training.schedule import build_scheduler

    steps = _LR_STEPS_PER_EPOCH * cfg.trainer.epochs
    optimizer = torch.optim.SGD([torch.zeros(1)], lr=1.0)
    schedule = build_scheduler(
        cfg.schedule,
        cfg.stabilizer,
        optimizer,
        steps_per_epoch=_LR_STEPS_PER_EPOCH,
        epochs=cfg.trainer.epochs,
    )
    factors = []
    with warnings.catch_warnings():  # no optimizer.step(): only the LR is wanted
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            factors.append(optimizer.param_groups[0]["lr"])  # the LR this step trains with
            schedule.step()
    return tuple(factors)


def weight_decay_shrink(cfg: RootConfig, total_steps: int, global_batch: int) -> float | None:
    """ln(w_0 / w_T) of a decayed weight under weight decay alone (the loss gradient left out): decay
    shrinks it by exp(-shrink) over the run. The loss gradient pushes back (with BatchNorm it grows
    the norms of the scale-invariant weights), so this is the decay's strength, not the final norm.

    - sgd: sum over the steps of LR x wd / (1 - momentum). The decay term wd x w enters the momentum
      buffer, whose steady state is 1 / (1 - momentum) times one step's gradient (10x at 0.9), with
      or without Nesterov; exact to first order in LR x wd / (1 - momentum) per step.
    - adamw: -sum of ln(1 - LR x wd): torch's decoupled decay multiplies w by (1 - LR x wd) each step,
      outside the moments (no momentum amplification).
    - adam: None. The L2 term wd x w is added to the gradient and divided by each parameter's own
      running gradient RMS, so no factor holds for every weight (docs/recipes.md).

    It grows with the steps: a proxy with a tenth of the steps applies a tenth of the decay at the
    same optim.weight_decay."""
    from resnet_repro.training.optim import peak_lr

    o = cfg.optim
    if o.name == "adam":
        return None
    factors = lr_factors(cfg)
    per_factor_step = total_steps / len(factors)  # each simulated step stands for this many
    decay = peak_lr(o, global_batch) * o.weight_decay
    if o.name == "adamw":
        if decay * max(factors) >= 1:
            return math.inf  # a step with LR x wd >= 1 zeroes (or flips) the weight
        return -sum(math.log1p(-decay * f) for f in factors) * per_factor_step
    return decay * sum(factors) * per_factor_step / (1 - o.momentum)


def weight_decay_rule(cfg: RootConfig) -> str:
    """How weight_decay_shrink is counted for the configured optimizer, in words."""
    o = cfg.optim
    if o.name == "adam":
        return (
            "no single factor: Adam's L2 term is divided by each parameter's gradient RMS "
            "(optim=adamw decays every weight alike)"
        )
    if o.name == "adamw":
        return "-sum of ln(1 - LR x wd) over the steps: AdamW's decoupled decay"
    return f"sum of LR x wd / (1 - momentum {o.momentum:g}) over the steps"


def ema_initial_weight(decay: float | None, total_steps: int) -> float | None:
    """The weight the initial weights still have in a weight EMA at the end of the run:
    decay^(steps - 1) (torch's EMA copies the first weights, then has no warm-up); None without EMA."""
    return None if decay is None else decay ** max(0, total_steps - 1)


# An EMA that still gives the initial weights this much at the end does not average the run
EMA_WARN = 0.05


def warnings(run: dict[str, Any]) -> list[str]:
    """One line per setting of a planned run that defeats its purpose."""
    out = []
    left = run["ema_initial_weight"]
    if left is not None and left > EMA_WARN:
        out.append(
            f"warning: trainer.ema.decay over {run['total_steps']:,} steps leaves {left:.2f} of the average "
            f"on the initial weights; use a decay near 1 - 10/steps ({1 - 10 / run['total_steps']:.4f})"
        )
    out += [f"warning: {late}" for late in run["late_warnings"]]
    return out


def estimate(
    cfg: RootConfig, train_images: int, throughput: Throughput, eval_images: int | None = None
) -> dict[str, Any]:
    """The numbers of one job (plain data: printed and written as JSON). `eval_images` is what the
    run evaluates after each epoch (None: unknown, eval time not estimated)."""
    from resnet_repro.data.progressive import late_ramp
    from resnet_repro.training.schedule import late_milestones

    world = world_size(cfg)
    global_batch = per_device_batch(cfg.trainer, world) * world
    steps = train_images // global_batch  # the trainer drops the incomplete last batch
    if steps == 0:
        raise UserError(
            f"{train_images} training images are fewer than one global batch of {global_batch}: no step"
        )
    if cfg.trainer.max_steps_per_epoch is not None:
        steps = min(steps, cfg.trainer.max_steps_per_epoch)
    epochs = cfg.trainer.epochs
    total_steps = steps * epochs
    images = total_steps * global_batch
    # all processes together; scaling_efficiency stands for what DDP loses to communication
    gpus = world * (cfg.plan.scaling_efficiency if world > 1 else 1.0)
    sizes = train_sizes(cfg)
    epoch_train_s = [steps * global_batch / (throughput.at(size) * gpus) for size in sizes]
    eval_size = cfg.data.image_size
    eval_rate = cfg.plan.eval_img_per_s_per_gpu or EVAL_SPEEDUP * throughput.at(eval_size)
    eval_source = (
        "plan.eval_img_per_s_per_gpu"
        if cfg.plan.eval_img_per_s_per_gpu
        else f"{EVAL_SPEEDUP:g} x the training rate at {eval_size} px (forward only)"
    )
    eval_s = eval_images / (eval_rate * world) if eval_images is not None else None
    train_s = sum(epoch_train_s)
    return {
        "name": cfg.name,
        "model": cfg.model.name,
        "world_size": world,
        "train_images": train_images,
        "global_batch": global_batch,
        "steps_per_epoch": steps,
        "epochs": cfg.trainer.epochs,
        "total_steps": total_steps,
        "images_processed": images,
        "train_sizes": sizes,
        "weight_decay_shrink": weight_decay_shrink(cfg, total_steps, global_batch),
        "weight_decay_rule": weight_decay_rule(cfg),
        "ema_initial_weight": ema_initial_weight(cfg.trainer.ema.decay, total_steps),
        "img_per_s_per_gpu": {str(s): throughput.at(s) for s in sorted(set(sizes))},
        "img_per_s_source": throughput.source,
        "scaling_efficiency": cfg.plan.scaling_efficiency if world > 1 else 1.0,
        "img_per_s": images / train_s,  # the job's mean training rate over the run
        "epoch_train_s": epoch_train_s,
        "eval_size": eval_size,
        "eval_img_per_s_per_gpu": eval_rate,
        "eval_img_per_s_source": eval_source,
        "eval_s_per_epoch": eval_s,
        "train_hours": train_s / 3600,
        "eval_hours": eval_s * cfg.trainer.epochs / 3600 if eval_s is not None else None,
        # settings the run's epochs never reach: step milestones, a progressive ramp's end
        "late_warnings": [
            w for w in (late_milestones(cfg.schedule, epochs), late_ramp(cfg.data, epochs)) if w is not None
        ],
        # the test split measured once more at the end (ten crops, five scales, flips): not estimated
        "final_evaluation_not_estimated": final_evaluation(cfg),
        "total_hours": (train_s + (eval_s or 0.0) * cfg.trainer.epochs) / 3600,
    }


def plan(jobs: list[tuple[list[str], RootConfig]]) -> dict[str, Any]:
    """Estimates for each (overrides, config) job and the totals. Images are counted and img/s
    measured once per distinct setting."""
    counts: dict[Any, tuple[int, int | None, str]] = {}
    rates: dict[Any, Throughput] = {}
    runs = []
    for overrides, cfg in jobs:
        data_key = _key(cfg.data, cfg.plan.train_images)
        if data_key not in counts:
            counts[data_key] = count_images(cfg)
        train_images, eval_images, count_source = counts[data_key]
        rate = given_throughput(cfg)
        if rate is None:
            key = throughput_key(cfg)
            if key not in rates:
                readable = count_source != "plan.train_images" or _readable(cfg)
                rates[key] = measure(cfg, readable)
            rate = rates[key]
        run = estimate(cfg, train_images, rate, eval_images)
        run.update(overrides=overrides, train_images_source=count_source, eval_images_per_epoch=eval_images)
        runs.append(run)
    return {
        "jobs": len(runs),
        "total_steps": sum(r["total_steps"] for r in runs),
        "total_images": sum(r["images_processed"] for r in runs),
        "total_train_hours": sum(r["train_hours"] for r in runs),
        "total_hours": sum(r["total_hours"] for r in runs),
        "runs": runs,
    }


def _sizes_text(sizes: list[int]) -> str:
    """`160 px x 11, 176 px x 2, 192 px x 3` (runs of equal crops, in epoch order)."""
    runs: list[list[int]] = []
    for s in sizes:
        if runs and runs[-1][0] == s:
            runs[-1][1] += 1
        else:
            runs.append([s, 1])
    return ", ".join(f"{s} px x {n}" for s, n in runs)


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:,.1f} h" + (f" ({h / 24:.1f} days)" if h >= 48 else "")


def _sweep_eval_text(runs: list[dict[str, Any]]) -> str:
    """Whether a sweep's total holds its jobs' evaluation (estimated only with data.root)."""
    known = [r["eval_hours"] is not None for r in runs]
    if all(known):
        return "evaluation included"
    if any(known):
        return f"evaluation included for {sum(known)} of {len(runs)} jobs"
    return "evaluation not estimated (evaluated images unknown: give data.root)"


def final_evaluation(cfg: RootConfig) -> str | None:
    """The evaluation of the test split after the last epoch beyond its centre crop, in words
    (eval.protocol), or None where the last epoch's centre crop is the final number."""
    from resnet_repro.evaluation.protocols import flips

    protocols, flipped = eval_protocols(cfg.eval), flips(cfg.eval)
    if protocols == ["center"] and not flipped:
        return None
    return " and ".join(protocols) + (" with flips" if flipped else "")


def _eval_text(r: dict[str, Any]) -> str:
    finals = r["final_evaluation_not_estimated"]
    final = f"; the final {finals} evaluation of the test split not included" if finals else ""
    if r["eval_hours"] is None:
        return "not estimated (evaluated images unknown: give data.root)" + final
    return (
        f"{_hours(r['eval_hours'])} ({r['eval_images_per_epoch']:,} images a epoch at {r['eval_size']} px, "
        f"{r['eval_img_per_s_per_gpu']:,.0f} img/s per GPU: {r['eval_img_per_s_source']})" + final
    )


def _shrink_text(r: dict[str, Any]) -> str:
    x = r["weight_decay_shrink"]
    if x is None:
        return f"none ({r['weight_decay_rule']})"
    shrink = f"decay alone shrinks the decayed weights by exp(-{x:.3g}) = {math.exp(-x):.2g}"
    return f"{x:.3g}: {shrink} ({r['weight_decay_rule']})"


def format_table(record: dict[str, Any]) -> str:
    """One job: a key-value table; a sweep: one row per job and the total."""
    runs = record["runs"]
    note = "start-up not included"
    if len(runs) == 1:
        r = runs[0]
        rates = ", ".join(f"{float(v):,.1f} at {s} px" for s, v in r["img_per_s_per_gpu"].items())
        scaling = (
            f" x {r['world_size']} GPUs x scaling efficiency {r['scaling_efficiency']:g}"
            if r["world_size"] > 1
            else ""
        )
        rows = [
            ("images per epoch", f"{r['train_images']:,} ({r['train_images_source']})"),
            ("global batch", f"{r['global_batch']:,} ({r['world_size']} process(es))"),
            ("steps per epoch", f"{r['steps_per_epoch']:,} (full batches; the last partial one is dropped)"),
            ("epochs", f"{r['epochs']:,}"),
            ("training crops", _sizes_text(r["train_sizes"])),
            ("total steps", f"{r['total_steps']:,}"),
            ("images processed", f"{r['images_processed']:,}"),
            ("weight decay shrink", _shrink_text(r)),
            ("throughput per GPU", f"{rates} img/s{scaling} ({r['img_per_s_source']})"),
            ("training time", _hours(r["train_hours"])),
            ("evaluation time", _eval_text(r)),
            ("wall time", f"{_hours(r['total_hours'])} ({note})"),
        ]
        if r["eval_images_per_epoch"] is not None:
            rows.insert(1, ("evaluated per epoch", f"{r['eval_images_per_epoch']:,} images"))
        width = max(len(k) for k, _ in rows)
        lines = [f"plan: {r['name']} ({r['model']})", *(f"  {k:<{width}}  {v}" for k, v in rows)]
        return "\n".join(lines + warnings(r))
    # the table names each job by what differs between the jobs; the rest is printed once
    common = [o for o in runs[0]["overrides"] if all(o in r["overrides"] for r in runs)]
    head = (
        "job",
        "steps/epoch",
        "epochs",
        "crops (px)",
        "total steps",
        "images",
        "wd shrink",
        "img/s",
        "train",
        "wall time",
    )
    table = [
        (
            " ".join(o for o in r["overrides"] if o not in common) or "(the same)",
            f"{r['steps_per_epoch']:,}",
            f"{r['epochs']}",
            "-".join(str(s) for s in sorted(set(r["train_sizes"]))),
            f"{r['total_steps']:,}",
            f"{r['images_processed']:,}",
            "-" if r["weight_decay_shrink"] is None else f"{r['weight_decay_shrink']:.3g}",
            f"{r['img_per_s']:,.1f}",
            _hours(r["train_hours"]),
            _hours(r["total_hours"]),
        )
        for r in runs
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(head)]
    lines = [f"plan: {runs[0]['name']} ({runs[0]['model']}), every job with: {' '.join(common) or '-'}"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    sources = sorted({r["img_per_s_source"] for r in runs})
    lines.append(
        f"{record['jobs']} jobs: {record['total_steps']:,} steps, {record['total_images']:,} images, "
        f"{_hours(record['total_hours'])} one after another, {_sweep_eval_text(runs)} ({note})"
    )
    lines.append("wd shrink: ln(w0/wT) of a decayed weight under weight decay alone (it shrinks by exp(-x))")
    lines += ["img/s: the job's mean training rate; per GPU: " + s for s in sources]
    lines += sorted({w for r in runs for w in warnings(r)})
    return "\n".join(lines)
