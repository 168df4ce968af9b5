"""He et al. 2016's training augmentation (data/augment=he2016) on both backends: scale augmentation
(shorter side uniform in [low, high], random crop) and Krizhevsky et al. 2012's PCA lighting.

The backends draw from different random streams, so they are compared through what their outputs
reveal: the resize scale read off a linear ramp, and each image's lighting offset read off a
uniform grey image; the deterministic part (a fixed scale) is compared pixel by pixel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_repro.data.dali import Transform
from resnet_repro.data.lighting import lighting_offset
from resnet_repro.data.torch_loader import TorchLoader, sample_short_side

CPU = torch.device("cpu")
HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
BACKENDS = ["torchvision", pytest.param("dali", marks=pytest.mark.skipif(not HAS_DALI, reason="no DALI"))]

# Krizhevsky et al. 2012's ImageNet PCA as fb.resnet.torch publishes it ([0, 1] RGB scale), typed in
# again here so that a slip in resnet_repro.data.lighting's copy shows
EIGVAL = np.array([0.2175, 0.0188, 0.0045])
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


def krizhevsky_offset(alpha: np.ndarray) -> np.ndarray:
    """Sec. 4.1: add [p1, p2, p3][a1 l1, a2 l2, a3 l3]^T to every RGB pixel (p_j: column j)."""
    out = np.zeros(3)
    for j in range(3):
        out += EIGVEC[:, j] * (alpha[j] * EIGVAL[j])
    return out


def recover_alpha(offset: np.ndarray) -> np.ndarray:
    """The eigenvector weights behind RGB offsets (rows)."""
    return np.linalg.solve(EIGVEC * EIGVAL[None, :], offset.T).T


def he_transform(size: int, low: int, high: int, lighting: float = 0.0, hflip: bool = False) -> Transform:
    return Transform(
        train=True,
        image_size=size,
        crop_ratio=1.0,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        random_resized_crop=False,
        scale_short_side=(low, high),
        hflip=hflip,
        pca_lighting=lighting,
    )


def load_all(
    backend: str, files: list[Path], t: Transform, seed: int = 0, batch_size: int = 100
) -> torch.Tensor:
    """Every image of one pass, on the [0, 1] pixel scale (the transforms use mean 0, std 1)."""
    names = [str(f) for f in files]
    if backend == "dali":
        from resnet_repro.data.dali import DaliLoader

        loader = DaliLoader(
            names, [0] * len(names), t, batch_size=batch_size, num_threads=1, seed=seed, device=CPU
        )
    else:
        loader = TorchLoader(
            names, [0] * len(names), t, batch_size=batch_size, num_workers=0, seed=seed, device=CPU
        )
    return torch.cat([x for x, _ in loader])


# ------------------------------------------------------------------------------------- PCA lighting
def test_lighting_offset_is_krizhevskys_formula():
    rng = np.random.default_rng(0)
    for alpha in rng.normal(0, 0.1, size=(20, 3)):
        got = lighting_offset(torch.tensor(alpha)).numpy()
        np.testing.assert_allclose(got, krizhevsky_offset(alpha), rtol=1e-12, atol=1e-15)


@pytest.mark.skipif(not HAS_DALI, reason="no DALI")
def test_dalis_lighting_offset_is_krizhevskys_formula():
    from nvidia.dali import fn, pipeline_def

    from resnet_repro.data.dali import lighting_offset_node

    @pipeline_def
    def pipe():
        alpha = fn.random.normal(shape=[3], stddev=0.1)
        return alpha, lighting_offset_node(alpha)

    p = pipe(batch_size=16, num_threads=1, device_id=None, seed=1)
    p.build()
    alphas, offsets = p.run()
    for i in range(16):
        alpha = np.asarray(alphas[i], dtype=np.float64)
        np.testing.assert_allclose(np.asarray(offsets[i]), krizhevsky_offset(alpha), rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def grey_files(tmp_path_factory) -> list[Path]:
    """One uniform grey PNG (lossless: every pixel is exactly 128), listed 400 times."""
    path = tmp_path_factory.mktemp("grey") / "grey.png"
    Image.new("RGB", (20, 14), (128, 128, 128)).save(path)
    return [path] * 400


@pytest.mark.parametrize("backend", BACKENDS)
def test_lighting_shifts_each_image_by_one_rgb_offset_with_alpha_normal_0_std(backend, grey_files):
    """Each image's pixels all move by one offset ([p1 p2 p3] diag(l) alpha); the alphas behind those
    offsets have mean 0 and std 0.1 on each eigenvector, as Krizhevsky et al. draw them."""
    x = load_all(backend, grey_files, he_transform(8, 14, 20, lighting=0.1))
    offsets = x - 128 / 255
    per_image = offsets.mean(dim=(2, 3))  # [N, 3]
    # one offset for the whole image: every pixel agrees with the image's mean offset
    assert (offsets - per_image[:, :, None, None]).abs().max().item() < 1e-5
    alpha = recover_alpha(per_image.double().numpy())
    print(f"{backend}: alpha mean {alpha.mean(0)}, std {alpha.std(0)}")
    # 400 draws: the standard error of a std estimate is 0.1 / sqrt(800) = 0.0035
    np.testing.assert_allclose(alpha.mean(0), 0.0, atol=0.02)
    np.testing.assert_allclose(alpha.std(0), 0.1, atol=0.015)
    # without lighting the grey stays grey
    plain = load_all(backend, grey_files[:50], he_transform(8, 14, 20, lighting=0.0))
    assert (plain - 128 / 255).abs().max().item() < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_lighting_is_for_training_only(backend, grey_files):
    t = Transform(train=False, image_size=8, crop_ratio=1.0, mean=(0, 0, 0), std=(1, 1, 1), pca_lighting=0.1)
    x = load_all(backend, grey_files[:20], t)
    assert (x - 128 / 255).abs().max().item() < 1e-6


# ------------------------------------------------------------------------------ scale augmentation
def test_sampled_shorter_side_covers_256_to_480_uniformly():
    g = torch.Generator().manual_seed(0)
    n = 225 * 200
    sides = np.array([sample_short_side((256, 480), g) for _ in range(n)])
    counts = np.bincount(sides - 256, minlength=225)
    assert sides.min() == 256 and sides.max() == 480 and len(counts) == 225
    # chi-square against uniform, 224 degrees of freedom: mean 224, sd 21; 320 is p < 1e-4
    chi2 = ((counts - 200) ** 2 / 200).sum()
    assert chi2 < 320, chi2


@pytest.mark.skipif(not HAS_DALI, reason="no DALI")
def test_dalis_sampled_shorter_side_covers_256_to_480_uniformly_and_is_the_resized_one(tmp_path):
    from nvidia.dali import fn, pipeline_def, types

    from resnet_repro.data.dali import scale_resize, short_side_node

    @pipeline_def
    def draws():
        return short_side_node(256, 480)

    p = draws(batch_size=225 * 40, num_threads=1, device_id=None, seed=2)
    p.build()
    sides = np.concatenate([np.asarray(p.run()[0].as_array()) for _ in range(5)]).astype(int)
    counts = np.bincount(sides - 256, minlength=225)
    assert sides.min() == 256 and sides.max() == 480 and len(counts) == 225
    chi2 = ((counts - 200) ** 2 / 200).sum()
    assert chi2 < 320, chi2

    # the resize gives exactly that shorter side, for landscape and portrait images
    files = []
    for i, size in enumerate([(40, 30), (30, 52)]):
        Image.new("RGB", size, (90, 90, 90)).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))

    @pipeline_def
    def resized():
        raw, _ = fn.readers.file(files=files, labels=[0, 1], random_shuffle=False)
        shorter = short_side_node(256, 480)
        images = scale_resize(fn.decoders.image(raw, device="cpu", output_type=types.GRAY), shorter)
        return shorter, images.shape()

    p = resized(batch_size=20, num_threads=1, device_id=None, seed=3)
    p.build()
    drawn, shapes = p.run()
    for side, shape in zip(drawn.as_array(), shapes.as_array(), strict=True):
        assert min(shape[:2]) == side


@pytest.fixture(scope="module")
def ramp_files(tmp_path_factory) -> list[Path]:
    """A 64x64 PNG whose red channel rises 4 grey levels per pixel from left to right, 300 times."""
    path = tmp_path_factory.mktemp("ramp") / "ramp.png"
    ramp = np.zeros((64, 64, 3), dtype=np.uint8)
    ramp[:, :, 0] = (4 * np.arange(64))[None, :]
    Image.fromarray(ramp).save(path)
    return [path] * 300


def scales_seen(x: torch.Tensor) -> np.ndarray:
    """The shorter side each 64-pixel ramp image was resized to, from the slope of its red ramp
    (256 / side grey levels per pixel), fitted on the crop's inner columns (away from the image's
    clamped borders)."""
    red = x[:, 0].mean(dim=1).double().numpy() * 255  # [N, W]
    cols = np.arange(red.shape[1])[4:-4]
    slopes = np.abs(np.polyfit(cols, red[:, 4:-4].T, 1)[0])
    return 256 / slopes


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_augmentation_resizes_into_the_range_uniformly_then_crops(backend, ramp_files):
    low, high = 32, 60
    x = load_all(backend, ramp_files, he_transform(24, low, high, hflip=True))
    assert x.shape == (300, 3, 24, 24)
    sides = scales_seen(x)
    print(f"{backend}: shorter side seen {sides.min():.2f}..{sides.max():.2f}, mean {sides.mean():.2f}")
    assert low - 1 <= sides.min() < low + 2 and high - 2 < sides.max() <= high + 1
    # uniform on [32, 60]: mean 46, quartiles 39 and 53 (sd of the mean of 300 draws: 0.5)
    assert abs(sides.mean() - 46) < 2
    q1, q3 = np.quantile(sides, [0.25, 0.75])
    assert abs(q1 - 39) < 2.5 and abs(q3 - 53) < 2.5
    # the crop window moves: the ramp's first crop column is not always the image's first
    starts = x[:, 0, :, 0].mean(dim=1)
    assert len(torch.unique((starts * 255).round())) > 20


@pytest.mark.skipif(not HAS_DALI, reason="no DALI")
def test_both_backends_agree_on_a_fixed_scale(tmp_path):
    """scale [S, S] on square images: the window is the whole resized image, so nothing is random
    and both backends must give the same picture (as their centre-crop eval transforms do)."""
    rng = np.random.default_rng(0)
    files = []
    for i, side in enumerate([40, 57, 90]):
        grid = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
        Image.fromarray(grid).resize((side, side), Image.BICUBIC).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    t = he_transform(24, 24, 24)
    dali, ours = load_all("dali", files, t), load_all("torchvision", files, t)
    # measured ~0.002 (the resampling arithmetic of two libraries)
    assert (dali - ours).abs().mean().item() < 0.01
