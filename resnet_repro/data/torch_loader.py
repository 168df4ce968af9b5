"""torchvision DataLoader backend: the same Transform semantics as the DALI pipelines, on the CPU.

It is the fallback where DALI is unavailable and the parity reference for it. Like DaliLoader it reads
an explicit, already sharded and ordered list of files (resnet_repro.data.sharding) with a plain
sequential sampler, so it never looks at global distributed state itself.

Two decoders:
  pil          PIL open + convert("RGB"), geometry with torchvision.transforms.v2 on the PIL image
               (the classic torchvision ImageNet recipe).
  decode_jpeg  torchvision.io.decode_jpeg (libjpeg-turbo) to a uint8 tensor, geometry with
               transforms.v2 on uint8 tensors; anything that is not a JPEG (ImageNet has a PNG named
               .JPEG) or that libjpeg-turbo refuses goes through PIL instead.

Workers return uint8 CHW crops (and each image's PCA lighting offset, three floats); conversion to
float, the lighting offset and normalization happen once per batch on `device` (as DALI does): a
quarter of the bytes through shared memory and the host-to-device copy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from resnet_repro.config import UserError
from resnet_repro.data.dali import Transform
from resnet_repro.data.lighting import draw_lighting_offset

DECODERS = ("pil", "decode_jpeg")
_EXIF_ORIENTATION = 0x0112
_BILINEAR = InterpolationMode.BILINEAR
ImageLike = Image.Image | torch.Tensor


# ------------------------------------------------------------------------------------------- decode
def _open_pil(path: str) -> Image.Image:
    """RGB PIL image, upright: DALI's decoders apply the EXIF orientation (adjust_orientation=True)."""
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            if orientation in range(2, 9):
                im = ImageOps.exif_transpose(im)
            im.load()  # decode now: the file closes when the with block ends
            # convert() copies; skip it when the pixels already are 8-bit RGB
            return im if im.mode == "RGB" else im.convert("RGB")
    except FileNotFoundError as e:
        raise UserError(f"image {path} does not exist") from e
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise UserError(f"could not decode image {path}: {e}") from e


