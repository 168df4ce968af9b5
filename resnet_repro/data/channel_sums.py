"""Exact per-channel pixel sums of images, streamed through DALI (or torchvision's decoders when
the run uses the torchvision backend): the numbers behind the normalization statistics.

Exactness: decoded pixels are integers 0..255, so the per-channel sum and sum of squares are kept as
exact integers (DALI sums uint8 into uint64; in numpy, integer sums in blocks that cannot overflow).
Nothing is rounded until `finalize`, which divides exact integers once. So partial sums from any
number of shards merge exactly (a 2-rank mean/std is bit-identical to the 1-rank one), and the
variance has no E[x^2] - mean^2 cancellation problem at any dataset size. (DALI's reductions do
not offer float64 accumulation; an exact integer accumulator is better than float64 anyway.)

Where the reduction runs: on a GPU, in the DALI graph (mixed decode, reductions on the device, only
[3]-vectors reach the host). On the CPU, DALI's reduction operators cost nearly as much as the JPEG
decode itself (~2 ms per ImageNet image), so the decoded images go to a vectorized numpy kernel
(~0.4 ms) instead; scripts/bench_stats.py measures both against decoding alone.

The file that records the numbers, its fingerprint and the guards against stale or leaking
statistics are in resnet_repro.data.stats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from resnet_repro.config import UserError

READER_NAME = "StatsReader"

# numpy kernel: rows of 1024 pixels (3072 values, so column j holds channel j % 3), summed in blocks
# of 257 rows: the most values <= 255 whose sum fits uint16
_ROW = 3 * 1024
_U16_ROWS = 65535 // 255


@dataclass(frozen=True)
class PartialSums:
    """Exact per-channel sums over some images; add partial sums of disjoint image sets with `+`.

    Pixel values are on the 0..255 scale (integers, exact). The `weighted_*` sums (float64) only
    feed `mean_stderr`: over images i with x_i pixels and channel means m_i on the [0, 1] scale,
    `pixels_sq_sum` is sum x_i^2, `weighted_mean_sum` sum x_i^2 m_i, `weighted_mean_sq_sum`
    sum x_i^2 m_i^2 (the mean weights every pixel, so its error weights every image by its pixels).
    """

    num_images: int = 0
    num_pixels: int = 0  # pixels per channel (sum of H x W)
    sum: tuple[int, int, int] = (0, 0, 0)
    sum_sq: tuple[int, int, int] = (0, 0, 0)
    pixels_sq_sum: float = 0.0
    weighted_mean_sum: tuple[float, float, float] = (0.0, 0.0, 0.0)
    weighted_mean_sq_sum: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __add__(self, other: PartialSums) -> PartialSums:
        def add(a: tuple, b: tuple) -> tuple:
            return tuple(x + y for x, y in zip(a, b, strict=True))

        return PartialSums(
            num_images=self.num_images + other.num_images,
            num_pixels=self.num_pixels + other.num_pixels,
            sum=add(self.sum, other.sum),
            sum_sq=add(self.sum_sq, other.sum_sq),
            pixels_sq_sum=self.pixels_sq_sum + other.pixels_sq_sum,
            weighted_mean_sum=add(self.weighted_mean_sum, other.weighted_mean_sum),
            weighted_mean_sq_sum=add(self.weighted_mean_sq_sum, other.weighted_mean_sq_sum),
        )

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(int64 [8], float64 [7]) for an all-reduce: counts and exact sums, then the weighted sums.

        int64 is exact here: ImageNet train has ~1.7e11 pixels per channel, so sum_sq < 1.2e16 < 2^63.
        """
        ints = [self.num_images, self.num_pixels, *self.sum, *self.sum_sq]
        if max(ints) >= 2**63:
            raise OverflowError(f"partial sums {ints} do not fit int64")
        return (
            np.array(ints, dtype=np.int64),
            np.array(
                [self.pixels_sq_sum, *self.weighted_mean_sum, *self.weighted_mean_sq_sum], dtype=np.float64
            ),
        )

    @classmethod
    def from_arrays(cls, ints: Any, floats: Any) -> PartialSums:
        i = [int(v) for v in np.asarray(ints).reshape(-1)]
        f = [float(v) for v in np.asarray(floats).reshape(-1)]
        return cls(i[0], i[1], tuple(i[2:5]), tuple(i[5:8]), f[0], tuple(f[1:4]), tuple(f[4:7]))


