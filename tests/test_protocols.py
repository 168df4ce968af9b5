"""Test protocols (eval.protocol): the views each takes, how they combine, and their eval loaders."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import make_image_folder
from conftest import small_transform as _transform

from resnet_repro.commands.eval import eval_config
from resnet_repro.config import EvalConfig, RootConfig, UserError, validate
from resnet_repro.data.splits import list_split
from resnet_repro.evaluation.protocols import Scorer, multiscale_views, ten_crop_views

CPU = torch.device("cpu")


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W): channel 0 holds each pixel's row, channel 1 its column, channel 2 zeros."""
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    return torch.stack([rows, cols, torch.zeros(height, width)])[None]


def window(image: torch.Tensor, top: int, left: int, size: int, mirrored: bool) -> torch.Tensor:
    crop = image[..., top : top + size, left : left + size]
    return crop.flip(-1) if mirrored else crop


def test_ten_crop_returns_the_four_corners_the_centre_and_their_mirror_images():
    image = coordinate_image(12, 16)
    views = ten_crop_views(image, 6)
    assert views.shape == (10, 1, 3, 6, 6)
    # (top, left) of each window in the original image; the last 5 are mirror images
    tl, tr, bl, br, centre = (0, 0), (0, 10), (6, 0), (6, 10), (3, 5)
    expected = [(*w, False) for w in (tl, tr, bl, br, centre)]
    expected += [(*w, True) for w in (tr, tl, br, bl, centre)]  # five crops of the mirrored image
    for view, (top, left, mirrored) in zip(views, expected, strict=True):
        torch.testing.assert_close(view, window(image, top, left, 6, mirrored), rtol=0, atol=0)
    # each window is where it says: its first pixel's coordinates are (top, left) or, mirrored, (top, left+5)
    assert views[1, 0, :2, 0, 0].tolist() == [0, 10] and views[5, 0, :2, 0, 0].tolist() == [0, 15]


def test_ten_crop_without_flips_is_the_five_crops():
    image = coordinate_image(12, 16)
    five = ten_crop_views(image, 6, hflip=False)
    torch.testing.assert_close(five, ten_crop_views(image, 6)[:5], rtol=0, atol=0)


def test_multiscale_resizes_the_shorter_side_to_each_scale_with_its_mirror_image():
    image = torch.rand(2, 3, 30, 45)
    groups = multiscale_views(image, [20, 40])
    assert [tuple(g.shape) for g in groups] == [(2, 2, 3, 20, 30), (2, 2, 3, 40, 60)]
    torch.testing.assert_close(groups[0][1], groups[0][0].flip(-1), rtol=0, atol=0)
    assert len(multiscale_views(image, [20], hflip=False)[0]) == 1


