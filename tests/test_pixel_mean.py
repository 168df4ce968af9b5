"""data.normalization=pixel_mean: a train-only mean image at the training resolution, its guards,
and both backends subtracting it alike."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose, make_image_folder
from PIL import Image

from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.config import DataConfig, HoldoutConfig, StatsConfig, UserError, to_dataclass, validate
from resnet_repro.data import normalization, pixel_mean, stats
from resnet_repro.data.dali import Transform
from resnet_repro.data.normalization import resolve
from resnet_repro.data.torch_loader import TorchLoader
from resnet_repro.training.run_data import load_file_lists

CPU = torch.device("cpu")
S = 16
CROP_RATIO = 0.5  # shorter side 32, centre crop 16
# (width, height) with shorter side exactly 32 and even margins: the resize is the identity and the
# centre crop has one unambiguous offset, so a plain numpy slice is the reference
SIZES = ((32, 32), (48, 32), (32, 40), (40, 32))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_image_folder(tmp_path, "train", {"a": 12, "b": 12}, sizes=SIZES, grayscale_every=5)
    make_image_folder(tmp_path, "val", {"a": 4, "b": 4}, sizes=SIZES, seed=1)
    return tmp_path


def data_cfg(root: Path, **kw) -> DataConfig:
    kw.setdefault("backend", "torchvision")
    return DataConfig(
        name="folder",
        root=str(root),
        num_threads=1,
        image_size=S,
        crop_ratio=CROP_RATIO,
        normalization="pixel_mean",
        **kw,
    )


def centre_crops(files) -> np.ndarray:
    """[N, 3, S, S] float64 0..255: PIL decode, then the centre S x S slice."""
    crops = []
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64)
        top, left = (a.shape[0] - S) // 2, (a.shape[1] - S) // 2
        crops.append(a[top : top + S, left : left + S].transpose(2, 0, 1))
    return np.stack(crops)


def reference(files) -> tuple[np.ndarray, np.ndarray]:
    """(mean image on [0, 1], per-channel std of the pixels about it) by direct numpy."""
    crops = centre_crops(files) / 255.0
    mean_image = crops.mean(axis=0)
    return mean_image, np.sqrt(((crops - mean_image) ** 2).mean(axis=(0, 2, 3)))


# ----------------------------------------------------------------------------------- the mean image
@pytest.mark.parametrize(
    "backend,decoder", [("torchvision", "pil"), ("torchvision", "decode_jpeg"), ("dali", "pil")]
)
def test_mean_image_equals_a_direct_numpy_average_of_the_training_centre_crops(root: Path, backend, decoder):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    cfg = data_cfg(root, backend=backend, decoder=decoder)
    splits = load_file_lists(cfg)
    norm, warnings = resolve(cfg, splits, DistEnv(), CPU)
    assert warnings == [] and norm.source == "pixel_mean" and "computed now" in norm.detail
    assert norm.mean_image.shape == (3, S, S) and norm.mean_image.dtype == np.float64
    mean_image, std = reference(splits.train_full.files)
    # libjpeg-turbo through PIL / torchvision: the same pixels, so float64 rounding only; DALI's
    # decoder may round a few pixels differently (as for the per-channel statistics)
    atol = 1e-12 if backend == "torchvision" else 2e-3
    np.testing.assert_allclose(norm.mean_image, mean_image, atol=atol)
    np.testing.assert_allclose(norm.std, std, atol=atol)
    np.testing.assert_allclose(norm.mean, mean_image.mean(axis=(1, 2)), atol=atol)
    again, _ = resolve(cfg, splits, DistEnv(), CPU)
    assert "loaded" in again.detail and np.array_equal(again.mean_image, norm.mean_image)


def test_mean_image_leaves_out_val_and_under_train_minus_holdout_the_holdout(root: Path):
    for stats_from, expected in (("train", 24), ("train_minus_holdout", 18)):
        cfg = data_cfg(root, holdout=HoldoutConfig(size=6, seed=0, stats_from=stats_from))
        splits = load_file_lists(cfg)
        norm, _ = resolve(cfg, splits, DistEnv(), CPU)
        selection = splits.train_full if stats_from == "train" else splits.train
        record, _ = pixel_mean.read(pixel_mean.record_path(cfg, stats.fingerprint(selection, root)))
        assert record.num_images == expected and record.split == stats_from
        assert record.fingerprint == stats.fingerprint(selection, root)
        np.testing.assert_allclose(norm.mean_image, reference(selection.files)[0], atol=1e-12)
        contents = set(record.contents)
        assert not {stats.path_hash(p) for p in stats.relative_paths(splits.test, root)} & contents
        held = {stats.path_hash(p) for p in stats.relative_paths(splits.holdout, root)}
        assert (held <= contents) if stats_from == "train" else not (held & contents)


def test_a_mean_image_that_saw_val_images_is_refused(root: Path, tmp_path_factory):
    pinned = tmp_path_factory.mktemp("stats") / "pinned.json"
    cfg = data_cfg(root, stats=StatsConfig(path=str(pinned)))
    splits = load_file_lists(cfg)
    leaky = dataclasses.replace(
        splits.train_full,
        files=splits.train_full.files + splits.test.files,
        labels=splits.train_full.labels + splits.test.labels,
    )
    # what `resnet-repro stats data.normalization=pixel_mean` runs
    normalization.compute_and_save(
        cfg, dataclasses.replace(splits, train_full=leaky, train=leaky), DistEnv(), CPU
    )
    with pytest.raises(UserError, match="includes 8 images of the test split"):
        resolve(cfg, splits, DistEnv(), CPU)


def test_a_stale_mean_image_is_refused_unless_mismatch_is_allowed(root: Path):
    pinned = str(root / "pinned.json")
    cfg = data_cfg(root, stats=StatsConfig(path=pinned))
    resolve(cfg, load_file_lists(cfg), DistEnv(), CPU)
    make_image_folder(root, "train", {"c": 2}, sizes=SIZES, seed=7)
    with pytest.raises(UserError, match="different file list"):
        resolve(cfg, load_file_lists(cfg), DistEnv(), CPU)
    relaxed = data_cfg(root, stats=StatsConfig(path=pinned, allow_mismatch=True))
    norm, warnings = resolve(relaxed, load_file_lists(relaxed), DistEnv(), CPU)
    assert warnings and norm.source == "pixel_mean" and "loaded" in norm.detail


def test_a_mean_image_file_that_does_not_match_its_record_is_refused_and_a_missing_one_recomputed(root: Path):
    cfg = data_cfg(root, stats=StatsConfig(path=str(root / "pinned.json")))
    splits = load_file_lists(cfg)
    resolve(cfg, splits, DistEnv(), CPU)
    record = root / f"pinned-pixelmean{S}r32-pil.json"  # the torchvision backend's decoder named
    image = pixel_mean.tensor_path(record)
    assert json.loads(record.read_text())["pixel_mean"]["file"] == image.name
    torch.save({"mean_image": torch.zeros(3, S, S, dtype=torch.float64)}, image)
    with pytest.raises(UserError, match="does not match its record"):
        resolve(cfg, splits, DistEnv(), CPU)
    image.unlink()
    norm, _ = resolve(cfg, splits, DistEnv(), CPU)
    assert "computed now" in norm.detail and image.is_file()


@pytest.mark.parametrize("value", [float("nan"), 1e6, -0.5])
def test_a_mean_image_whose_values_are_no_pixels_is_refused_naming_them(root: Path, value: float):
    """A hand-made file with its record's sha256 recomputed: NaN stopped the run blaming training,
    1e6 trained to a loss of a million."""
    cfg = data_cfg(root, stats=StatsConfig(path=str(root / "pinned.json")))
    splits = load_file_lists(cfg)
    resolve(cfg, splits, DistEnv(), CPU)
    record_path = root / f"pinned-pixelmean{S}r32-pil.json"
    image = pixel_mean.tensor_path(record_path)
    bad = torch.load(image, weights_only=True)["mean_image"].clone()
    bad[0, 0, 0] = value
    torch.save({"mean_image": bad}, image)
    record = json.loads(record_path.read_text())
    record["pixel_mean"]["sha256"] = pixel_mean.digest(bad.numpy().astype(np.float64))
    record_path.write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"holds values outside \[0, 1\]"):
        resolve(cfg, splits, DistEnv(), CPU)


def test_each_training_resolution_gets_its_own_mean_image(root: Path):
    cfg = data_cfg(root)
    splits = load_file_lists(cfg)
    small, _ = resolve(cfg, splits, DistEnv(), CPU)
    large, _ = resolve(dataclasses.replace(cfg, image_size=24, crop_ratio=0.75), splits, DistEnv(), CPU)
    assert small.mean_image.shape == (3, S, S) and large.mean_image.shape == (3, 24, 24)
    assert "computed now" in large.detail
    # a record renamed to pose as another resolution's is caught by its own image_size
    fp = stats.fingerprint(splits.train_full, root)
    pixel_mean.record_path(cfg, fp).rename(pixel_mean.record_path(dataclasses.replace(cfg, image_size=8), fp))
    pixel_mean.tensor_path(pixel_mean.record_path(cfg, fp)).rename(
        pixel_mean.tensor_path(pixel_mean.record_path(dataclasses.replace(cfg, image_size=8), fp))
    )
    with pytest.raises(UserError, match="needs 8/"):
        resolve(dataclasses.replace(cfg, image_size=8), splits, DistEnv(), CPU)


def test_each_decoder_gets_its_own_mean_image_and_one_of_another_decoder_is_refused(root: Path):
    """As for the per-channel statistics: decoders round pixels differently (DALI and PIL by up to
    7e-4 on the channel means of real photos, by far more on a CMYK file without an Adobe marker),
    so a run loads only a mean image its own decoder computed."""
    pinned = StatsConfig(path=str(root / "pinned.json"))
    pil_cfg = data_cfg(root, decoder="pil", stats=pinned)
    jpeg_cfg = data_cfg(root, decoder="decode_jpeg", stats=pinned)
    splits = load_file_lists(pil_cfg)
    fp = stats.fingerprint(splits.train_full, root)
    assert pixel_mean.record_path(pil_cfg, fp) != pixel_mean.record_path(jpeg_cfg, fp)

    resolve(pil_cfg, splits, DistEnv(), CPU)
    norm, _ = resolve(jpeg_cfg, splits, DistEnv(), CPU)
    assert "computed now" in norm.detail
    record, _ = pixel_mean.read(pixel_mean.record_path(jpeg_cfg, fp))
    assert record.decoder == "decode_jpeg"

    # the PIL record renamed to pose as decode_jpeg's is caught by the decoder it records
    for path in (pixel_mean.record_path(pil_cfg, fp), pixel_mean.record_path(jpeg_cfg, fp)):
        assert path.is_file() and pixel_mean.tensor_path(path).is_file()
    pixel_mean.record_path(pil_cfg, fp).replace(pixel_mean.record_path(jpeg_cfg, fp))
    pixel_mean.tensor_path(pixel_mean.record_path(pil_cfg, fp)).replace(
        pixel_mean.tensor_path(pixel_mean.record_path(jpeg_cfg, fp))
    )
    with pytest.raises(UserError, match=r"computed with decoder \(data.backend / data.decoder\)=pil"):
        resolve(jpeg_cfg, splits, DistEnv(), CPU)


def test_a_sampled_mean_image_of_another_sample_seed_is_not_loaded(root: Path):
    cfg = data_cfg(root, stats=StatsConfig(max_images=10, seed=0))
    splits = load_file_lists(cfg)
    first, _ = resolve(cfg, splits, DistEnv(), CPU)
    other, _ = resolve(data_cfg(root, stats=StatsConfig(max_images=10, seed=1)), splits, DistEnv(), CPU)
    assert "computed now" in other.detail and not np.array_equal(first.mean_image, other.mean_image)


def test_pixel_mean_is_a_valid_normalization_and_a_typo_is_named():
    cfg = to_dataclass(compose(["data=demo", "data.normalization=pixel_mean"]))
    validate(cfg)
    bad = to_dataclass(compose(["data=demo", "data.normalization=pixelmean"]))
    with pytest.raises(UserError, match="'pixelmean' is not one of computed, published, none, pixel_mean"):
        validate(bad)


def test_a_mean_image_of_another_size_is_refused_by_the_transform():
    with pytest.raises(UserError, match=r"data.image_size=16 crops need \(3, 16, 16\)"):
        Transform(True, S, 1.0, (0, 0, 0), (1, 1, 1), mean_image=np.zeros((3, 8, 8)))


# ---------------------------------------------------------------------------------- both backends
def _smooth_files(folder: Path) -> list[str]:
    """Photo-like JPEGs (a 5x5 colour grid upsampled): square ones, and ones of other aspects."""
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (96, 64), (64, 80), (72, 72), (112, 64), (80, 80), (64, 100), (64, 64)]
    files = []
    for i, size in enumerate(sizes):
        grid = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
        path = folder / "train" / f"c{i % 2}" / f"{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid, mode="RGB").resize(size, Image.BICUBIC).save(path, format="JPEG", quality=95)
        files.append(str(path))
    (folder / "val" / "c0").mkdir(parents=True)
    (folder / "val" / "c1").mkdir(parents=True)
    Image.open(files[0]).save(folder / "val" / "c0" / "v.JPEG")
    Image.open(files[1]).save(folder / "val" / "c1" / "v.JPEG")
    return files


def _batches(loader) -> torch.Tensor:
    return torch.cat([x for x, _ in loader])


def test_dali_and_torchvision_compute_close_mean_images_and_normalize_eval_crops_alike(tmp_path: Path):
    pytest.importorskip("nvidia.dali")
    from resnet_repro.data.dali import DaliLoader

    files = _smooth_files(tmp_path)
    size, ratio = 32, 0.5  # shorter side 64, centre crop 32: a real resize for the non-square images
    norms = {}
    for backend, decoder in (("dali", "pil"), ("torchvision", "pil"), ("torchvision", "decode_jpeg")):
        cfg = DataConfig(
            name="folder",
            root=str(tmp_path),
            backend=backend,
            decoder=decoder,
            num_threads=1,
            image_size=size,
            crop_ratio=ratio,
            normalization="pixel_mean",
            stats=StatsConfig(path=str(tmp_path / f"{backend}-{decoder}.json")),
        )
        norms[(backend, decoder)], _ = resolve(cfg, load_file_lists(cfg), DistEnv(), CPU)
    dali = norms[("dali", "pil")]
    for key in (("torchvision", "pil"), ("torchvision", "decode_jpeg")):
        diff = np.abs(norms[key].mean_image - dali.mean_image)
        print(f"mean image {key} vs DALI: max {diff.max():.4f} mean {diff.mean():.5f} ([0, 1] scale)")
        # the decode is the same; the geometry conventions put some non-square crops 1 px apart
        # (see test_torch_loader.test_eval_transform_is_close_to_dalis): a small part of a grey level
        # once averaged over the images
        assert diff.mean() < 1e-3 and diff.max() < 5e-3, key
        np.testing.assert_allclose(norms[key].std, dali.std, rtol=2e-2)

    # the same mean image and std in both loaders: each output is (x - 255 M) / (255 std) of its own
    # raw crop x, and the two agree as the raw crops do (exactly on the square images)
    labels = list(range(len(files)))
    base = {"train": False, "image_size": size, "crop_ratio": ratio}
    normed = Transform(**base, mean=dali.mean, std=dali.std, mean_image=dali.mean_image)
    raw = Transform(**base, mean=(0.0,) * 3, std=(1 / 255,) * 3)
    common = {"batch_size": 3, "seed": 0, "device": CPU}
    outputs = {
        "dali": [_batches(DaliLoader(files, labels, t, num_threads=1, **common)) for t in (normed, raw)],
        "torch": [_batches(TorchLoader(files, labels, t, num_workers=0, **common)) for t in (normed, raw)],
    }
    m = torch.from_numpy(dali.mean_image).float() * 255.0
    s = torch.tensor(dali.std, dtype=torch.float32).view(3, 1, 1) * 255.0
    for name, (out, x) in outputs.items():
        assert out.shape == (len(files), 3, size, size) and out.dtype == torch.float32
        torch.testing.assert_close(out, (x - m) / s, atol=1e-5, rtol=0, msg=name)
    per_image = (outputs["dali"][0] - outputs["torch"][0]).abs().flatten(1).mean(1)
    square = [i for i, f in enumerate(files) if Image.open(f).width == Image.open(f).height]
    assert per_image.mean().item() < 0.1 and per_image[square].max().item() < 0.01


def test_flipped_training_crops_get_the_same_mean_image_in_both_backends(tmp_path: Path):
    """hflip mirrors the crop, never the mean image: a uniform image gives (c - 255 M) / (255 s)."""
    pytest.importorskip("nvidia.dali")
    from resnet_repro.data.dali import DaliLoader

    path = tmp_path / "grey.JPEG"
    Image.new("RGB", (40, 40), (128, 128, 128)).save(path, quality=100)
    mean_image = np.random.default_rng(0).uniform(0.2, 0.8, size=(3, S, S))
    std = (0.2, 0.25, 0.3)
    t = Transform(True, S, 1.0, (0.0,) * 3, std, random_resized_crop=False, hflip=True, mean_image=mean_image)
    files, labels = [str(path)] * 8, [0] * 8
    common = {"batch_size": 8, "seed": 3, "device": CPU}
    expected = (128.0 - 255.0 * torch.from_numpy(mean_image)) / (255.0 * torch.tensor(std).view(3, 1, 1))
    for loader in (
        DaliLoader(files, labels, t, num_threads=1, **common),
        TorchLoader(files, labels, t, num_workers=0, **common),
    ):
        out = _batches(loader)
        torch.testing.assert_close(out, expected.float().expand_as(out), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_demo_training_with_pixel_mean_runs_and_eval_of_its_checkpoint_matches(
    demo_root: Path, tmp_path: Path
):
    from test_training import read_metrics, run_cli

    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        f"data.root={demo_root}",
        f"hydra.run.dir={run_dir}",
        "data.normalization=pixel_mean",
        "trainer.epochs=1",
        "trainer.max_steps_per_epoch=3",
        "stabilizer.warmup_epochs=0",
        "logging.progress=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())["normalization"]
    assert info["source"] == "pixel_mean" and "pixelmean32r32" in info["detail"]
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["normalization"]["mean_image"].shape == (3, 32, 32)
    proc = run_cli("eval", f"checkpoint={run_dir}/checkpoints/last.pt", f"data.root={demo_root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    final = [r for r in read_metrics(run_dir) if r["split"] == "val"][-1]
    assert result["num_samples"] == 360 and result["top1"] == final["top1"]
    assert result["loss"] == pytest.approx(final["loss"], rel=1e-6)
