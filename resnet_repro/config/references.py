"""The published recipes a run may claim (`reference=`), as overrides of conf/config.yaml, and the
keys left out of a run's deviations from its reference."""

from __future__ import annotations

from dataclasses import dataclass

from resnet_repro.config.run_control import RUN_CONTROL_KEYS


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
    expressible here, so not compared: BlurPool (use_blurpool: 1), the ramp's start at 1e-4 x
    peak (this tool's linear_ramp starts at 0), and which parameters skip weight decay (theirs:
    names containing 'bn', so downsample.1 and fc.bias are decayed; here every norm and bias)."""
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
            "optim.decay_norm_and_bias=false",  # no decay on parameters named 'bn' (see above)
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
    # references/classification/presets.py normalizes with ImageNet's published mean and std, where
    # experiment=imagenet_paper computes them from the train split (the summary stars it)
    "torchvision": Reference("torchvision V1", ("experiment=imagenet_paper", "data.normalization=published")),
    # Sec. 3.4 as experiment=he2016 writes it. Not expressible here, so not compared: the paper
    # subtracts the mean image only (the preset also divides by the per-channel std); it does not
    # say on which images "the error plateaus" (the preset: a holdout carved from train) nor
    # whether its multi-scale test adds flips (the preset does, as VGG's dense evaluation it follows)
    "he2016": Reference("He 2016", ("experiment=he2016",)),
    # kuangliu/pytorch-cifar's main.py (cosine over 200 epochs) as experiment=cifar10_resnet18 writes
    # it, with its fixed normalization constants (the preset computes them from the train split)
    "kuangliu_cifar10": Reference(
        "kuangliu/pytorch-cifar ResNet-18",
        (
            "experiment=cifar10_resnet18",
            "data.normalization=published",
            "data.mean=[0.4914,0.4822,0.4465]",
            "data.std=[0.2023,0.1994,0.2010]",
        ),
    ),
    **{f"ffcv_rn50_{n}": _ffcv_rn50(n) for n in FFCV_RN50_RAMPS},
}

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
