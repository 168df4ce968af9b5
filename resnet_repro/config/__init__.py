"""Config schemas (dataclasses registered in Hydra's ConfigStore) and cross-field validation.

This module must not import torch: it is imported by the CLI before anything heavy.
Every YAML file under conf/ is validated against these schemas, so a misspelt key fails at start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

# conf/: conf/config.yaml and one folder per config group
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

# omegaconf's marker for a value that must be given (kept local so this module imports without
# Hydra, e.g. on a GPU machine that only has torch: scripts/gpu_check.sh)
MISSING = "???"


class UserError(Exception):
    """An error caused by input the user controls (config, paths, data). Printed as one line."""


@dataclass
class AugmentConfig:
    # False: training images get the evaluation transform (resize + centre crop)
    random_resized_crop: bool = True
    # > 0: CIFAR-style training crop instead: pad this many pixels on each side, take a random
    # image_size crop (images should already be image_size)
    pad_crop: int = 0
    # RandomResizedCrop: fraction of the image area and aspect-ratio range of the sampled crop
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0])
    hflip: bool = True
    # [low, high]: He et al. 2016's scale augmentation instead: shorter side resized to an integer
    # drawn uniformly from [low, high] pixels (the paper: [256, 480]), then a random image_size
    # crop; set random_resized_crop=false with it. null = off
    scale_short_side: list[int] | None = None
    # Krizhevsky et al. 2012's PCA lighting noise: std of each eigenvector's weight (the paper and
    # fb.resnet.torch: 0.1) on the [0, 1] RGB scale, with ImageNet's eigenvectors; 0 = off
    pca_lighting: float = 0.0


@dataclass
class ProgressiveConfig:
    """Progressive resizing of the training crop (resnet_repro.data.progressive); off when
    start_size is null. Evaluation stays at data.image_size."""

    start_size: int | None = None
    end_size: int | None = None
    # epochs (0-based) between which the size grows linearly (rounded half to even, as numpy);
    # end_epoch null = the last epoch
    start_epoch: int = 0
    end_epoch: int | None = None
    # sizes are rounded to a multiple of this many pixels
    step: int = 32


@dataclass
class SubsetConfig:
    """A cheaper proxy of the dataset: the same classes kept in every split (resnet_repro.data.subset)."""

    # A class count (a seeded random choice of that many classes), or a text file of class names
    # (one per line, e.g. ImageNet-100's wnids); null = every class
    classes: Any = None
    # At most this many images of each class, in the training and the test split (null = all)
    per_class: int | None = None
    seed: int = 0


@dataclass
class HoldoutConfig:
    """A validation ("holdout") part carved from the training split for model selection."""

    # A count (>= 1) or a fraction of the training split (< 1); null = no holdout
    size: float | None = None
    # Which images are held out; null = trainer.seed's, so a seed sweep varies the holdout too
    # (Bouthillier et al. 2021), resolved when the config is read. 0: one holdout for every seed
    seed: int | None = 0
    # Normalization statistics from the whole training split (train: the common order, holdout
    # carved afterwards) or from train minus holdout (train_minus_holdout: the rigorous order)
    stats_from: str = "train"


@dataclass
class StatsConfig:
    """Train-only normalization statistics (`resnet-repro stats`, data.normalization=computed)."""

    # The stats file; null = beside the dataset, named after the fingerprint of the file list
    path: str | None = None
    # Compute on a deterministic class-stratified sample of this many images (null = all)
    max_images: int | None = None
    seed: int = 0
    # Resize the shorter side to this before counting pixels (null = every pixel at full size)
    resize: int | None = None
    # Accept a stats file whose file list differs from the current selection (recorded in the run)
    allow_mismatch: bool = False
    batch_size: int = 32


@dataclass
class DataConfig:
    name: str = MISSING
    # Folder in the ImageNet layout: <root>/<split>/<class>/<image>.JPEG
    root: str = MISSING
    # dali (GPU decode where CUDA is present); torchvision (DataLoader: fallback and parity
    # reference); synthetic (random tensors, for throughput benchmarks)
    backend: str = "dali"
    # torchvision backend: pil, or decode_jpeg (torchvision.io + transforms v2)
    decoder: str = "pil"
    train_split: str = "train"
    eval_split: str = "val"
    # Side of the square training crop and evaluation crop, in pixels
    image_size: int = 224
    # Evaluation: shorter side resized to image_size / crop_ratio, then a centre crop (256 -> 224)
    crop_ratio: float = 0.875
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # computed: train-only statistics from the stats file (computed first when missing);
    # published: data.mean / data.std as given; none: pixels scaled to [0, 1] only;
    # pixel_mean: a train-only per-pixel mean image at the training resolution (He et al. 2016),
    # then divided by the per-channel std of the pixels about it (resnet_repro/data/pixel_mean.py)
    normalization: str = "computed"
    # Per-channel mean / std on the [0, 1] pixel scale, used with normalization=published
    # (ImageNet's published train statistics by default)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # A text file of image paths (relative to data.root, or absolute) to leave out of every split,
    # e.g. the bad_files.txt that `resnet-repro verify-data` writes
    exclude_files: str | None = None
    subset: SubsetConfig = field(default_factory=SubsetConfig)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    # CPU threads for DALI decode/augmentation (per process)
    num_threads: int = 4
    # Batches DALI prepares ahead of the training step
    prefetch: int = 2
    # Evaluate at most this many images of the test split and of the holdout (evenly spaced over
    # each, so every class keeps some); for smoke tests, as trainer.max_steps_per_epoch caps
    # training. Starred in the start-up summary: such numbers are not the split's. null = all
    max_eval_images: int | None = None


@dataclass
class ModelConfig:
    name: str = "resnet50"
    # v1.5 = torchvision (stride 2 in the bottleneck's 3x3 conv); v1 = the paper (in the first 1x1)
    variant: str = "v1.5"
    # imagenet = 7x7 stride-2 conv + 3x3 stride-2 max pool (input / 4); cifar = one 3x3 stride-1
    # conv, no max pool, for 32 px inputs (He et al. 2016's CIFAR practice, kept with the 4 stages)
    stem: str = "imagenet"
    # Start each residual branch's last norm layer at gamma=0, so blocks begin as identities
    zero_init_residual: bool = False
    # bn = BatchNorm2d; gn = GroupNorm with gn_groups groups
    norm: str = "bn"
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    gn_groups: int = 32
    # Synchronize BatchNorm statistics across ranks (CUDA only)
    sync_bn: bool = False
    channels_last: bool = False


@dataclass
class RegularizationConfig:
    """Each is off at 0 and acts only in training mode."""

    # Dropout probability before the classifier
    dropout: float = 0.0
    # Channel-wise dropout (Dropout2d) after each of the 4 stages
    spatial_dropout: float = 0.0
    # DropBlock in stages 3-4: final drop probability, block size, epochs to ramp up from 0
    dropblock: float = 0.0
    dropblock_size: int = 7
    dropblock_ramp_epochs: int = 0
    # Stochastic depth: drop rate of the last residual branch; earlier ones scale linearly with depth
    stochastic_depth: float = 0.0
    label_smoothing: float = 0.0
    # L1 penalty lambda * sum|w| over conv and linear weights, added to the loss
    l1: float = 0.0


@dataclass
class OptimConfig:
    name: str = "sgd"
    # LR per 256 images; scaled linearly with the global batch
    lr_per_256: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    # SGD / AdamW: decay in the update (AdamW decoupled from the adaptive step);
    # Adam: an L2 term added to the gradient before the adaptive rescaling
    weight_decay: float = 1e-4
    # true: decay every parameter (the paper); false: no decay on norm weights/biases and biases
    decay_norm_and_bias: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    # step | cosine | plateau | constant | linear_ramp
    name: str = "step"
    # step: epochs at which the LR is multiplied by gamma
    milestones: list[int] = field(default_factory=lambda: [30, 60])
    gamma: float = 0.1
    # cosine: final LR as a fraction of the peak
    final_lr_factor: float = 0.0
    # linear_ramp (FFCV's ImageNet schedule): linear from 0 to the peak at `peak_epoch`, then
    # linear to `end_factor` x peak at the last epoch; its own warm-up (no stabilizer warm-up)
    peak_epoch: float = 2.0
    end_factor: float = 0.0
    # plateau: multiply the LR by `factor` once `patience` evaluations in a row of the
    # model-selection split have not improved `metric` by more than `min_delta` (absolute: top1 as
    # a fraction, loss in nats); evaluations before the LR warm-up ends are not counted, and the
    # count restarts after each cut. Early stopping (stabilizer.early_stop) uses the same rule.
    patience: int = 5
    factor: float = 0.1
    # loss (lower is better) or top1 (higher is better; He et al. divide the LR when the error
    # plateaus)
    metric: str = "loss"
    min_delta: float = 0.0


@dataclass
class EarlyStopConfig:
    # Stop once this many evaluations in a row of the model-selection split have not improved
    # `metric` by more than `min_delta` (absolute), counting only evaluations after the LR
    # warm-up: the plateau schedule's rule (null = off). With the plateau schedule on the same
    # metric, give this a longer patience, or the run stops where the LR would have been cut.
    patience: int | None = None
    min_delta: float = 0.0
    # top1 (higher is better) or loss (lower is better)
    metric: str = "top1"


@dataclass
class StabilizerConfig:
    # Linear LR warm-up from warmup_start_factor x peak to the peak over this many epochs (0 = off)
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    # Gradient max-norm clipping threshold (L2 over all parameters); null = off
    max_norm: float | None = None
    # A non-finite loss or gradient norm: stop (save a report, exit non-zero), skip the update, or off
    nonfinite: str = "stop"
    # With skip: stop after this many skipped steps in a row
    max_skips: int = 10
    # Warn when the epoch's train loss is still above this after `loss_warn_after_epochs`
    # epochs (null threshold = ln(classes), the loss of a uniform guess)
    loss_warn_after_epochs: int | None = 2
    loss_warn_threshold: float | None = None
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)


@dataclass
class EmaConfig:
    """An exponential moving average of the weights (resnet_repro.training.ema), evaluated beside them."""

    # ema = decay * ema + (1 - decay) * weights after every optimizer step, BatchNorm buffers
    # included (e.g. 0.9999 over ImageNet's 5,004 steps/epoch); null = off
    decay: float | None = None


@dataclass
class TrainerConfig:
    epochs: int = 90
    # Per-device batch; the global batch is batch_size x world size. null: set by global_batch
    batch_size: int | None = 256
    # When set, the global batch: each of the world's processes takes global_batch / world size
    # (which must divide). With both set, batch_size x world size must equal it (an error
    # otherwise); a preset that sets global_batch sets batch_size: null. Both ImageNet recipes set 256.
    global_batch: int | None = None
    seed: int = 0
    # auto = cuda when available, else cpu
    device: str = "auto"
    # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaler)
    precision: str = "fp32"
    # torch.compile the model (a cold compile costs about 30 s on CPU)
    compile: bool = False
    # Local worker processes to start when not already under torchrun / srun
    nproc: int = 1
    # auto = continue from <run_dir>/checkpoints/last.pt when present; never; or a checkpoint path
    resume: str = "auto"
    # Resume even when the checkpoint was trained with other settings (seed, model, data, transform,
    # normalization, precision, regularization, optimizer, schedule): the differences are logged and
    # the checkpoint's optimizer and schedule state wins. Off: such a resume is refused.
    resume_with_changes: bool = False
    ema: EmaConfig = field(default_factory=EmaConfig)
    # Seconds a collective may wait for a slow or dead rank before the job fails
    dist_timeout_s: int = 600
    # Allow model selection (best.pt, early stopping, plateau) on the test split when there is no
    # holdout; warned about in the log. Without a holdout and without this, there is no selection.
    select_on_test: bool = False
    # Stop after this many training steps per epoch (null = full epoch); for smoke tests
    max_steps_per_epoch: int | None = None
    # Also write last.pt every this many minutes inside an epoch (null = only at epoch ends): a node
    # failure or a SIGKILL, which give no warning, loses at most this much training (an ImageNet
    # epoch can take hours); a ResNet-50 last.pt is ~200 MB
    checkpoint_every_minutes: float | None = 15
    # Keep checkpoints/epoch_<N>.pt for the last k epochs (0 = keep only last.pt and best.pt)
    keep_last_k: int = 0
    # Signals that mean "save and stop": SLURM sends USR1 before the time limit (the sbatch scripts'
    # --signal); submitit sends USR2 (its own handler then requeues the job, after our checkpoint)
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGUSR1", "SIGTERM", "SIGUSR2"])
    # Ranks agree on a pending preemption every this many steps (each check is a small all-reduce)
    preempt_check_steps: int = 10
    # After a preemption or time-limit signal under SLURM, requeue the job (scontrol requeue); a plain
    # `scancel` (the job is being cancelled) never requeues
    requeue: bool = True


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress: bool = True
    # Training loss/LR scalars go to TensorBoard every this many steps
    log_every_steps: int = 10


@dataclass
class EvalConfig:
    """The test protocol (resnet_repro/evaluation/protocols.py) of `resnet-repro eval` and of the evaluation
    at the end of training (per-epoch evaluations and model selection always use `center`)."""

    # center: resize to image_size / crop_ratio, one centre image_size crop (torchvision's protocol);
    # ten_crop: same resize, 4 corner + centre crops and their flips, softmax averaged (He et al. Table 3);
    # multiscale: the whole image with its shorter side at each of `scales`, and its flip, softmax
    # averaged (fully convolutional; He et al. Table 4). A list runs each in the final evaluation
    # (e.g. [ten_crop, multiscale], He et al.'s two); the first gives final.json's headline numbers
    protocol: Any = "center"
    # multiscale: shorter sides in pixels (the paper's five)
    scales: list[int] = field(default_factory=lambda: [224, 256, 384, 480, 640])
    # Also the horizontally flipped views, softmax averaged with the others. null = the protocol's
    # own: off for center (torchvision's protocol), on for ten_crop and multiscale (the paper's);
    # true with center is test-time flip averaging (FFCV's recipes), false gives 5 crops, or one
    # view per scale
    hflip: bool | None = None


@dataclass
class BenchConfig:
    """Read only by `resnet-repro bench <mode>`."""

    mode: str = "model"  # model | data | train | loop-overhead | stats
    # untimed steps first (warm-up; includes torch.compile's compile)
    warmup: int = 5
    # timed steps per trial (model, loop-overhead)
    steps: int = 20
    trials: int = 3
    # classes of the synthetic labels (model, loop-overhead)
    num_classes: int = 1000
    # data / train / stats modes: the training images of one trial (evenly spaced over the split;
    # the split repeated when it has fewer)
    min_images: int = 1000
    # where to write the JSON result (null = <run dir>/bench_<mode>.json)
    json: str | None = None


@dataclass
class PlanConfig:
    """Read only by `resnet-repro plan`."""

    # Training images per epoch; null = count the training split under data.root (after
    # data.exclude_files and the holdout), e.g. 1281167 for ImageNet-1K before it is downloaded
    train_images: int | None = None
    # Training throughput of one GPU (one process) in images/s at a plan.img_per_s_size px crop;
    # other crops (progressive resizing) scale by pixel count. null = measure it on this machine
    # at each training crop with a short `bench train` (`bench model` without data.root)
    img_per_s_per_gpu: float | None = None
    # The training crop (px) img_per_s_per_gpu was measured at (published numbers: 224)
    img_per_s_size: int = 224
    # Evaluation (forward only) images/s of one GPU at data.image_size; null = 3 x the training rate
    eval_img_per_s_per_gpu: float | None = None
    # A job's img/s = per GPU x processes x this (1.0 = linear scaling; DDP on one node often 0.9)
    scaling_efficiency: float = 1.0
    # Processes per job (null = trainer.nproc); a measured img/s is scaled linearly to it
    world_size: int | None = None
    # The measurement: training steps untimed (warm-up), then as many timed
    measure_steps: int = 5


@dataclass
class RootConfig:
    # Experiment name; names the run directory
    name: str = "demo"
    # The published recipe this run claims to reproduce (a key of REFERENCES): the start-up summary
    # and deviations.json list every setting that differs from it. torchvision
    # (ResNet50_Weights.IMAGENET1K_V1's recipe) | he2016 (the paper) | ffcv_rn50_<epochs> (FFCV's)
    reference: str = "torchvision"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    stabilizer: StabilizerConfig = field(default_factory=StabilizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # For `resnet-repro eval`: the checkpoint to evaluate
    checkpoint: str | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)


GROUP_SCHEMAS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "regularization": RegularizationConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "stabilizer": StabilizerConfig,
    "trainer": TrainerConfig,
    "logging": LoggingConfig,
    "eval": EvalConfig,
}

PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("dali", "torchvision", "synthetic")


@dataclass(frozen=True)
class Reference:
    """A published recipe as this tool's config: conf/config.yaml composed with `overrides`."""

    title: str
    overrides: tuple[str, ...]


