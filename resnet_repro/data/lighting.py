"""PCA lighting noise (Krizhevsky, Sutskever and Hinton 2012, Sec. 4.1), as He et al. 2016 use it.

To every pixel of a training image add the RGB offset

    [p1, p2, p3] [a1 l1, a2 l2, a3 l3]^T,    a_i ~ N(0, alphastd), drawn once per image,

where p_i and l_i are the eigenvectors and eigenvalues of the 3x3 covariance of ImageNet's RGB
pixel values. The numbers below are the ones fb.resnet.torch (the ResNet authors' Torch code,
datasets/imagenet.lua, `pca`) publishes on the [0, 1] pixel scale; its transforms.lua `Lighting`
adds the offset before the mean/std normalization, without clamping, as both backends here do.
"""

from __future__ import annotations

import torch

# Eigenvalues l_1 >= l_2 >= l_3 of the ImageNet RGB covariance ([0, 1] scale)
IMAGENET_EIGVAL: tuple[float, float, float] = (0.2175, 0.0188, 0.0045)
# Column j is the eigenvector p_j (rows: R, G, B); the first is the luminance direction
IMAGENET_EIGVEC: tuple[tuple[float, float, float], ...] = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def lighting_offset(alpha: torch.Tensor) -> torch.Tensor:
    """The RGB offset ([0, 1] scale) for eigenvector weights `alpha` (shape [..., 3])."""
    vec = torch.tensor(IMAGENET_EIGVEC, dtype=alpha.dtype)
    val = torch.tensor(IMAGENET_EIGVAL, dtype=alpha.dtype)
    return (alpha * val) @ vec.T


def draw_lighting_offset(alphastd: float, generator: torch.Generator) -> torch.Tensor:
    """One image's RGB offset (float32 [3]): alpha ~ N(0, alphastd) per eigenvector."""
    alpha = torch.randn(3, generator=generator, dtype=torch.float64) * alphastd
    return lighting_offset(alpha).float()
