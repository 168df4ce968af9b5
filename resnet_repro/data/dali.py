"""NVIDIA DALI input pipelines: one definition for both devices.

On CUDA, JPEGs are decoded on the GPU ("mixed") and augmented there; on a CPU-only machine the
same graph runs on the CPU (pipeline device_id=None). Each pipeline reads an explicit list of
files (already sharded and ordered by resnet_repro.data.sharding), so it never looks at global
distributed state itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from resnet_repro.config import DataConfig, UserError

READER_NAME = "Reader"


@dataclass(frozen=True)
class Transform:
    """What a pipeline does to each image (plain values, so tests can build one directly)."""

    train: bool
    image_size: int
    crop_ratio: float
    mean: tuple[float, float, float]  # on the [0, 1] scale
    std: tuple[float, float, float]
    random_resized_crop: bool = True
    pad_crop: int = 0
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False
    # Evaluation only: center = resize to eval_resize + centre crop (the training-time evaluation);
    # resize = the same resize, no crop (ten_crop takes its crops on the device); decode = the decoded
    # image as it is (multiscale resizes it on the device). Images of the last two differ in size, so
    # their loaders run one image per batch.
    eval_mode: str = "center"

    @property
    def eval_resize(self) -> int:
        """Shorter side before the evaluation centre crop (224 / 0.875 = 256)."""
        return round(self.image_size / self.crop_ratio)

    @classmethod
    def from_config(
        cls,
        cfg: DataConfig,
        train: bool,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        eval_mode: str = "center",
    ) -> Transform:
        """`mean` / `std`: the run's resolved normalization (default: data.mean / data.std);
        `eval_mode`: see the field."""
        a = cfg.augment
        mean = cfg.mean if mean is None else mean
        std = cfg.std if std is None else std
        return cls(
            train=train,
            image_size=cfg.image_size,
            crop_ratio=cfg.crop_ratio,
            mean=tuple(mean),
            std=tuple(std),
            random_resized_crop=a.random_resized_crop,
            pad_crop=a.pad_crop,
            scale=tuple(a.scale),
            ratio=tuple(a.ratio),
            hflip=a.hflip,
            eval_mode=eval_mode,
        )


# nvJPEG's scratch buffers for "mixed" decoding, sized (as in NVIDIA's DALI ResNet-50 examples) for
# ImageNet's largest JPEGs so that they are not reallocated mid-epoch when a large image arrives
MIXED_DECODER_ARGS = {"device_memory_padding": 211_025_920, "host_memory_padding": 140_544_512}


def _define_pipeline(
    files: Sequence[str],
    labels: Sequence[int],
    t: Transform,
    gpu: bool,
    decode_args: dict[str, int] | None = None,
):
    """`decode_args`: extra decoder arguments (default: MIXED_DECODER_ARGS on the GPU, none on the CPU)."""
    from nvidia.dali import fn, types

    decode_device = "mixed" if gpu else "cpu"
    if decode_args is None:
        decode_args = MIXED_DECODER_ARGS if gpu else {}
    jpegs, label = fn.readers.file(
        files=list(files), labels=list(labels), random_shuffle=False, name=READER_NAME
    )
    size = [t.image_size, t.image_size]
    if t.train and t.pad_crop > 0:
        # CIFAR style: zero-pad pad_crop pixels on each side, then a random image_size window
        images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB, **decode_args)
        images = fn.resize(
            images, resize_shorter=t.image_size, interp_type=types.INTERP_LINEAR, antialias=True
        )
        padded = t.image_size + 2 * t.pad_crop
        images = fn.crop(images, crop=[padded, padded], out_of_bounds_policy="pad", fill_values=0)
        # a whole-pixel offset in 0..2*pad_crop, each equally likely (as torchvision's RandomCrop):
        # crop_pos k / (2 * pad) puts the window exactly k pixels in
        positions = [k / (2 * t.pad_crop) for k in range(2 * t.pad_crop + 1)]
        images = fn.crop(
            images,
            crop=size,
            crop_pos_x=fn.random.uniform(values=positions),
            crop_pos_y=fn.random.uniform(values=positions),
        )
    elif t.train and t.random_resized_crop:
        # Decode only the sampled crop window (ROI decode), then resize it to the square size
        images = fn.decoders.image_random_crop(
            jpegs,
            device=decode_device,
            output_type=types.RGB,
            **decode_args,
            random_area=list(t.scale),
            random_aspect_ratio=list(t.ratio),
            num_attempts=10,
        )
        images = fn.resize(images, size=size, interp_type=types.INTERP_LINEAR, antialias=True)
    else:
        images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB, **decode_args)
        if t.train or t.eval_mode != "decode":
            images = fn.resize(
                images, resize_shorter=t.eval_resize, interp_type=types.INTERP_LINEAR, antialias=True
            )
    mirror = fn.random.coin_flip(probability=0.5) if (t.train and t.hflip) else 0
    # centre crop (a no-op after the training resize); none for the ten_crop / multiscale loaders
    crop = {"crop": size} if t.train or t.eval_mode == "center" else {}
    images = fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[m * 255.0 for m in t.mean],  # DALI works on the 0-255 scale
        std=[s * 255.0 for s in t.std],
        mirror=mirror,
        **crop,
    )
    if gpu:
        label = label.gpu()
    return images, label


class DaliLoader:
    """Iterates (images float32 NCHW, labels int64 [N]) over one list of files, once per pass.

    The last batch may be partial (evaluation); it is never padded with repeated images.
    """

    def __init__(
        self,
        files: Sequence[str],
        labels: Sequence[int],
        transform: Transform,
        *,
        batch_size: int,
        num_threads: int,
        seed: int,
        device: torch.device,
        prefetch: int = 2,
    ) -> None:
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if len(files) == 0:
            raise ValueError("DaliLoader needs at least one file")
        gpu = device.type == "cuda"
        pipe = pipeline_def(_define_pipeline)(
            files,
            labels,
            transform,
            gpu,
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=(device.index or 0) if gpu else None,
            seed=seed % (2**31),
            prefetch_queue_depth=prefetch,
        )
        try:
            pipe.build()
        except RuntimeError as e:
            raise UserError(f"could not build the DALI pipeline: {str(e).splitlines()[0]}") from e
        self.files = list(files)
        self.num_images = len(files)
        self.batch_size = batch_size
        self._iter = DALIGenericIterator(
            pipe,
            ["images", "labels"],
            reader_name=READER_NAME,
            last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=True,
        )

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        done = 0
        batches = iter(self._iter)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as e:  # DALI fails a whole batch for one bad file: find and name it
                raise UserError(self._describe_failure(done, e)) from e
            done += 1
            out = batch[0]
            labels = out["labels"].reshape(-1).long()  # DALI gives int32 of shape (N, 1)
            if labels.numel() == 0:
                continue
            yield out["images"], labels

    def _describe_failure(self, batch_index: int, error: RuntimeError) -> str:
        # the failing batch is the next one in reading order (a repeated pass may start elsewhere:
        # then every file is checked, which is slow but only happens on this error path)
        start = (batch_index * self.batch_size) % max(1, self.num_images)
        candidates = self.files[start : start + self.batch_size]
        bad = [(f, reason) for f in candidates if (reason := undecodable_reason(f)) is not None]
        if not bad:
            bad = [(f, reason) for f in self.files if (reason := undecodable_reason(f)) is not None]
        if bad:
            listed = "; ".join(f"{f} ({reason})" for f, reason in bad[:3])
            return (
                f"cannot decode {listed}. Fix or remove the file, or list it in a file passed as "
                "data.exclude_files (`resnet-repro verify-data` writes bad_files.txt)"
            )
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"the input pipeline failed near {candidates[0]} (batch {batch_index}): {first}"


def undecodable_reason(path: str) -> str | None:
    """Why PIL cannot fully decode `path` (truncated, unreadable, not an image), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return str(e) or type(e).__name__
    return None