class Linear(nn.Module):
    """A fixed classifier whose logits depend on where the mean brightness lies: views differ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        right = x[..., x.shape[-1] // 2 :].mean(dim=(1, 2, 3))
        return torch.stack([left, right, torch.zeros_like(left)], dim=1) * 3


def test_scores_are_the_log_of_the_softmax_averaged_over_the_views():
    images = torch.rand(2, 3, 12, 16)
    model = Linear()
    scores = Scorer(EvalConfig(protocol="ten_crop"), 6)(model, images)
    views = ten_crop_views(images, 6)
    expected = torch.stack([model(v).softmax(1) for v in views]).mean(0).log()
    torch.testing.assert_close(scores, expected)
    assert torch.allclose(scores.exp().sum(1), torch.ones(2))  # a distribution: CE = -log p(label)

    ms = Scorer(EvalConfig(protocol="multiscale", scales=[8, 12]), 6)(model, images)
    per_view = [model(v).softmax(1) for g in multiscale_views(images, [8, 12]) for v in g]
    torch.testing.assert_close(ms, torch.stack(per_view).mean(0).log())


def test_the_center_protocol_scores_with_the_plain_logits():
    images = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(Scorer(EvalConfig(), 6)(Linear(), images), Linear()(images))


@pytest.mark.parametrize(
    ("eval_cfg", "message"),
    [
        (
            EvalConfig(protocol="five_crop"),
            "eval.protocol='five_crop' is not one of center, ten_crop, multiscale",
        ),
        (EvalConfig(scales=[]), "eval.scales=[] must be a non-empty list"),
        (EvalConfig(scales=[224, 0]), "eval.scales=[224, 0] must be"),
    ],
)
def test_bad_protocol_settings_are_one_line_errors_naming_the_value(eval_cfg: EvalConfig, message: str):
    with pytest.raises(UserError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        validate(RootConfig(eval=eval_cfg))


def test_eval_takes_the_runs_protocol_unless_the_command_line_names_one():
    run = dataclasses.asdict(RootConfig(eval=EvalConfig(protocol="multiscale", scales=[32, 40])))
    run["data"].update(name="demo", root="/digits")
    composed = RootConfig(eval=EvalConfig())
    cfg, note = eval_config(composed, run, explicit={"checkpoint"})
    assert (cfg.eval.protocol, cfg.eval.scales) == ("multiscale", [32, 40])
    assert "protocol multiscale from the checkpoint's run" in note
    cfg, _ = eval_config(RootConfig(eval=EvalConfig(protocol="ten_crop")), run, {"eval.protocol"})
    assert (cfg.eval.protocol, cfg.eval.scales) == ("ten_crop", [32, 40])
    old = {k: v for k, v in run.items() if k != "eval"}  # a checkpoint from before eval.protocol
    assert eval_config(composed, old, explicit=set())[0].eval.protocol == "center"


# ------------------------------------------------------------------------------------ eval loaders
BACKENDS = ["torchvision", "dali"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("protocol_images")
    # (w, h) 64x48 -> shorter side 18 (16 / 0.875), 24x18: the centre crop offsets are whole pixels
    make_image_folder(root, "val", {"a": 2, "b": 1}, sizes=((64, 48), (48, 64)))
    return root


def _images(backend: str, root: Path, eval_mode: str) -> list[torch.Tensor]:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
        from resnet_repro.data.dali import DaliLoader as Loader

        extra = {"num_threads": 1}
    else:
        from resnet_repro.data.torch_loader import TorchLoader as Loader

        extra = {"num_workers": 0}
    files = list_split(root, "val")
    transform = dataclasses.replace(_transform(train=False), eval_mode=eval_mode)
    batch = 3 if eval_mode == "center" else 1
    loader = Loader(files.files, files.labels, transform, batch_size=batch, seed=0, device=CPU, **extra)
    return [image for images, _ in loader for image in images]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_crop_loader_gives_the_resized_image_whose_centre_is_the_centre_protocols_crop(
    backend: str, folder: Path
):
    centre = _images(backend, folder, "center")
    resized = _images(backend, folder, "resize")
    assert [tuple(x.shape) for x in resized] == [(3, 18, 24), (3, 24, 18), (3, 18, 24)]
    for c, r in zip(centre, resized, strict=True):
        h, w = r.shape[1:]
        top, left = (h - 16) // 2, (w - 16) // 2
        # same resize and the same normalization: the centre window is the centre protocol's image
        torch.testing.assert_close(r[:, top : top + 16, left : left + 16], c, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multiscale_loader_gives_the_decoded_image_normalized_as_the_centre_protocol(
    backend: str, folder: Path
):
    decoded = _images(backend, folder, "decode")
    assert [tuple(x.shape) for x in decoded] == [(3, 48, 64), (3, 64, 48), (3, 48, 64)]
    # resized on the device to the centre protocol's shorter side and centre-cropped, it is the
    # centre protocol's image up to rounding (the loader resizes uint8 pixels, the device floats)
    centre = _images(backend, folder, "center")
    for c, d in zip(centre, decoded, strict=True):
        r = multiscale_views(d[None], [18], hflip=False)[0][0, 0]
        h, w = r.shape[1:]
        top, left = (h - 16) // 2, (w - 16) // 2
        diff = (r[:, top : top + 16, left : left + 16] - c).abs()
        assert diff.max() < 0.03  # one uint8 step is 1 / 255 / 0.225 = 0.017 here


@pytest.mark.parametrize("protocol", ["ten_crop", "multiscale"])
def test_a_mean_image_is_subtracted_from_every_view_resized_to_its_size(protocol):
    # data.normalization=pixel_mean: the loader's images are not image_size crops, so the views
    # subtract the mean image themselves (multiscale: resized to the view), flipped ones unflipped
    from resnet_repro.config import EvalConfig
    from resnet_repro.evaluation.protocols import Scorer

    size = 8
    mean_image = torch.arange(3 * size * size, dtype=torch.float32).view(3, size, size) / 100
    seen = []

    def model(x):
        seen.append(x.clone())
        return torch.zeros(x.shape[0], 2)

    images = torch.rand(1, 3, 10, 12)
    cfg = EvalConfig(protocol=protocol, scales=[8, 12], hflip=True)
    plain, with_mean = Scorer(cfg, size), Scorer(cfg, size, mean_image)
    groups = plain.view_groups(images)
    with_mean(model, images)
    assert len(seen) == len(groups)
    for group, fed in zip(groups, seen, strict=True):
        expected = group - with_mean.mean_image_at(group.shape[-2:])
        torch.testing.assert_close(fed, expected.flatten(0, 1))
    assert with_mean.mean_image_at(torch.Size([size, size])) is mean_image  # ten_crop: as it is


def test_test_time_flip_is_the_mean_of_the_two_passes_probabilities():
    # eval.hflip=true with the centre protocol (FFCV's test-time augmentation); off by default there
    from resnet_repro.config import EvalConfig
    from resnet_repro.evaluation.protocols import Scorer, describe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    images = torch.rand(6, 3, 8, 8)
    flipped = Scorer(EvalConfig(protocol="center", hflip=True), 8)(model, images)
    by_hand = (model(images).softmax(1) + model(images.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(flipped.exp(), by_hand)
    plain = Scorer(EvalConfig(protocol="center"), 8)(model, images)
    torch.testing.assert_close(plain, model(images))  # the default centre protocol: the plain logits
    assert "and its flip" in describe(EvalConfig(protocol="center", hflip=True), 224, 0.875)
    assert "flip" not in describe(EvalConfig(protocol="center"), 224, 0.875)
    assert "10 crops" in describe(EvalConfig(protocol="ten_crop"), 224, 0.875)  # the paper's, flips on