# FFCV's ResNet-50 configs (ffcv-imagenet rn50_configs/rn50_<epochs>_epochs.yaml): epochs ->
# (resolution.start_ramp, resolution.end_ramp); every other setting is the same in all of them
FFCV_RN50_RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48), 88: (65, 76)}


def _ffcv_rn50(epochs: int) -> Reference:
    """FFCV's rn50_<epochs>_epochs.yaml with its train_imagenet.py defaults, in this tool's keys. Not
    expressible here, so not compared: BlurPool (use_blurpool: 1) and the ramp's start at 1e-4 x
    peak (this tool's linear_ramp starts at 0)."""
    start, end = FFCV_RN50_RAMPS[epochs]
    return Reference(
        f"FFCV rn50 {epochs} epochs",
        (
            "experiment=fast_88",  # what FFCV's files leave unsaid (data set, splits) as fast_88's
            "model=resnet50",  # torchvision's resnet50 (v1.5), channels_last
            "model.variant=v1.5",
            "optim=sgd",
            "optim.momentum=0.9",
            "optim.lr_per_256=0.10625",  # lr 1.7 at 8 GPUs x batch_size 512 = 4096 images per step
            "optim.weight_decay=1e-4",
            "optim.decay_norm_and_bias=false",  # bn_wd: 0
            "schedule=linear_ramp",  # lr_schedule_type: cyclic, linear per iteration
            "schedule.peak_epoch=2",  # lr_peak_epoch: 2
            "schedule.end_factor=0",
            "regularization=label_smoothing",
            "regularization.label_smoothing=0.1",
            "stabilizer=none",
            "data/augment=torchvision",  # RandomResizedCrop (area 0.08-1, ratio 3/4-4/3) + flip
            "data.normalization=published",  # IMAGENET_MEAN / IMAGENET_STD
            "data.image_size=256",  # validation.resolution
            "data.crop_ratio=0.875",  # DEFAULT_CROP_RATIO = 224/256
            "data.progressive.start_size=160",  # min_res
            "data.progressive.end_size=192",  # max_res
            "data.progressive.step=32",
            f"data.progressive.start_epoch={start}",
            f"data.progressive.end_epoch={end}",
            "eval.protocol=center",
            "eval.hflip=true",  # lr_tta
            "trainer.precision=fp16",  # autocast + GradScaler
            "trainer.global_batch=4096",
            "trainer.batch_size=null",
            f"trainer.epochs={epochs}",
        ),
    )