def merge(parts: Iterable[PartialSums]) -> PartialSums:
    total = PartialSums()
    for p in parts:
        total = total + p
    return total


def finalize(sums: PartialSums) -> tuple[list[float], list[float]]:
    """(mean[3], std[3]) on the [0, 1] scale; std is the population std over all pixels.

    var = (N * Q - S^2) / (255 N)^2 is evaluated in exact integer arithmetic and rounded once
    (Python's int / int is correctly rounded), so there is no cancellation however small the
    variance is relative to the mean.
    """
    n = sums.num_pixels
    if n <= 0:
        raise UserError("no pixels to compute statistics from (empty file list?)")
    mean = [s / (255 * n) for s in sums.sum]
    pairs = zip(sums.sum, sums.sum_sq, strict=True)
    std = [math.sqrt((n * q - s * s) / (255 * 255 * n * n)) for s, q in pairs]
    return mean, std


def mean_stderr(sums: PartialSums) -> list[float] | None:
    """Standard error of each channel mean when the images are a sample. The mean weights every
    pixel (sum of pixels over number of pixels: a ratio of two sample totals), so this is the ratio
    estimator's: sqrt(n / (n - 1) * sum x_i^2 (m_i - R)^2) / sum x_i, for images of x_i pixels and
    channel means m_i, R the mean (Cochran, Sampling Techniques, ch. 6). Without finite-population
    correction, and ignoring the per-class stratification (which can only lower the true error).
    None below two images."""
    n = sums.num_images
    if n < 2 or sums.num_pixels <= 0:
        return None
    out = []
    for total, b, a in zip(sums.sum, sums.weighted_mean_sum, sums.weighted_mean_sq_sum, strict=True):
        r = total / (255 * sums.num_pixels)
        spread = max(a - 2 * r * b + r * r * sums.pixels_sq_sum, 0.0)  # sum x_i^2 (m_i - r)^2
        out.append(math.sqrt(n / (n - 1) * spread) / sums.num_pixels)
    return out


class _HostReducer:
    """Exact per-channel sums of HWC uint8 RGB images in numpy, for the CPU path.

    The pixels of an image are viewed as rows of 1024 pixels (3072 values: column j holds channel
    j % 3) and summed down the rows in blocks of 257 rows: uint16 holds 257 values <= 255 exactly, and
    uint32 holds 257 squares <= 255^2 (255^2 itself still fits uint16, so squaring happens in place).
    The < 1024 leftover pixels are summed directly. Scratch buffers are reused across images:
    allocating fresh arrays per image page-faults and doubled the cost when measured.
    About 2 ns per pixel on one core, vs ~11 for DALI's CPU reduction operators.
    """

    def __init__(self) -> None:
        self._block = np.empty((_U16_ROWS, _ROW), dtype=np.uint16)
        self._t16 = np.empty(_ROW, dtype=np.uint16)
        self._t32 = np.empty(_ROW, dtype=np.uint32)
        self._s = np.empty(_ROW, dtype=np.uint32)  # one image: exact up to 16M rows of 1024 pixels
        self._q = np.zeros(_ROW, dtype=np.uint64)  # squares of all images since take_squares()
        self._q_tail = np.zeros(3, dtype=np.int64)

    def add_image(self, image: np.ndarray) -> np.ndarray:
        """Per-channel sums (uint64 [3]) of one image; its squares go to the running total."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HWC uint8 RGB image, got {image.dtype} of shape {image.shape}")
        flat = np.ascontiguousarray(image).reshape(-1)
        rows = flat.size // _ROW
        full = flat[: rows * _ROW].reshape(rows, _ROW)
        self._s[:] = 0
        for r in range(0, rows, _U16_ROWS):
            x = self._block[: min(_U16_ROWS, rows - r)]
            np.copyto(x, full[r : r + len(x)])
            np.add.reduce(x, axis=0, out=self._t16)
            np.add(self._s, self._t16, out=self._s)
            np.multiply(x, x, out=x)
            np.add.reduce(x, axis=0, dtype=np.uint32, out=self._t32)
            np.add(self._q, self._t32, out=self._q)
        tail = flat[rows * _ROW :].reshape(-1, 3).astype(np.int64)
        self._q_tail += (tail * tail).sum(axis=0)
        return self._s.reshape(-1, 3).sum(axis=0, dtype=np.uint64) + tail.sum(axis=0).astype(np.uint64)

    def take_squares(self) -> list[int]:
        """Per-channel sum of squares since the last call (exact Python ints); resets the total."""
        q = self._q.reshape(-1, 3).sum(axis=0, dtype=np.uint64)
        out = [int(a) + int(b) for a, b in zip(q, self._q_tail, strict=True)]
        self._q[:] = 0
        self._q_tail[:] = 0
        return out


def image_sums(image: np.ndarray) -> tuple[list[int], list[int]]:
    """Exact per-channel (sum, sum of squares) of one HWC uint8 RGB image, on the 0..255 scale."""
    reducer = _HostReducer()
    s = reducer.add_image(image)
    return [int(v) for v in s], reducer.take_squares()


# ------------------------------------------------------------------------------------ DALI streaming
def _device_of(device: Any) -> tuple[bool, int]:
    """(is_cuda, index) from a torch.device or a string like "cpu", "cuda", "cuda:1"."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    index = getattr(device, "index", None)
    if index is None and ":" in str(device):
        index = int(str(device).split(":")[1])
    if kind not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not cpu or cuda")
    return kind == "cuda", index or 0


