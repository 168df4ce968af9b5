"""Test protocols (eval.protocol): what the network sees of each evaluation image, and how the
outputs of its views combine into one prediction.

  center      the loader's resize to image_size / crop_ratio and one centre crop of image_size
              (torchvision's protocol; every per-epoch evaluation uses it)
  ten_crop    the same resize by the loader, no crop; on the device the 4 corner and the centre
              image_size crops and their horizontal flips (Krizhevsky et al. 2012; He et al. 2016,
              Table 3). The geometry is torchvision's TenCrop (fb.resnet.torch's too): corners of
              the whole resized rectangle, not of its central square as in Krizhevsky et al.; its
              centre crop is `center`'s window (torchvision's, with either backend)
  multiscale  the decoded image, resized on the device so that its shorter side is each of
              eval.scales, whole (ResNet's global average pool makes it fully convolutional), and its
              flip (He et al. 2016, Table 4)

ten_crop and multiscale average the softmax probabilities of an image's views and score
log(mean probability): top-k and the cross-entropy are those of the averaged distribution.

Memory: their loaders deliver one image per batch (resized images differ in size). ten_crop runs
its 10 crops as one batch of 10 x image_size^2; multiscale runs one scale at a time, a batch of 2
(the image and its flip), so the largest scale bounds the memory: for ResNet-50 in fp32 at shorter
side 640 about 250 MiB of activations for a 4:3 image (docs/evaluation.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from resnet_repro.config import EvalConfig

# What the eval loader does per protocol (resnet_repro.data.dali.Transform.eval_mode)
LOADER_MODE = {"center": "center", "ten_crop": "resize", "multiscale": "decode"}


def ten_crop_views(images: torch.Tensor, size: int, hflip: bool = True) -> torch.Tensor:
    """(V, N, C, size, size): the top-left, top-right, bottom-left, bottom-right and centre crops of
    each image of `images` (N, C, H, W), then (hflip) the same 5 crops of the mirrored image, which
    are the mirror images of the original's top-right, top-left, bottom-right, bottom-left and centre
    crops (torchvision's ten_crop)."""
    crops = TF.ten_crop(images, [size, size]) if hflip else TF.five_crop(images, [size, size])
    return torch.stack(crops)


def multiscale_views(images: torch.Tensor, scales: list[int], hflip: bool = True) -> list[torch.Tensor]:
    """For each scale, a (V, N, C, h, w) tensor: `images` (N, C, H, W) with its shorter side resized to
    the scale (bilinear, antialiased, as the centre protocol's resize) and (hflip) its mirror image."""
    out = []
    for scale in scales:
        resized = TF.resize(images, [scale], interpolation=InterpolationMode.BILINEAR, antialias=True)
        views = [resized, TF.horizontal_flip(resized)] if hflip else [resized]
        out.append(torch.stack(views))
    return out


class Scorer:
    """scores = scorer(model, images): (N, classes) scores of a loader batch under the protocol;
    logits for center, log of the view-averaged softmax probabilities otherwise."""

    def __init__(self, cfg: EvalConfig, image_size: int, mean_image: torch.Tensor | None = None) -> None:
        self.protocol = cfg.protocol
        self.scales = list(cfg.scales)
        self.hflip = flips(cfg)
        self.image_size = image_size
        # data.normalization=pixel_mean: mean image / std (C, image_size, image_size), subtracted from
        # every view here (resized to a multiscale view's size), since the loader's images are not
        # image_size crops; flipped views subtract it unflipped, as training crops do
        self.mean_image = mean_image

    def view_groups(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The views of `images`, in groups of one size: each (V, N, C, h, w), one forward pass each."""
        if self.protocol == "ten_crop":
            return [ten_crop_views(images, self.image_size, self.hflip)]
        if self.protocol == "multiscale":
            return multiscale_views(images, self.scales, self.hflip)
        return [torch.stack([images, TF.horizontal_flip(images)]) if self.hflip else images[None]]

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if self.protocol == "center" and not self.hflip and self.mean_image is None:
            return model(images).float()
        n = images.shape[0]
        probs = torch.zeros((), device=images.device)
        count = 0
        for group in self.view_groups(images):
            if self.mean_image is not None:
                group = group - self.mean_image_at(group.shape[-2:])
            v = group.shape[0]
            logits = model(group.flatten(0, 1)).float()  # (V * N, classes)
            probs = probs + logits.softmax(dim=1).view(v, n, -1).sum(dim=0)
            count += v
        # log of the mean: cross_entropy's log_softmax leaves it unchanged (the mean sums to 1);
        # the clamp keeps an underflowed probability from becoming an infinite loss
        return (probs / count).clamp_min(torch.finfo(torch.float32).tiny).log()

    def mean_image_at(self, size: torch.Size) -> torch.Tensor:
        assert self.mean_image is not None
        if tuple(size) == tuple(self.mean_image.shape[-2:]):
            return self.mean_image
        resized = TF.resize(
            self.mean_image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True
        )
        return resized


def flips(cfg: EvalConfig) -> bool:
    """Whether the protocol averages in the flipped views (eval.hflip, null = the protocol's own)."""
    return cfg.hflip if cfg.hflip is not None else cfg.protocol != "center"


def views_own_mean_image(cfg: EvalConfig) -> bool:
    """Whether the views subtract a mean image themselves (the loader's images are not the final
    crops, or a flipped view must subtract it unflipped)."""
    return cfg.protocol != "center" or flips(cfg)


def describe(cfg: EvalConfig, image_size: int, crop_ratio: float) -> str:
    """One line naming the protocol with its sizes, for logs and JSON."""
    resize = round(image_size / crop_ratio)
    flipped = flips(cfg)
    flips_text = " and flips" if flipped else ""
    if cfg.protocol == "center":
        return f"centre crop {image_size} of shorter side {resize}" + (
            " and its flip, softmax averaged" if flipped else ""
        )
    if cfg.protocol == "ten_crop":
        crops = 10 if flipped else 5
        where = f"corners, centre{flips_text}"
        return f"{crops} crops of {image_size} ({where}) of shorter side {resize}, softmax averaged"
    return f"whole image at shorter sides {list(cfg.scales)}{flips_text}, softmax averaged"