# The recipes a run may claim (`reference=`): the summary's deviations are every setting in which
# the run's composed config differs from the reference's (summary.deviations)
REFERENCES: dict[str, Reference] = {
    "torchvision": Reference("torchvision V1", ("experiment=imagenet_paper",)),
    "he2016": Reference("He 2016", ("experiment=he2016",)),
    **{f"ffcv_rn50_{n}": _ffcv_rn50(n) for n in FFCV_RN50_RAMPS},
}
# Old config option names that still work, and what they are now called
DEPRECATED_OPTIONS: dict[tuple[str, str], str] = {("data/augment", "paper"): "torchvision"}

# Run-control keys: how and where a run executes (progress bars, step caps, processes, resume,
# checkpoint cadence, preemption, data location and threads), not what it learns. They are left
# out of a sweep job's directory name and out of the hyperparameters `resnet-repro report` gives
# TensorBoard. conf/config.yaml's hydra.job.config.override_dirname.exclude_keys is this list
# (Hydra matches exact keys; tests/test_config.py checks the two agree). hydra.* overrides
# (launcher, sweep dir) never reach a job's overrides and need no entry. Sweeping one of these
# keys would give every job the same directory name: the CLI refuses that (see sweep_collisions).
RUN_CONTROL_KEYS: tuple[str, ...] = (
    "logging.tensorboard",
    "logging.progress",
    "logging.log_every_steps",
    "trainer.nproc",
    "trainer.max_steps_per_epoch",
    "trainer.resume",
    "trainer.resume_with_changes",
    "trainer.checkpoint_every_minutes",
    "trainer.keep_last_k",
    "trainer.preempt_signals",
    "trainer.preempt_check_steps",
    "trainer.requeue",
    "trainer.dist_timeout_s",
    "data.root",
    "data.num_threads",
    "data.prefetch",
    "data.max_eval_images",
    "data.stats.path",
    "checkpoint",
)