def _decode_tensor(path: str) -> torch.Tensor:
    """uint8 RGB tensor (3, H, W) via libjpeg-turbo; PIL for non-JPEG content or JPEGs it refuses."""
    # torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns on every call;
    # they still work, and a per-image warning from every worker would bury the training log
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision.io")
        try:
            data = read_file(path)
        except RuntimeError as e:  # torchvision reports a missing file as a RuntimeError
            raise UserError(f"could not read image {path}: {str(e).splitlines()[0]}") from e
        if data.numel() >= 2 and data[0].item() == 0xFF and data[1].item() == 0xD8:  # JPEG start-of-image
            try:
                # mode=RGB expands grayscale and converts CMYK (Adobe-inverted too) the way PIL does
                return decode_jpeg(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
            except RuntimeError:
                pass  # a corrupt or exotic JPEG: PIL gets a second chance and names the file if it fails
    return F.pil_to_tensor(_open_pil(path))


# ---------------------------------------------------------------------------------------- transform
def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop window, drawn from `generator`.

    torchvision's v2.RandomResizedCrop.make_params draws from the global RNG; this is the same
    algorithm (10 attempts, area uniform, aspect ratio log-uniform, then a centre crop with the
    ratio clamped) on an explicit generator, so each sample's crop depends only on its own seed.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_short_side(low_high: tuple[int, int], generator: torch.Generator) -> int:
    """The training shorter side of the scale augmentation: an integer uniform in [low, high]
    (fb.resnet.torch's RandomScale: torch.random(minSize, maxSize))."""
    low, high = low_high
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def apply_transform(img: ImageLike, t: Transform, generator: torch.Generator | None) -> ImageLike:
    """The geometric part of `t` (everything but normalization) on a PIL image or uint8 CHW tensor.

    Mirrors resnet_repro.data.dali._define_pipeline branch by branch; `generator` may be None for
    the evaluation transform, which draws nothing.
    """
    size = [t.image_size, t.image_size]
    if t.train and t.scale_short_side is not None:
        # He et al. 2016 Sec. 3.4, as DALI: shorter side an integer uniform in [low, high], then a
        # uniformly placed image_size window
        assert generator is not None
        img = F.resize(
            img, [sample_short_side(t.scale_short_side, generator)], interpolation=_BILINEAR, antialias=True
        )
        h, w = F.get_size(img)
        top = int(torch.randint(0, h - t.image_size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - t.image_size + 1, (1,), generator=generator))
        img = F.crop(img, top, left, t.image_size, t.image_size)
    elif t.train and t.pad_crop > 0:
        # CIFAR style, as DALI: shorter side to image_size, centre crop/zero-pad to image_size + 2 pad,
        # then a uniformly placed image_size window
        assert generator is not None
        img = F.resize(img, [t.image_size], interpolation=_BILINEAR, antialias=True)
        padded = t.image_size + 2 * t.pad_crop
        img = F.center_crop(img, [padded, padded])  # pads with 0 where the image is smaller
        h, w = F.get_size(img)
        top = int(torch.randint(0, h - t.image_size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - t.image_size + 1, (1,), generator=generator))
        img = F.crop(img, top, left, t.image_size, t.image_size)
    elif t.train and t.random_resized_crop:
        assert generator is not None
        h, w = F.get_size(img)
        top, left, ch, cw = random_resized_crop_params(h, w, t.scale, t.ratio, generator)
        img = F.resized_crop(img, top, left, ch, cw, size, interpolation=_BILINEAR, antialias=True)
    elif t.train or t.eval_mode == "center":
        img = F.resize(img, [t.eval_resize], interpolation=_BILINEAR, antialias=True)
        img = F.center_crop(img, size)
    elif t.eval_mode == "resize":  # ten_crop: its crops are taken on the device
        img = F.resize(img, [t.eval_resize], interpolation=_BILINEAR, antialias=True)
    # eval_mode decode (multiscale): the decoded image as it is
    # DALI mirrors in every training branch when hflip is on (also with random_resized_crop false)
    if t.train and t.hflip:
        assert generator is not None
        if torch.rand(1, generator=generator).item() < 0.5:
            img = F.horizontal_flip(img)
    return img


def _sample_seed(seed: int, pass_index: int, index: int) -> int:
    # A well-mixed 64-bit seed per (loader seed, pass, position): batches do not depend on how many
    # workers there are or which worker reads which sample
    return int(np.random.SeedSequence([seed % 2**63, pass_index, index]).generate_state(1, np.uint64)[0])


class _ImageDataset(Dataset):
    """Sample i = (uint8 CHW crop of files[i], labels[i], the image's lighting offset).

    The lighting offset (float32 [3], on the [0, 1] scale; zeros without PCA lighting) is added to
    every pixel at normalization time, so workers still pass uint8 crops."""

    def __init__(
        self, files: Sequence[str], labels: Sequence[int], transform: Transform, decoder: str, seed: int
    ) -> None:
        self.files = [str(f) for f in files]
        self.labels = [int(y) for y in labels]
        self.transform = transform
        self.decoder = decoder
        self.seed = seed
        # Set by TorchLoader before each pass; workers get a copy when the pass's iterator starts
        self.pass_index = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        path = self.files[index]
        t = self.transform
        generator = None
        if t.train:
            generator = torch.Generator().manual_seed(_sample_seed(self.seed, self.pass_index, index))
        if self.decoder == "pil":
            img = F.pil_to_tensor(apply_transform(_open_pil(path), t, generator))
        else:
            img = apply_transform(_decode_tensor(path), t, generator)
        offset = torch.zeros(3)
        if t.train and t.pca_lighting > 0:
            assert generator is not None
            offset = draw_lighting_offset(t.pca_lighting, generator)
        return img.contiguous(), self.labels[index], offset


def _one_line(e: UserError) -> UserError:
    """A UserError raised in a DataLoader worker arrives wrapped in the worker's traceback; keep
    only the original message so the CLI still prints one line."""
    lines = str(e).strip().splitlines()
    if len(lines) <= 1:
        return e
    prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
    return UserError(lines[-1].removeprefix(prefix))


class TorchLoader:
    """Iterates (images float32 NCHW, labels int64 [N]) on `device` over one list of files, once per pass.

    Same contract as DaliLoader: file order as given, the last batch may be partial and is never
    padded. Training augmentation is a function of (seed, pass number, position in the list), so a
    run is reproducible whatever num_workers is; each pass over the same loader draws anew, as
    DALI's pipeline does.
    """

    def __init__(
        self,
        files: Sequence[str],
        labels: Sequence[int],
        transform: Transform,
        *,
        batch_size: int,
        num_workers: int,
        seed: int,
        device: torch.device,
        decoder: str = "pil",
        prefetch: int = 2,
    ) -> None:
        if len(files) == 0:
            raise ValueError("TorchLoader needs at least one file")
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        if decoder not in DECODERS:
            raise UserError(f"decoder={decoder!r} is not one of {', '.join(DECODERS)}")
        if batch_size <= 0:
            raise UserError(f"batch_size={batch_size} must be a positive number of images")
        if num_workers < 0:
            raise UserError(f"num_workers={num_workers} must be >= 0 (0 = load in the main process)")
        if prefetch <= 0:
            raise UserError(f"prefetch={prefetch} must be a positive number of batches")
        self.num_images = len(files)
        self.batch_size = batch_size
        self.device = device
        self._passes = 0
        self._dataset = _ImageDataset(files, labels, transform, decoder, seed)
        self._loader = DataLoader(
            self._dataset,
            batch_size=batch_size,
            shuffle=False,  # sequential sampler: the caller already sharded and ordered the files
            drop_last=False,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            # batches each worker prepares ahead (DALI's prefetch counts batches for the whole pipeline)
            prefetch_factor=prefetch if num_workers > 0 else None,
        )
        # DALI's convention: mean/std on the 0-255 scale, applied to the uint8 pixels; a mean image
        # (data.normalization=pixel_mean) broadcasts over the batch like a per-channel mean
        if transform.mean_image is not None:
            mean = torch.as_tensor(transform.mean_image, dtype=torch.float64) * 255.0
            self._mean = mean.to(device=device, dtype=torch.float32).unsqueeze(0)
        else:
            self._mean = torch.tensor([m * 255.0 for m in transform.mean], device=device).view(1, 3, 1, 1)
        self._std = torch.tensor([s * 255.0 for s in transform.std], device=device).view(1, 3, 1, 1)
        self._lighting = transform.train and transform.pca_lighting > 0

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._dataset.pass_index = self._passes
        self._passes += 1
        batches = iter(self._loader)
        while True:
            try:
                images, labels, offsets = next(batches)
            except StopIteration:
                return
            except UserError as e:
                raise _one_line(e) from None
            images = images.to(self.device, non_blocking=True).float()
            if self._lighting:  # (x + 255 offset - mean) / std, as DALI's per-sample mean
                images.add_(offsets.to(self.device, non_blocking=True).view(-1, 3, 1, 1) * 255.0)
            images.sub_(self._mean).div_(self._std)
            yield images, labels.to(self.device, non_blocking=True)