def undecodable_error(bad: Sequence[tuple[str, str]]) -> UserError:
    from resnet_repro.data.dali import listing

    return UserError(
        f"the statistics pass cannot decode {listing(bad)}; fix or remove the file, or list it in a file "
        "passed as data.exclude_files (`resnet-repro verify-data` writes bad_files.txt)"
    )


def _dali_error(e: RuntimeError, batch: Sequence[str] = ()) -> UserError:
    """The failing batch's undecodable files by name when PIL finds them (DALI says only which
    sample of the batch failed); else DALI's error text after 'encountered:'."""
    from resnet_repro.data.dali import undecodable

    bad = undecodable(batch)
    if bad:
        return undecodable_error(bad)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if "encountered:" in lines:
        lines = lines[lines.index("encountered:") + 1 :]
    detail = "; ".join(ln for ln in lines if not ln.startswith(("Current pipeline", "C++ context")))
    return UserError(f"the statistics pass failed in DALI: {detail or str(e)} (an undecodable image?)")


def _build_pipeline(
    files: list[str],
    *,
    gpu: bool,
    device_id: int,
    resize_shorter: int | None,
    reduce_in_dali: bool,
    decode_only: bool,
    batch_size: int,
    num_threads: int,
    prefetch: int,
):
    from nvidia.dali import fn, pipeline_def, types

    def graph():
        # pad_last_batch: the last batch of a pass repeats the last file instead of running into
        # the next pass, so each pass is exactly ceil(n / batch) batches; the padding is dropped
        jpegs, _ = fn.readers.file(files=files, random_shuffle=False, pad_last_batch=True, name=READER_NAME)
        # RGB output: grayscale JPEGs come out with three equal channels. DALI's default decoder
        # buffers (grown on demand): the training decoder's preallocated paddings (~2.1 GiB pinned
        # at 8 threads) would buy nothing for one pass that is not timed per step
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        if resize_shorter:
            images = fn.resize(
                images, resize_shorter=resize_shorter, interp_type=types.INTERP_LINEAR, antialias=True
            )
        if decode_only or not reduce_in_dali:
            return images  # uint8 HWC, one shape per image
        # Exact integer sums per image: uint8 -> uint64 sum; squares in uint16 (255^2 fits) -> uint64.
        # The accumulator type is requested, not left to DALI's default (uint64 in DALI 2.4; older
        # versions accumulated in the input type, which overflows past 2^32 / 255 = 16.8M pixels)
        wide = fn.cast(images, dtype=types.UINT16)
        return (
            fn.reductions.sum(images, axes=[0, 1], dtype=types.UINT64),
            fn.reductions.sum(wide * wide, axes=[0, 1], dtype=types.UINT64),
            images.shape(dtype=types.INT64),
        )

    pipe = pipeline_def(graph)(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if gpu else None,
        prefetch_queue_depth=prefetch,
        seed=0,
    )
    try:
        pipe.build()
    except RuntimeError as e:
        raise _dali_error(e) from e
    return pipe