# Left out of the deviations from the claimed reference (summary.deviations), as a key or a whole
# section: the run-control keys, and the settings that name, seed or speed up a run, or only warn,
# rather than change what it trains (another seed is another sample of the same recipe; model.channels_last
# and trainer.compile change the memory layout and the kernels, not the computation). Paths too:
# data.exclude_files lists unreadable files of one copy of the data.
NOT_RECIPE_KEYS: tuple[str, ...] = (
    *RUN_CONTROL_KEYS,
    "name",
    "reference",
    "bench",
    "plan",
    "trainer.seed",
    "trainer.device",
    "trainer.compile",
    "model.channels_last",
    "data.exclude_files",
    "data.holdout.seed",
    "data.subset.seed",
    "data.stats.seed",
    "data.stats.batch_size",
    "data.stats.allow_mismatch",
    "stabilizer.loss_warn_after_epochs",
    "stabilizer.loss_warn_threshold",
)


def is_run_control(key: str) -> bool:
    """Whether an override key (`+key`/`++key`/`~key` forms too) is run control, not a hyperparameter."""
    key = key.lstrip("+~")
    return key in RUN_CONTROL_KEYS or key.startswith("hydra.")


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


NORMALIZATIONS = ("computed", "published", "none", "pixel_mean")
EVAL_PROTOCOLS = ("center", "ten_crop", "multiscale")
STEMS = ("imagenet", "cifar")


