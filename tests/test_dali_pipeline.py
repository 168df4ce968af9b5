"""The DALI input pipeline, run on the CPU: shapes, dtypes, order, partial batches, normalization, flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGENET_MEAN, IMAGENET_STD, S, make_image_folder
from conftest import small_transform as _transform
from PIL import Image

from resnet_repro.data.dali import DaliLoader
from resnet_repro.data.splits import list_split

pytest.importorskip("nvidia.dali")

CPU = torch.device("cpu")


def _loader(files, labels, transform, batch_size=4, seed=0) -> DaliLoader:
    return DaliLoader(
        [str(f) for f in files],
        list(labels),
        transform,
        batch_size=batch_size,
        num_threads=1,
        seed=seed,
        device=CPU,
        prefetch=1,
    )


def _run(loader: DaliLoader) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(y)
    return images, labels


def _unnormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Back to the [0, 1] pixel scale (NCHW)."""
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


def _save_uniform(path: Path, colour, size=(64, 48), mode="RGB") -> Path:
    Image.new(mode, size, colour).save(path, format="JPEG", quality=100)
    return path


def _save_asymmetric(path: Path, size=(40, 32)) -> Path:
    """A left-to-right ramp (dark left, bright right) with a bright block in the top-left corner."""
    w, h = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    ramp[: h // 3, : w // 4] = [255, 40, 40]
    Image.fromarray(ramp.astype(np.uint8), mode="RGB").save(path, format="JPEG", quality=100)
    return path


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """10 JPEGs in 3 classes: varied sizes and aspect ratios, every third one grayscale."""
    root = tmp_path_factory.mktemp("mixed")
    make_image_folder(root, "train", {"ant": 3, "bee": 4, "cow": 3}, grayscale_every=3)
    return root


def test_eval_batches_are_float32_nchw_with_int64_labels_in_file_order(mixed_folder):
    fl = list_split(mixed_folder, "train")
    grey = [p for p in fl.files if Image.open(p).mode == "L"]
    assert grey, "the folder should hold some grayscale JPEGs"
    assert len({Image.open(p).size for p in fl.files}) > 3

    images, labels = _run(_loader(fl.files, fl.labels, _transform(train=False)))

    for x, y in zip(images, labels, strict=True):
        assert x.dtype == torch.float32
        assert x.dim() == 4 and x.shape[1:] == (3, S, S)
        assert y.dtype == torch.int64
        assert y.dim() == 1 and y.shape[0] == x.shape[0]
        assert torch.isfinite(x).all()
    assert torch.cat(labels).tolist() == list(fl.labels)


def test_last_partial_batch_is_returned_without_padding(mixed_folder):
    fl = list_split(mixed_folder, "train")
    assert len(fl) == 10
    # distinct labels, so a repeated (padded) image would show up
    loader = _loader(fl.files, range(10), _transform(train=False), batch_size=4)
    assert len(loader) == 3

    images, labels = _run(loader)

    assert [len(y) for y in labels] == [4, 4, 2]
    assert [x.shape[0] for x in images] == [4, 4, 2]
    assert torch.cat(labels).tolist() == list(range(10))


def test_every_pass_reads_every_image_exactly_once(mixed_folder):
    fl = list_split(mixed_folder, "train")
    loader = _loader(fl.files, range(10), _transform(train=False), batch_size=4)
    for _ in range(3):
        _, labels = _run(loader)
        assert sorted(torch.cat(labels).tolist()) == list(range(10))


def test_images_stay_paired_with_their_labels(tmp_path):
    sizes = [(40, 40), (64, 30), (30, 64), (90, 20), (25, 25), (50, 70), (33, 17)]
    files = []
    for i, size in enumerate(sizes):
        mode = "L" if i % 3 == 2 else "RGB"
        grey = 20 + 30 * i
        files.append(_save_uniform(tmp_path / f"{i}.JPEG", grey if mode == "L" else (grey,) * 3, size, mode))
    images, labels = _run(_loader(files, range(len(files)), _transform(train=False), batch_size=3))
    pixels = _unnormalize(torch.cat(images))
    for label, img in zip(torch.cat(labels).tolist(), pixels, strict=True):
        assert img.mean().item() == pytest.approx((20 + 30 * label) / 255, abs=0.02), label


def test_train_batches_are_float32_nchw_of_the_crop_size(mixed_folder):
    fl = list_split(mixed_folder, "train")
    t = _transform(train=True, hflip=True)
    images, labels = _run(_loader(fl.files, fl.labels, t, batch_size=4))
    assert sum(len(y) for y in labels) == 10
    for x in images:
        assert x.dtype == torch.float32
        assert x.shape[1:] == (3, S, S)
        assert torch.isfinite(x).all()


def test_same_seed_gives_the_same_training_batches(mixed_folder):
    fl = list_split(mixed_folder, "train")
    t = _transform(train=True, hflip=True)
    a, _ = _run(_loader(fl.files, fl.labels, t, seed=3))
    b, _ = _run(_loader(fl.files, fl.labels, t, seed=3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_uniform_colour_normalizes_to_mean_std_per_channel(tmp_path):
    colour = (200, 100, 50)
    path = _save_uniform(tmp_path / "c.JPEG", colour, size=(96, 64))
    images, _ = _run(_loader([path], [0], _transform(train=False), batch_size=1))
    x = images[0][0]
    for c in range(3):
        expected = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert x[c].min().item() == pytest.approx(expected, abs=0.02), c
        assert x[c].max().item() == pytest.approx(expected, abs=0.02), c


def test_grayscale_jpeg_gives_three_equal_channels(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "g.JPEG"
    Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8), mode="L").save(path, quality=95)
    for train in (False, True):
        images, _ = _run(_loader([path], [0], _transform(train=train), batch_size=1))
        pixels = _unnormalize(images[0])[0]
        assert pixels.std().item() > 0.05  # not a blank image
        torch.testing.assert_close(pixels[0], pixels[1], atol=1e-4, rtol=0)
        torch.testing.assert_close(pixels[1], pixels[2], atol=1e-4, rtol=0)


def test_train_without_crop_or_flip_equals_the_eval_transform(tmp_path):
    path = _save_asymmetric(tmp_path / "asym.JPEG")
    files = [path] * 6
    (ev,), _ = _run(_loader(files, [0] * 6, _transform(train=False), batch_size=6))
    t = _transform(train=True, random_resized_crop=False, hflip=False)
    (tr,), _ = _run(_loader(files, [0] * 6, t, batch_size=6, seed=1))
    # the picture really is left-right asymmetric, so a flip would be visible
    assert not torch.allclose(ev[0], ev[0].flip(-1), atol=0.1)
    assert torch.equal(tr, ev)


def test_train_with_flip_mirrors_some_images_and_leaves_the_rest(tmp_path):
    path = _save_asymmetric(tmp_path / "asym.JPEG")
    files = [path] * 12
    (ev,), _ = _run(_loader(files, [0] * 12, _transform(train=False), batch_size=12))
    t = _transform(train=True, random_resized_crop=False, hflip=True)
    (tr,), _ = _run(_loader(files, [0] * 12, t, batch_size=12, seed=1))
    flipped = [torch.equal(img, ev[0].flip(-1)) for img in tr]
    unflipped = [torch.equal(img, ev[0]) for img in tr]
    assert all(f or u for f, u in zip(flipped, unflipped, strict=True))
    assert any(flipped) and any(unflipped)


def test_eval_ignores_the_hflip_setting(tmp_path):
    path = _save_asymmetric(tmp_path / "asym.JPEG")
    files = [path] * 6
    (plain,), _ = _run(_loader(files, [0] * 6, _transform(train=False), batch_size=6))
    (with_flip,), _ = _run(_loader(files, [0] * 6, _transform(train=False, hflip=True), batch_size=6))
    assert torch.equal(plain, with_flip)


def test_empty_file_list_is_refused():
    with pytest.raises(ValueError):
        _loader([], [], _transform(train=False))


@pytest.mark.parametrize("train", [True, False])
def test_the_mixed_decoders_extra_arguments_exist_in_this_dali(mixed_folder, train: bool):
    """The "mixed" (GPU) graph cannot run here; its extra decoder arguments are checked against this
    DALI's operator schema by building the same graph on the CPU with them."""
    from nvidia.dali import pipeline_def

    from resnet_repro.data.dali import MIXED_DECODER_ARGS, _define_pipeline

    files = list_split(mixed_folder, "train")
    t = _transform(train=train, hflip=train)
    pipe = pipeline_def(_define_pipeline)(
        files.files, files.labels, t, False, MIXED_DECODER_ARGS, batch_size=2, num_threads=1, device_id=None
    )
    pipe.build()
    images, labels = pipe.run()
    assert len(images) == len(labels) == 2


def _decoder_specs(files, t, gpu: bool) -> list[str]:
    """The argument listing of each decoder operator in the graph `_define_pipeline` defines. Only the
    graph is built (no backend), so the "mixed" (GPU) graph can be inspected without a GPU."""
    from nvidia.dali import pipeline_def

    from resnet_repro.data.dali import _define_pipeline

    pipe = pipeline_def(_define_pipeline)(
        files.files, files.labels, t, gpu, batch_size=2, num_threads=1, device_id=0 if gpu else None
    )
    pipe._build_graph()
    specs = [str(op.spec) for op in pipe._ops]
    return [spec for spec in specs if spec.startswith("OpSpec for decoders__")]


TRANSFORMS = {
    "train-random-resized-crop": dict(train=True, hflip=True),
    "train-pad-crop": dict(train=True, random_resized_crop=False, pad_crop=2),
    "train-resize-only": dict(train=True, random_resized_crop=False),
    "eval": dict(train=False),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_only_the_gpu_training_decoder_preallocates_nvjpeg_buffers(mixed_folder, name: str):
    """nvJPEG's padding is allocated per decoder thread in every pipeline that has it; a run keeps a
    training and two evaluation pipelines alive, so only the training decoder gets it."""
    from resnet_repro.data.dali import MIXED_DECODER_ARGS

    files = list_split(mixed_folder, "train")
    t = _transform(**TRANSFORMS[name])
    (gpu_spec,) = _decoder_specs(files, t, gpu=True)
    (cpu_spec,) = _decoder_specs(files, t, gpu=False)
    assert "device: mixed" in gpu_spec and "device: cpu" in cpu_spec
    for key, value in MIXED_DECODER_ARGS.items():
        assert (f"{key}: {value}" in gpu_spec) == t.train, (key, gpu_spec)
        assert key not in cpu_spec


@pytest.mark.parametrize("pixel_mean", [False, True], ids=["per-channel", "mean-image"])
def test_channels_last_batches_are_views_of_hwc_output_equal_to_the_chw_ones(mixed_folder, pixel_mean):
    import dataclasses

    fl = list_split(mixed_folder, "train")
    transform = _transform(train=False)
    if pixel_mean:  # the mean image is subtracted in the pipeline's own layout (HWC here)
        ramp = np.linspace(0.2, 0.8, 3 * transform.image_size**2).reshape(3, transform.image_size, -1)
        transform = dataclasses.replace(transform, mean_image=ramp)
    chw, _ = _run(_loader(fl.files, fl.labels, transform))
    loader = DaliLoader(
        fl.files,
        list(fl.labels),
        transform,
        batch_size=4,
        num_threads=1,
        seed=0,
        device=CPU,
        prefetch=1,
        channels_last=True,
    )
    nhwc, _ = _run(loader)
    for a, b in zip(chw, nhwc, strict=True):
        assert b.shape == a.shape and a.is_contiguous()
        assert b.is_contiguous(memory_format=torch.channels_last)
        # what the training step does to a batch: a no-op here, not a copy
        assert b.contiguous(memory_format=torch.channels_last).data_ptr() == b.data_ptr()
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_pad_crop_offsets_are_whole_pixels_each_equally_likely(tmp_path):
    """CIFAR-style padding 4: the window lands 0..8 pixels into the padded image, uniformly (as
    torchvision's RandomCrop(padding=4)); the black border it leaves reveals where."""
    from collections import Counter

    from resnet_repro.data.dali import Transform

    path = tmp_path / "white.png"  # lossless, so the border is exact
    Image.new("RGB", (16, 16), (255, 255, 255)).save(path)
    t = Transform(
        train=True,
        image_size=16,
        crop_ratio=1.0,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        random_resized_crop=False,
        pad_crop=4,
    )
    n = 1800
    loader = DaliLoader(
        [str(path)] * n, [0] * n, t, batch_size=200, num_threads=1, seed=0, device=torch.device("cpu")
    )
    offsets = Counter()
    for images, _ in loader:
        dark_cols = images[:, 0].mean(dim=1) < 0.5  # [N, W]: a column of the zero padding
        for row in dark_cols:
            left = int(row[:4].sum())
            right = int(row[-4:].sum())
            offsets[4 - left if left else 4 + right] += 1
    assert sorted(offsets) == list(range(9))
    assert min(offsets.values()) > 150 and max(offsets.values()) < 250  # 200 each expected


def test_only_the_gpu_training_decoder_preallocates_and_its_pinned_memory_counts_two_buffers_per_thread():
    """DALI's decoders.image preallocates one device buffer and two (double-buffered) pinned host
    buffers per thread: 8 threads of the training decoder hold ~1.6 GiB GPU + ~2.1 GiB pinned."""
    from resnet_repro.data.dali import decoder_args, preallocated_bytes

    gpu, pinned = preallocated_bytes(decoder_args(gpu=True, train=True), num_threads=8)
    assert round(gpu / 2**30, 2) == 1.57 and round(pinned / 2**30, 2) == 2.09
    assert preallocated_bytes(decoder_args(gpu=True, train=False), 8) == (0, 0)
    assert preallocated_bytes(decoder_args(gpu=False, train=True), 8) == (0, 0)


def _save_waves(path: Path, size: tuple[int, int]) -> Path:
    """Lossless RGB waves: red varies along x (period 7 px), green along y (period 9 px), so a
    window one pixel off in either direction changes most pixels by tens of grey levels."""
    w, h = size
    x = np.arange(w, dtype=np.float64)[None, :].repeat(h, 0)
    y = np.arange(h, dtype=np.float64)[:, None].repeat(w, 1)
    rgb = np.stack(
        [128 + 100 * np.sin(2 * np.pi * x / 7), 128 + 100 * np.sin(2 * np.pi * y / 9), 0 * x + 90], -1
    )
    Image.fromarray(rgb.round().astype(np.uint8), mode="RGB").save(path, format="PNG")
    return path


# (width, height): odd margins that round half to an even anchor (500x375 -> 341x256, margin 117,
# anchor 58, where half-up gives 59; 1000x300 -> 853x256, anchor 314), a long side whose scaled
# length has a fraction above .5 (300x301 -> 256x256.85, truncated to 256; 403x300 -> 343.9, 343),
# an odd margin whose half-up and half-even anchors agree (339x256: margin 115, anchor 58)
TORCHVISION_GEOMETRY_SIZES = [(500, 375), (1000, 300), (300, 301), (403, 300), (339, 256)]


@pytest.mark.parametrize("size", TORCHVISION_GEOMETRY_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_eval_resize_and_centre_crop_take_torchvisions_window(tmp_path, size):
    """The oracle is torchvision's own Resize(256) + CenterCrop(224), the transforms its reference
    accuracy (76.13%) was measured with: the same window, to the pixel, on every size above."""
    from torchvision.transforms import v2

    path = _save_waves(tmp_path / "waves.png", size)
    t = _transform(train=False, image_size=224)
    assert t.eval_resize == 256
    (ours,), _ = _run(_loader([path], [0], t, batch_size=1))
    oracle = v2.Compose([v2.PILToTensor(), v2.Resize(256, antialias=True), v2.CenterCrop(224)])
    ref = oracle(Image.open(path).convert("RGB")).float() / 255
    ours = _unnormalize(ours)[0]
    assert ours.shape == ref.shape == (3, 224, 224)

    def mean_diff(dy: int, dx: int) -> float:
        a = ours[:, max(dy, 0) : 224 + min(dy, 0), max(dx, 0) : 224 + min(dx, 0)]
        b = ref[:, max(-dy, 0) : 224 + min(-dy, 0), max(-dx, 0) : 224 + min(-dx, 0)]
        return (a - b).abs().mean().item() * 255

    # a window one pixel off would match better shifted by that pixel; the same window differs only
    # by the resampling arithmetic (DALI's float filter against torchvision's), under a grey level
    shifts = {(dy, dx): mean_diff(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert min(shifts, key=shifts.get) == (0, 0), shifts
    assert shifts[(0, 0)] < 1.0, shifts


# DALI 2.4's whole message for a resize whose output cannot be allocated (data.image_size=100000)
DALI_RESIZE_FAILURE = """Critical error in pipeline:
Critical error in pipeline:
Error in CPU operator `nvidia.dali.fn.resize`,
which was used in the pipeline definition with the following traceback:

  File "/work/main/resnet_repro/data/dali.py", line 214, in _decode_and_crop
    images = fn.resize(images, size=resized, interp_type=types.INTERP_LINEAR, antialias=True)

encountered:

std::bad_alloc
Current pipeline object is no longer valid.
Current pipeline object is no longer valid."""


def test_a_dali_failure_is_told_by_its_operator_and_what_it_encountered():
    """DALI's first line is "Critical error in pipeline:", which says nothing; the operator and
    what it encountered are further down."""
    from resnet_repro.data.dali import dali_error_words

    assert dali_error_words(RuntimeError(DALI_RESIZE_FAILURE)) == "nvidia.dali.fn.resize: std::bad_alloc"
    assert dali_error_words(RuntimeError("one line of its own")) == "one line of its own"
    assert dali_error_words(RuntimeError("")) == "RuntimeError"