def _host(tensor_list: Any) -> Any:
    return tensor_list.as_cpu() if hasattr(tensor_list, "as_cpu") else tensor_list


def _check_resize(resize_shorter: int | None) -> None:
    if resize_shorter is not None and resize_shorter < 1:
        raise UserError(f"data.stats.resize={resize_shorter} must be a positive size in pixels or null")


def stream(
    files: Sequence[str],
    *,
    resize_shorter: int | None,
    num_threads: int,
    batch_size: int,
    device: Any,
    reduce_in: str = "auto",
    decode_only: bool = False,
    passes: int = 1,
    prefetch: int = 2,
    on_built: Callable[[], object] | None = None,
    on_batch: Callable[[int], object] | None = None,
) -> tuple[PartialSums, int]:
    """Run the statistics pipeline over `files` `passes` times; returns (sums, images processed).

    `decode_only=True` runs the same reader/decoder/resize and discards the images (the baseline
    for scripts/bench_stats.py). `reduce_in`: "dali" (reduction ops in the graph), "numpy" (decoded
    images reduced on the host) or "auto" (dali on a GPU, numpy on the CPU: see the module docstring).
    `on_built` is called once the pipeline is built (a benchmark starts its clock there);
    `on_batch(i)` before each batch is run, with the index in `files` of the batch's first file.
    """
    if reduce_in not in ("auto", "dali", "numpy"):
        raise ValueError(f"reduce_in={reduce_in!r} is not auto, dali or numpy")
    if batch_size < 1 or num_threads < 1:
        raise UserError(f"batch_size={batch_size} and num_threads={num_threads} must be positive")
    _check_resize(resize_shorter)
    files = [str(f) for f in files]
    if not files:
        return PartialSums(), 0
    gpu, device_id = _device_of(device)
    in_dali = gpu if reduce_in == "auto" else reduce_in == "dali"
    pipe = _build_pipeline(
        files,
        gpu=gpu,
        device_id=device_id,
        resize_shorter=resize_shorter,
        reduce_in_dali=in_dali,
        decode_only=decode_only,
        batch_size=batch_size,
        num_threads=num_threads,
        prefetch=prefetch,
    )
    acc = _Accumulator()
    reducer = _HostReducer()
    if on_built is not None:
        on_built()
    per_pass = -(-len(files) // batch_size)
    done = 0
    try:
        for _ in range(passes):
            for b in range(per_pass):
                if on_batch is not None:
                    on_batch(b * batch_size)
                outs = pipe.run()
                take = min(batch_size, len(files) - b * batch_size)  # drop the last batch's padding
                done += take
                if decode_only:
                    continue
                if in_dali:
                    # [batch, 3] each: uniform shapes, so one array per output
                    s, q, shape = (np.asarray(_host(t).as_array())[:take] for t in outs)
                    q_sum = [int(v) for v in q.sum(axis=0, dtype=np.uint64)]
                else:
                    decoded = _host(outs[0])  # GPU-decoded images reduced on the host, too
                    images = [np.asarray(decoded[i]) for i in range(take)]
                    s = np.stack([reducer.add_image(im) for im in images])
                    q_sum = reducer.take_squares()
                    shape = np.array([im.shape for im in images], dtype=np.int64)
                acc.add(s, q_sum, shape[:, 0] * shape[:, 1])
    except RuntimeError as e:
        raise _dali_error(e, files[done : done + batch_size]) from e
    return acc.result(), done


class _Accumulator:
    """Exact running totals (Python ints) plus float64 sums of per-image means."""

    def __init__(self) -> None:
        self.images = 0
        self.pixels = 0
        self.sum = [0, 0, 0]
        self.sum_sq = [0, 0, 0]
        self.pixels_sq_sum = 0.0
        self.weighted_mean_sum = np.zeros(3, dtype=np.float64)
        self.weighted_mean_sq_sum = np.zeros(3, dtype=np.float64)

    def add(self, s: np.ndarray, q_sum: list[int], pixels: np.ndarray) -> None:
        """s: uint64 [k, 3] per-image sums on the 0..255 scale; q_sum: the batch's sums of squares;
        pixels: int64 [k] pixels per image."""
        # one batch stays far below 2^64 (256 images x 25 Mpx x 255 ~ 2e12), so uint64 column
        # sums are exact; the running totals are Python ints
        self.images += len(pixels)
        self.pixels += int(pixels.sum())
        for c, v in enumerate(s.sum(axis=0, dtype=np.uint64)):
            self.sum[c] += int(v)
        for c in range(3):
            self.sum_sq[c] += q_sum[c]
        x = pixels.astype(np.float64)
        means = s.astype(np.float64) / (255.0 * x[:, None])
        x2 = (x * x)[:, None]
        self.pixels_sq_sum += float((x * x).sum())
        self.weighted_mean_sum += (x2 * means).sum(axis=0)
        self.weighted_mean_sq_sum += (x2 * means * means).sum(axis=0)

    def result(self) -> PartialSums:
        return PartialSums(
            num_images=self.images,
            num_pixels=self.pixels,
            sum=tuple(self.sum),
            sum_sq=tuple(self.sum_sq),
            pixels_sq_sum=self.pixels_sq_sum,
            weighted_mean_sum=tuple(float(v) for v in self.weighted_mean_sum),
            weighted_mean_sq_sum=tuple(float(v) for v in self.weighted_mean_sq_sum),
        )


# ------------------------------------------------------------------------- torchvision streaming
def _torchvision_image(path: str, decoder: str, resize_shorter: int | None) -> np.ndarray:
    """One image as HWC uint8 RGB, decoded like the torchvision backend (upright, grayscale/CMYK to
    RGB), its shorter side resized like DALI's stats pipeline when `resize_shorter` is set."""
    import torchvision.transforms.v2.functional as F

    from resnet_repro.data.torch_loader import _decode_tensor, _open_pil

    if decoder == "pil":
        image = _open_pil(path)
        if resize_shorter:
            image = F.resize(
                image, [resize_shorter], interpolation=F.InterpolationMode.BILINEAR, antialias=True
            )
        return np.asarray(image)
    tensor = _decode_tensor(path)
    if resize_shorter:
        tensor = F.resize(
            tensor, [resize_shorter], interpolation=F.InterpolationMode.BILINEAR, antialias=True
        )
    return tensor.permute(1, 2, 0).numpy()


def stream_torchvision(
    files: Sequence[str],
    *,
    decoder: str,
    resize_shorter: int | None,
    num_threads: int,
    batch_size: int,
    decode_only: bool = False,
) -> tuple[PartialSums, int]:
    """The statistics pass without DALI: each of `num_threads` threads decodes an image with
    torchvision's decoder and reduces it with its own copy of the numpy kernel (both release the
    GIL), so decoding and summing overlap; the exact per-image sums are merged in order."""
    import threading

    if decoder not in ("pil", "decode_jpeg"):
        raise UserError(f"data.decoder={decoder!r} is not pil or decode_jpeg")
    _check_resize(resize_shorter)
    local = threading.local()

    def one(path: str) -> tuple[np.ndarray, list[int], int] | None:
        image = _torchvision_image(path, decoder, resize_shorter)
        if decode_only:
            return None
        if not hasattr(local, "reducer"):
            local.reducer = _HostReducer()
        sums = local.reducer.add_image(image)
        return sums, local.reducer.take_squares(), image.shape[0] * image.shape[1]

    acc = _Accumulator()
    done = 0
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        for start in range(0, len(files), batch_size):
            results = list(pool.map(one, files[start : start + batch_size]))
            done += len(results)
            if decode_only:
                continue
            sums = np.stack([r[0] for r in results])  # type: ignore[index]
            squares = [sum(r[1][c] for r in results) for c in range(3)]  # type: ignore[index]
            pixels = np.array([r[2] for r in results], dtype=np.int64)  # type: ignore[index]
            acc.add(sums, squares, pixels)
    return acc.result(), done
