"""The config schemas: one dataclass per section of conf/config.yaml, and their registration in
Hydra's ConfigStore (so each conf/<group>/*.yaml names its schema and a misspelt key fails at start).

Imports neither torch nor (until register_configs) Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# omegaconf's marker for a value that must be given (kept local so this module imports without
# Hydra, e.g. on a GPU machine that only has torch: scripts/gpu_check.sh)
MISSING = "???"


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
    # Ranks agree on a pending preemption (and on a periodic checkpoint being due, by rank 0's clock)
    # every this many steps (each check is a small all-reduce)
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

    # Images of the training split (of its data.subset), e.g. 1281167 for ImageNet-1K before it is
    # downloaded; the holdout (data.holdout.size) is carved from them as the run carves it. null =
    # count the training split under data.root (after data.exclude_files and the holdout)
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


def register_configs() -> None:
    """Register the schemas so each conf/<group>/*.yaml can name its schema in its defaults list."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RootConfig)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)
    cs.store(group="data/augment", name="augment_schema", node=AugmentConfig)


NESTED_SCHEMAS: dict[str, type] = {
    "augment": AugmentConfig,
    "ema": EmaConfig,
    "early_stop": EarlyStopConfig,
    "bench": BenchConfig,
    "plan": PlanConfig,
    "holdout": HoldoutConfig,
    "stats": StatsConfig,
}


def child_schema(schema: type, key: str) -> type | None:
    """The dataclass of field `key` of `schema`, or None for a plain value."""
    child = GROUP_SCHEMAS.get(key) if schema is RootConfig else None
    return child or NESTED_SCHEMAS.get(key)
