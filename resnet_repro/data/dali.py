"""NVIDIA DALI input pipelines: one definition for both devices.

On CUDA, JPEGs are decoded on the GPU ("mixed") and augmented there; on a CPU-only machine the
same graph runs on the CPU (pipeline device_id=None). Each pipeline reads an explicit list of
files (already sharded and ordered by resnet_repro.data.sharding), so it never looks at global
distributed state itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from resnet_repro.config import DataConfig, UserError

READER_NAME = "Reader"
log = logging.getLogger("resnet_repro")


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
    # He et al. 2016: shorter side drawn uniformly from [low, high] (integers), random square crop
    scale_short_side: tuple[int, int] | None = None
    # PCA lighting noise: std of each eigenvector's weight (resnet_repro.data.lighting); 0 = off
    pca_lighting: float = 0.0
    # data.normalization=pixel_mean: float [3, image_size, image_size] on the [0, 1] scale, subtracted
    # instead of `mean` (every crop is image_size square); then divided by `std` as usual
    mean_image: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        want = (3, self.image_size, self.image_size)
        if self.mean_image is not None and tuple(self.mean_image.shape) != want:
            raise UserError(
                f"the mean image has shape {tuple(self.mean_image.shape)} but data.image_size="
                f"{self.image_size} crops need {want}; use the image size it was computed at, or recompute it"
            )

    def pixel_mean_over_std(self) -> np.ndarray:
        """mean_image / std per channel (float32 [3, S, S]): what is left to subtract from x / (255 std)."""
        assert self.mean_image is not None
        std = np.asarray(self.std, dtype=np.float64).reshape(3, 1, 1)
        return (np.asarray(self.mean_image, dtype=np.float64) / std).astype(np.float32)

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
        mean_image: np.ndarray | None = None,
        eval_mode: str = "center",
    ) -> Transform:
        """`mean` / `std` / `mean_image`: the run's resolved normalization (default: data.mean /
        data.std); `eval_mode`: see the field."""
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
            scale_short_side=None if a.scale_short_side is None else tuple(a.scale_short_side),
            pca_lighting=a.pca_lighting,
            mean_image=mean_image,
            eval_mode=eval_mode,
        )


# nvJPEG's scratch buffers for "mixed" decoding, sized (as in NVIDIA's DALI ResNet-50 examples) for
# ImageNet's largest JPEGs so that they are not reallocated mid-epoch when a large image arrives, and
# the hardware JPEG decoder's (A100/H100) preallocation hints for the same images. DALI preallocates
# them per decoder thread: one device buffer of device_memory_padding and two pinned host buffers
# of host_memory_padding (double buffering; DALI's decoders.image documentation), i.e. ~201 MiB GPU
# + ~268 MiB pinned host per thread, times data.num_threads, per pipeline (8 threads: ~1.6 GiB GPU
# + ~2.1 GiB pinned per training pipeline, ~17 GiB pinned on an 8-GPU node). A training run keeps
# three pipelines alive (train, val, holdout), so only the training decoder gets them, as in
# NVIDIA's examples; the evaluation and statistics decoders keep DALI's defaults and grow their
# buffers on demand (neither is timed per step).
MIXED_DECODER_ARGS = {
    "device_memory_padding": 211_025_920,
    "host_memory_padding": 140_544_512,
    "preallocate_width_hint": 5980,
    "preallocate_height_hint": 6430,
}
HOST_BUFFERS_PER_THREAD = 2  # nvJPEG's pinned host buffers are double-buffered


def preallocated_bytes(decode_args: dict[str, int], num_threads: int) -> tuple[int, int]:
    """(GPU bytes, pinned host bytes) a decoder with `decode_args` preallocates at `num_threads`."""
    gpu = decode_args.get("device_memory_padding", 0) * num_threads
    pinned = decode_args.get("host_memory_padding", 0) * HOST_BUFFERS_PER_THREAD * num_threads
    return gpu, pinned


def decoder_args(gpu: bool, train: bool) -> dict[str, int]:
    """Extra arguments of a pipeline's decoder: the preallocations on the GPU training decoder only."""
    return dict(MIXED_DECODER_ARGS) if gpu and train else {}