def register_configs() -> None:
    """Register the schemas so each conf/<group>/*.yaml can name its schema in its defaults list."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RootConfig)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)
    cs.store(group="data/augment", name="augment_schema", node=AugmentConfig)


_NESTED_SCHEMAS: dict[str, type] = {
    "augment": AugmentConfig,
    "ema": EmaConfig,
    "early_stop": EarlyStopConfig,
    "bench": BenchConfig,
    "plan": PlanConfig,
    "holdout": HoldoutConfig,
    "stats": StatsConfig,
}


def _child_schema(schema: type, key: str) -> type | None:
    """The dataclass of field `key` of `schema`, or None for a plain value."""
    child = GROUP_SCHEMAS.get(key) if schema is RootConfig else None
    return child or _NESTED_SCHEMAS.get(key)


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
            schema = _child_schema(schema, part)


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
        child_schema = _child_schema(schema, key)
        if child_schema is not None and isinstance(node[key], DictConfig):
            unknown.extend(_unknown_keys(node[key], child_schema, f"{prefix}{key}."))
    return unknown


def to_dataclass(cfg: DictConfig) -> RootConfig:
    """Resolve interpolations and convert the Hydra config to typed dataclasses.

    A key the schema does not declare (e.g. added with `+optim.lrr=0.1`) is an error, not dropped.
    """
    from omegaconf import OmegaConf

    unknown = _unknown_keys(cfg, RootConfig)
    if unknown:
        raise UserError(
            f"unknown config key(s) {', '.join(unknown)}; see conf/ and resnet_repro/config/__init__.py"
        )
    from omegaconf.errors import MissingMandatoryValue

    merged = OmegaConf.merge(OmegaConf.structured(RootConfig), cfg)
    try:
        obj: Any = OmegaConf.to_object(merged)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", None) or "a required value"
        example = " (e.g. data.root=/path/to/imagenet)" if key == "data.root" else ""
        raise UserError(f"{key} is required but not set: pass {key}=...{example}") from e
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


def per_device_batch(t: TrainerConfig, world_size: int) -> int:
    """Images per process per step: trainer.global_batch split over the world, or trainer.batch_size.

    Both set must agree: a per-device batch (from a preset or the command line) silently replaced
    by the global batch would train with a batch nobody asked for."""
    if t.global_batch is None:
        if t.batch_size is None:
            raise UserError("trainer.batch_size and trainer.global_batch are both null: set one of them")
        return t.batch_size
    if t.global_batch % world_size != 0:
        raise UserError(
            f"trainer.global_batch={t.global_batch} is not divisible by the world size {world_size}; "
            f"choose a multiple of {world_size} or another number of processes"
        )
    if t.batch_size is not None and t.batch_size * world_size != t.global_batch:
        processes = f"{world_size} process{'es' if world_size > 1 else ''}"
        raise UserError(
            f"trainer.batch_size={t.batch_size} per process x {processes} disagrees with "
            f"trainer.global_batch={t.global_batch}; pass trainer.batch_size=null to split the global "
            "batch over the processes, or trainer.global_batch=null to use the per-process batch"
        )
    return t.global_batch // world_size


def validate(cfg: RootConfig) -> None:
    """Cross-field checks a schema cannot express, one section at a time. Raises UserError naming
    the value."""
    _validate_trainer(cfg.trainer)
    _validate_optim(cfg.optim)
    _validate_data(cfg.data)
    _validate_model_selection(cfg)
    if cfg.reference not in REFERENCES:
        raise UserError(f"reference={cfg.reference!r} is not one of {', '.join(REFERENCES)}")
    _validate_regularization(cfg.regularization)
    _validate_schedule(cfg.schedule)
    _validate_stabilizer(cfg.stabilizer, cfg.trainer.epochs)
    m = cfg.model
    if m.stem not in STEMS:
        raise UserError(
            f"model.stem={m.stem!r} is not one of {', '.join(STEMS)} (cifar: 3x3 stride-1 first conv, "
            "no max pool, for 32 px images)"
        )
    if m.gn_groups < 1 or 64 % m.gn_groups != 0:
        raise UserError(
            f"model.gn_groups={m.gn_groups} must divide 64 (every ResNet width is a multiple of 64): "
            "1, 2, 4, 8, 16, 32 or 64"
        )
    if cfg.bench.trials < 1 or cfg.bench.steps < 1:
        raise UserError(f"bench.trials={cfg.bench.trials} and bench.steps={cfg.bench.steps} must be >= 1")
    _validate_plan(cfg.plan)
    if cfg.logging.log_every_steps <= 0:
        raise UserError(
            f"logging.log_every_steps={cfg.logging.log_every_steps} must be a positive number of steps"
        )
    _validate_eval(cfg.eval)


def _validate_trainer(t: TrainerConfig) -> None:
    if t.batch_size is not None and t.batch_size <= 0:
        raise UserError(f"trainer.batch_size={t.batch_size} must be a positive number of images per device")
    if t.batch_size is None and t.global_batch is None:
        raise UserError("trainer.batch_size and trainer.global_batch are both null: set one of them")
    if t.ema.decay is not None and not 0 < t.ema.decay < 1:
        raise UserError(f"trainer.ema.decay={t.ema.decay} must be in (0, 1), or null for no weight average")
    if t.global_batch is not None and t.global_batch <= 0:
        raise UserError(f"trainer.global_batch={t.global_batch} must be a positive number of images, or null")
    if t.epochs <= 0:
        raise UserError(f"trainer.epochs={t.epochs} must be positive")
    if t.nproc <= 0:
        raise UserError(f"trainer.nproc={t.nproc} must be a positive number of processes")
    if t.precision not in PRECISIONS:
        raise UserError(f"trainer.precision={t.precision!r} is not one of {', '.join(PRECISIONS)}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"trainer.device={t.device!r} is not one of auto, cpu, cuda")
    if t.checkpoint_every_minutes is not None and t.checkpoint_every_minutes <= 0:
        raise UserError(
            f"trainer.checkpoint_every_minutes={t.checkpoint_every_minutes} must be positive or null"
        )
    if t.keep_last_k < 0:
        raise UserError(f"trainer.keep_last_k={t.keep_last_k} must be >= 0")
    if t.preempt_check_steps <= 0:
        raise UserError(f"trainer.preempt_check_steps={t.preempt_check_steps} must be positive")
    import signal

    for name in t.preempt_signals:
        if not isinstance(getattr(signal, name, None), signal.Signals):
            raise UserError(f"trainer.preempt_signals: {name!r} is not a signal name like SIGUSR1 or SIGTERM")
    if t.resume not in ("auto", "never") and not t.resume.endswith(".pt"):
        raise UserError(f"trainer.resume={t.resume!r} must be auto, never, or a path to a .pt checkpoint")


def _validate_optim(o: OptimConfig) -> None:
    if o.lr_per_256 <= 0:
        raise UserError(f"optim.lr_per_256={o.lr_per_256} must be a positive learning rate")
    if o.weight_decay < 0:
        raise UserError(f"optim.weight_decay={o.weight_decay} must be >= 0")
    if not 0 <= o.momentum < 1:
        raise UserError(
            f"optim.momentum={o.momentum} must be in [0, 1) (SGD's step is amplified by 1 / (1 - momentum))"
        )
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise UserError(f"optim.betas={o.betas} must be two values in [0, 1)")


def _validate_data(d: DataConfig) -> None:
    if d.normalization not in NORMALIZATIONS:
        raise UserError(f"data.normalization={d.normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
    _validate_progressive(d)
    _validate_eval_cap(d)
    if d.subset.per_class is not None and d.subset.per_class < 1:
        raise UserError(f"data.subset.per_class={d.subset.per_class} must be >= 1 image per class, or null")
    if d.subset.classes is not None and (isinstance(d.subset.classes, bool) or d.subset.classes == ""):
        raise UserError(
            f"data.subset.classes={d.subset.classes!r} must be a class count or a file of class names"
        )
    _validate_holdout_and_stats(d)
    if d.backend not in BACKENDS:
        raise UserError(f"data.backend={d.backend!r} is not one of {', '.join(BACKENDS)}")
    if d.decoder not in ("pil", "decode_jpeg"):
        raise UserError(f"data.decoder={d.decoder!r} is not one of pil, decode_jpeg")
    if d.image_size <= 0:
        raise UserError(f"data.image_size={d.image_size} must be a positive number of pixels")
    if not 0 < d.crop_ratio <= 1:
        raise UserError(f"data.crop_ratio={d.crop_ratio} must be in (0, 1]")
    if len(d.mean) != 3 or len(d.std) != 3:
        raise UserError(f"data.mean={d.mean} and data.std={d.std} must have 3 values each (R, G, B)")
    if any(s <= 0 for s in d.std):
        raise UserError(f"data.std={d.std} must be positive")
    _validate_augment(d.augment, d.image_size)


def _validate_eval_cap(d: DataConfig) -> None:
    if d.max_eval_images is not None and d.max_eval_images < 1:
        raise UserError(f"data.max_eval_images={d.max_eval_images} must be >= 1 image, or null for all")


def _validate_progressive(d: DataConfig) -> None:
    pr = d.progressive
    if pr.start_size is None:
        return
    if pr.end_size is None or pr.start_size <= 0 or pr.end_size <= 0 or pr.step <= 0:
        raise UserError(
            f"data.progressive.start_size={pr.start_size} needs a positive end_size (it is "
            f"{pr.end_size}) and step (it is {pr.step}), in pixels"
        )
    if pr.end_epoch is not None and not 0 <= pr.start_epoch <= pr.end_epoch:
        raise UserError(
            f"data.progressive.start_epoch={pr.start_epoch} must be >= 0 and <= end_epoch={pr.end_epoch}"
        )
    if d.normalization == "pixel_mean":
        raise UserError(
            "data.progressive and data.normalization=pixel_mean do not combine: the mean image has "
            "one size (data.image_size); use normalization=computed"
        )


def _validate_holdout_and_stats(d: DataConfig) -> None:
    if d.holdout.stats_from not in ("train", "train_minus_holdout"):
        raise UserError(
            f"data.holdout.stats_from={d.holdout.stats_from!r} is not one of train, train_minus_holdout"
        )
    if d.holdout.stats_from == "train_minus_holdout" and d.holdout.size is None:
        raise UserError("data.holdout.stats_from=train_minus_holdout needs a holdout: set data.holdout.size")
    if d.stats.max_images is not None and d.stats.max_images <= 0:
        raise UserError(f"data.stats.max_images={d.stats.max_images} must be positive or null")
    for key, seed in (("data.holdout.seed", d.holdout.seed), ("data.stats.seed", d.stats.seed)):
        if seed is not None and seed < 0:
            raise UserError(f"{key}={seed} must be a non-negative integer")
    if d.stats.resize is not None and d.stats.resize < 1:
        raise UserError(f"data.stats.resize={d.stats.resize} must be a positive size in pixels or null")


def _validate_augment(a: AugmentConfig, image_size: int) -> None:
    if len(a.scale) != 2 or not 0 < a.scale[0] <= a.scale[1] <= 1:
        raise UserError(f"data.augment.scale={a.scale} must be [low, high] with 0 < low <= high <= 1")
    if len(a.ratio) != 2 or not 0 < a.ratio[0] <= a.ratio[1]:
        raise UserError(f"data.augment.ratio={a.ratio} must be [low, high] with 0 < low <= high")
    if not 0 <= a.pad_crop:
        raise UserError(f"data.augment.pad_crop={a.pad_crop} must be >= 0 pixels")
    if a.scale_short_side is not None:
        lo_hi = list(a.scale_short_side)
        if len(lo_hi) != 2 or not image_size <= lo_hi[0] <= lo_hi[1]:
            raise UserError(
                f"data.augment.scale_short_side={lo_hi} must be [low, high] pixels with "
                f"data.image_size={image_size} <= low <= high"
            )
        if a.random_resized_crop or a.pad_crop > 0:
            raise UserError(
                f"data.augment.scale_short_side={lo_hi} is a training crop of its own: set "
                "data.augment.random_resized_crop=false and data.augment.pad_crop=0 with it"
            )
    if a.pca_lighting < 0:
        raise UserError(f"data.augment.pca_lighting={a.pca_lighting} must be >= 0 (0 = off)")


def _validate_model_selection(cfg: RootConfig) -> None:
    patience = cfg.stabilizer.early_stop.patience
    if patience is not None and patience < 1:
        raise UserError(f"stabilizer.early_stop.patience={patience} must be at least 1 evaluation, or null")
    no_selection = cfg.data.holdout.size is None and not cfg.trainer.select_on_test
    if no_selection and (cfg.schedule.name == "plateau" or patience is not None):
        raise UserError(
            "schedule.name=plateau and stabilizer.early_stop need a model-selection split: set "
            "data.holdout.size (recommended) or trainer.select_on_test=true"
        )


def _validate_regularization(r: RegularizationConfig) -> None:
    for key in ("dropout", "spatial_dropout", "dropblock", "stochastic_depth", "label_smoothing"):
        if not 0 <= getattr(r, key) < 1:
            raise UserError(f"regularization.{key}={getattr(r, key)} must be in [0, 1)")
    if r.l1 < 0:
        raise UserError(f"regularization.l1={r.l1} must be >= 0")
    if r.dropblock > 0 and r.dropblock_size < 1:
        raise UserError(f"regularization.dropblock_size={r.dropblock_size} must be a positive block size")
    if r.dropblock_ramp_epochs < 0:
        raise UserError(
            f"regularization.dropblock_ramp_epochs={r.dropblock_ramp_epochs} must be >= 0 (0: no ramp)"
        )


def _validate_schedule(s: ScheduleConfig) -> None:
    if s.metric not in ("top1", "loss"):
        raise UserError(f"schedule.metric={s.metric!r} is not one of top1, loss")
    if s.patience < 1:
        raise UserError(f"schedule.patience={s.patience} must be at least 1 evaluation")
    if not 0 < s.factor < 1:
        raise UserError(f"schedule.factor={s.factor} must be in (0, 1)")
    if s.min_delta < 0:
        raise UserError(f"schedule.min_delta={s.min_delta} must be >= 0")
    if sorted(s.milestones) != list(s.milestones) or any(m <= 0 for m in s.milestones):
        raise UserError(f"schedule.milestones={s.milestones} must be increasing positive epochs")


def _validate_stabilizer(st: StabilizerConfig, epochs: int) -> None:
    if st.warmup_epochs < 0:
        raise UserError(f"stabilizer.warmup_epochs={st.warmup_epochs} must be >= 0")
    if st.warmup_epochs > 0 and st.warmup_epochs >= epochs:
        raise UserError(
            f"stabilizer.warmup_epochs={st.warmup_epochs} must be shorter than trainer.epochs={epochs}"
        )
    if not 0 < st.warmup_start_factor <= 1:
        raise UserError(f"stabilizer.warmup_start_factor={st.warmup_start_factor} must be in (0, 1]")
    if st.nonfinite not in ("stop", "skip", "off"):
        raise UserError(f"stabilizer.nonfinite={st.nonfinite!r} is not one of stop, skip, off")
    if st.early_stop.metric not in ("top1", "loss"):
        raise UserError(f"stabilizer.early_stop.metric={st.early_stop.metric!r} is not one of top1, loss")
    if st.early_stop.min_delta < 0:
        raise UserError(f"stabilizer.early_stop.min_delta={st.early_stop.min_delta} must be >= 0")
    if st.max_norm is not None and st.max_norm <= 0:
        raise UserError(f"stabilizer.max_norm={st.max_norm} must be positive, or null to turn clipping off")
    if st.max_skips <= 0:
        raise UserError(f"stabilizer.max_skips={st.max_skips} must be a positive number of steps")


def _validate_plan(pl: PlanConfig) -> None:
    for key, value in (
        ("train_images", pl.train_images),
        ("img_per_s_per_gpu", pl.img_per_s_per_gpu),
        ("img_per_s_size", pl.img_per_s_size),
        ("eval_img_per_s_per_gpu", pl.eval_img_per_s_per_gpu),
        ("world_size", pl.world_size),
    ):
        if value is not None and value <= 0:
            raise UserError(f"plan.{key}={value} must be positive, or null")
    if not 0 < pl.scaling_efficiency <= 1:
        raise UserError(
            f"plan.scaling_efficiency={pl.scaling_efficiency} must be in (0, 1]: a fraction of linear"
        )
    if pl.measure_steps < 1:
        raise UserError(f"plan.measure_steps={pl.measure_steps} must be >= 1")


def eval_protocols(ev: EvalConfig) -> list[str]:
    """eval.protocol as a list of protocol names (one name, or a list of them)."""
    return [ev.protocol] if isinstance(ev.protocol, str) else list(ev.protocol)


def _validate_eval(ev: EvalConfig) -> None:
    names = eval_protocols(ev)
    bad = [p for p in names if p not in EVAL_PROTOCOLS]
    if not names or bad or len(set(names)) != len(names):
        raise UserError(
            f"eval.protocol={ev.protocol!r} is not one of {', '.join(EVAL_PROTOCOLS)}, nor a list of "
            "different ones (e.g. [ten_crop,multiscale])"
        )
    if not ev.scales or any(x <= 0 for x in ev.scales):
        raise UserError(f"eval.scales={ev.scales} must be a non-empty list of shorter sides in pixels (> 0)")