def _define_pipeline(
    files: Sequence[str],
    labels: Sequence[int],
    t: Transform,
    gpu: bool,
    decode_args: dict[str, int] | None = None,
    channels_last: bool = False,
):
    """`decode_args`: extra decoder arguments (default: `decoder_args(gpu, t.train)`).
    `channels_last`: emit HWC, which DaliLoader views as NCHW in channels_last memory without a copy."""
    from nvidia.dali import fn

    if decode_args is None:
        decode_args = decoder_args(gpu, t.train)
    jpegs, label = fn.readers.file(
        files=list(files), labels=list(labels), random_shuffle=False, name=READER_NAME
    )
    # keep the steps in this order: DALI derives its random operators' seeds from the pipeline's
    # seed in the order the operators are added, so a reordering may change what a seed draws
    images, crop_pos = _decode_and_crop(jpegs, t, "mixed" if gpu else "cpu", decode_args)
    images = _mirror_and_normalize(images, t, crop_pos, gpu, channels_last)
    if gpu:
        label = label.gpu()
    return images, label


def _decode_and_crop(jpegs, t: Transform, decode_device: str, decode_args: dict[str, int]):
    """Decode, and the transform's crop and resize: (images, where crop_mirror_normalize puts its
    window as crop_pos_x / crop_pos_y arguments, or {} for the centre)."""
    from nvidia.dali import fn, types

    size = [t.image_size, t.image_size]
    # where crop_mirror_normalize puts its window (normalized, 0..1): the centre unless drawn below
    crop_pos: dict = {}
    if t.train and t.scale_short_side is not None:
        # He et al. 2016 Sec. 3.4: shorter side an integer drawn uniformly from [low, high] (as
        # fb.resnet.torch's RandomScale), then a uniformly placed image_size window (taken below)
        images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB, **decode_args)
        images = scale_resize(images, short_side_node(*t.scale_short_side))
        # anchor = round(pos * (W - crop)), pos uniform in [0, 1]: each of the two end offsets is
        # half as likely as an inner one (torchvision draws the integer offset exactly uniformly);
        # with at least 33 offsets at ImageNet sizes the difference is immaterial
        crop_pos = {
            "crop_pos_x": fn.random.uniform(range=[0.0, 1.0]),
            "crop_pos_y": fn.random.uniform(range=[0.0, 1.0]),
        }
    elif t.train and t.pad_crop > 0:
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
            resized, crop_pos = torchvision_resize_and_centre(jpegs, t.eval_resize, t.image_size)
            images = fn.resize(images, size=resized, interp_type=types.INTERP_LINEAR, antialias=True)
    return images, crop_pos


def torchvision_resize_and_centre(jpegs, shorter: int, crop: int):
    """torchvision's Resize(shorter) + CenterCrop(crop) geometry per image, as DALI arithmetic:
    (the resized [H, W] for fn.resize's `size`, crop_pos_x / crop_pos_y that put
    crop_mirror_normalize's window on torchvision's anchor).

    DALI's own resize_shorter rounds the scaled longer side (307.7 -> 308) where torchvision
    truncates it (int(shorter * long / short): 307), and its centre window rounds an odd margin's
    half up (117 / 2 -> 59) where torchvision's int(round(margin / 2)) rounds it to even (58): left
    as DALI does them, half the ImageNet validation images came out one pixel off torchvision's
    window, the window its reference accuracy was measured in."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    # the decoded shape (HWC, EXIF orientation applied as the decoder applies it), read from the
    # file's header on the CPU, so it serves the GPU decoder as well
    shape = fn.peek_image_shape(jpegs, dtype=types.FLOAT64)
    height, width = shape[0], shape[1]
    short = dmath.min(height, width)
    # the same float64 operations as torchvision's, in the same order; the shorter side is exact
    new_height = dmath.floor(shorter * height / short)
    new_width = dmath.floor(shorter * width / short)

    def anchor_position(length):
        # torchvision's anchor round(margin / 2), half to even, over the margin: the position in
        # [0, 1] whose window DALI anchors at position * margin, rounded (exact for whole anchors)
        margin = length - crop
        half = dmath.floor(margin / 2)
        odd = margin - 2 * half
        anchor = half + odd * (half - 2 * dmath.floor(half / 2))  # half + 1 where half is odd
        return fn.cast(anchor / dmath.max(margin, 1), dtype=types.FLOAT)

    size = fn.cast(fn.stack(new_height, new_width), dtype=types.FLOAT)
    return size, {"crop_pos_x": anchor_position(new_width), "crop_pos_y": anchor_position(new_height)}


def _mirror_and_normalize(images, t: Transform, crop_pos: dict, gpu: bool, channels_last: bool):
    """The random flip, the final crop, (x - mean) / std on the 0-255 scale with the PCA lighting
    offset in the mean, and the mean image subtracted where there is one."""
    from nvidia.dali import fn, types

    size = [t.image_size, t.image_size]
    mirror = fn.random.coin_flip(probability=0.5) if (t.train and t.hflip) else 0
    pixel_mean = t.mean_image is not None
    # DALI works on the 0-255 scale; with a mean image, x / (255 std) here and minus
    # mean_image / std below, i.e. (x - 255 mean_image) / (255 std) as the torchvision backend
    mean = [0.0] * 3 if pixel_mean else [m * 255.0 for m in t.mean]
    if t.train and t.pca_lighting > 0:
        # (x - (mean - 255 offset)) / std = (x + 255 offset - mean) / std: the lighting offset added
        # to every pixel before normalization, as a per-sample mean
        offset = lighting_offset_node(fn.random.normal(shape=[3], stddev=t.pca_lighting))
        mean = types.Constant([float(m) for m in mean], dtype=types.FLOAT) - offset * 255.0
    # centre crop (a no-op after the training resize) unless crop_pos is drawn; none for the
    # ten_crop / multiscale loaders
    crop = {"crop": size, **crop_pos} if t.train or t.eval_mode == "center" else {}
    images = fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="HWC" if channels_last else "CHW",
        **crop,
        mean=mean,
        std=[s * 255.0 for s in t.std],
        mirror=mirror,
    )
    if pixel_mean:
        # a constant node on the images' device, produced once and reused for every batch
        mean_image = t.pixel_mean_over_std()  # CHW; HWC where the batches are channels_last views
        images = images - types.Constant(
            mean_image.transpose(1, 2, 0).copy() if channels_last else mean_image,
            layout="HWC" if channels_last else "CHW",
            device="gpu" if gpu else "cpu",
        )
    return images


def short_side_node(low: int, high: int):
    """Per sample, an integer drawn uniformly from [low, high] (fb.resnet.torch's RandomScale:
    torch.random(low, high)), as a float for fn.resize."""
    from nvidia.dali import fn

    return fn.random.uniform(values=[float(v) for v in range(low, high + 1)])


def scale_resize(images, shorter):
    """He et al. 2016's scale augmentation: each image's shorter side resized to `shorter` pixels."""
    from nvidia.dali import fn, types

    return fn.resize(images, resize_shorter=shorter, interp_type=types.INTERP_LINEAR, antialias=True)


def lighting_offset_node(alpha):
    """The RGB offset ([0, 1] scale) of resnet_repro.data.lighting for a per-sample DALI 3-vector
    of eigenvector weights: sum_j alpha_j l_j p_j, written as DALI arithmetic."""
    import numpy as np
    from nvidia.dali import types

    from resnet_repro.data.lighting import IMAGENET_EIGVAL, IMAGENET_EIGVEC

    vec = np.asarray(IMAGENET_EIGVEC, dtype=np.float32)
    columns = [types.Constant(vec[:, j] * np.float32(IMAGENET_EIGVAL[j])) for j in range(3)]
    return alpha[0] * columns[0] + alpha[1] * columns[1] + alpha[2] * columns[2]


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
        channels_last: bool = False,
    ) -> None:
        """`channels_last`: batches come as NCHW views of HWC memory (torch.channels_last), so a
        channels_last model takes them without a copy."""
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
            channels_last=channels_last,
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=(device.index or 0) if gpu else None,
            seed=seed % (2**31),
            prefetch_queue_depth=prefetch,
        )
        padded_gpu, padded_pinned = preallocated_bytes(decoder_args(gpu, transform.train), num_threads)
        if padded_pinned:
            log.info(
                f"DALI training decoder: {num_threads} threads preallocate {padded_gpu / 2**20:.0f} MiB GPU "
                f"+ {padded_pinned / 2**20:.0f} MiB pinned host memory (data.num_threads sets it)"
            )
        try:
            pipe.build()
        except RuntimeError as e:
            raise UserError(f"could not build the DALI pipeline: {dali_error_words(e)}") from e
        self.files = list(files)
        self.num_images = len(files)
        self.batch_size = batch_size
        self.channels_last = channels_last
        # the batches DALI may have run ahead of the one asked for, which an error may come from
        self.in_flight = prefetch + 1
        # DALI's reader carries on across passes (a pass's last batch is cut short, not its reading):
        # batch k of the loader's life starts at file k * batch_size, modulo the number of files
        self.batches_read = 0
        try:  # the iterator runs the pipeline for its first batch here, so a bad file can fail it
            self._iter = DALIGenericIterator(
                pipe,
                ["images", "labels"],
                reader_name=READER_NAME,
                last_batch_policy=LastBatchPolicy.PARTIAL,
                auto_reset=True,
            )
        except RuntimeError as e:  # a bad file among the first batches fails the constructor
            raise UserError(self._describe_failure(e)) from e

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self._iter)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as e:  # DALI fails a whole batch for one bad file: find and name it
                raise UserError(self._describe_failure(e)) from e
            self.batches_read += 1
            out = batch[0]
            labels = out["labels"].reshape(-1).long()  # DALI gives int32 of shape (N, 1)
            if labels.numel() == 0:
                continue
            images = out["images"]
            if self.channels_last:  # NHWC -> NCHW view with channels_last strides: no copy
                images = images.permute(0, 3, 1, 2)
            yield images, labels

    def _describe_failure(self, error: RuntimeError) -> str:
        """The one line for a failed batch: the files PIL cannot decode among those DALI may have had
        in flight (from the reader's position on), else DALI's first line and where it was."""
        start = self.batches_read * self.batch_size
        candidates = reading_window(self.files, start, self.batch_size * self.in_flight)
        bad = undecodable(candidates)
        if bad:
            return (
                f"cannot decode {listing(bad)}. Fix or remove the file, or list it in a file passed as "
                "data.exclude_files (`resnet-repro verify-data` writes bad_files.txt)"
            )
        return (
            f"the input pipeline failed near {candidates[0]} (images {start % self.num_images}.. of "
            f"{self.num_images}, which PIL decodes): {dali_error_words(error)}"
        )


def dali_error_words(error: BaseException) -> str:
    """DALI's error in a few words: the failing operator and what it encountered (its message
    starts "Critical error in pipeline:" and keeps them lines below), else its first line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    operator = next(
        (line.split("`")[1] for line in lines if line.startswith("Error in") and "`" in line), None
    )
    if "encountered:" in lines:
        found = lines[lines.index("encountered:") + 1 :]
        if found:
            return f"{operator}: {found[0]}" if operator else found[0]
    return lines[0].rstrip(":")


def reading_window(files: Sequence[str], start: int, count: int) -> list[str]:
    """The `count` files DALI's reader takes from position `start` on (any position: it wraps around
    the list, as the reader does into its next pass), each file at most once."""
    return [files[(start + k) % len(files)] for k in range(min(len(files), count))]


def undecodable(files: Iterable[str]) -> list[tuple[str, str]]:
    """(file, why) for each of `files` that PIL cannot decode."""
    return [(f, reason) for f in files if (reason := undecodable_reason(f)) is not None]


def listing(bad: Sequence[tuple[str, str]]) -> str:
    """The first three of `undecodable`'s (file, why) pairs, for a one-line error."""
    return "; ".join(f"{f} ({reason})" for f, reason in bad[:3])


def undecodable_reason(path: str) -> str | None:
    """Why PIL cannot fully decode `path` (truncated, unreadable, not an image), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return str(e) or type(e).__name__
    return None
