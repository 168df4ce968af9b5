"""Train-only normalization statistics and the holdout: exact sums, no leakage, guarded stats files."""

from __future__ import annotations

import json
import math
import re
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from resnet_repro.config import UserError
from resnet_repro.data import channel_sums, stats
from resnet_repro.data.channel_sums import PartialSums, finalize
from resnet_repro.data.holdout import carve_holdout
from resnet_repro.data.splits import list_split
from resnet_repro.data.stats import (
    build_record,
    check_stats_file,
    default_stats_path,
    fingerprint,
    read_stats_file,
    stratified_sample,
    write_stats_file,
)
from resnet_repro.data.stats_process import compute_stats

pytest.importorskip("nvidia.dali")

SAMPLE_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
TRAIN_CLASSES = {"a": 6, "b": 9, "c": 3}
VAL_CLASSES = {"a": 2, "b": 2, "c": 2}
# every size of conftest's default set (square, wide, tall, odd) plus two larger ones
SIZES = ((48, 48), (64, 40), (36, 60), (96, 24), (20, 80), (17, 23), (75, 51), (160, 120), (90, 130))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """train: 18 images in 3 classes, every 4th a grayscale JPEG; val: 6 images."""
    root = tmp_path_factory.mktemp("stats") / "data"
    make_image_folder(root, "train", TRAIN_CLASSES, sizes=SIZES, grayscale_every=4, seed=1)
    make_image_folder(root, "val", VAL_CLASSES, sizes=SIZES, grayscale_every=3, seed=2)
    return root


def _compute(files, **kw) -> PartialSums:
    args = dict(resize_shorter=None, num_threads=1, batch_size=4, device="cpu")
    args.update(kw)
    return compute_stats(list(files), **args)


def _dali_decode(files, resize_shorter: int | None = None) -> list[np.ndarray]:
    """The pixels DALI's CPU decoder (and resize) produce: the reference for the reduction."""
    from nvidia.dali import fn, pipeline_def, types

    def graph():
        jpegs, _ = fn.readers.file(files=[str(f) for f in files])
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        if resize_shorter:
            images = fn.resize(
                images, resize_shorter=resize_shorter, interp_type=types.INTERP_LINEAR, antialias=True
            )
        return images

    pipe = pipeline_def(graph)(batch_size=len(files), num_threads=1, device_id=None)
    pipe.build()
    out = pipe.run()[0]
    return [np.array(out[i]) for i in range(len(files))]


def _pil_decode(files) -> list[np.ndarray]:
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def _reference(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """float64 mean / population std over every pixel on the [0, 1] scale (numpy's pairwise sums)."""
    s = np.zeros(3)
    q = np.zeros(3)
    n = 0
    for im in images:
        x = im.reshape(-1, 3).astype(np.float64) / 255.0
        s += x.sum(axis=0)
        q += (x * x).sum(axis=0)
        n += len(x)
    mean = s / n
    return mean, np.sqrt(q / n - mean * mean), n


# ---------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("reduce_in", ["numpy", "dali"])
def test_stats_equal_float64_reference_on_mixed_sizes_and_grayscale(dataset, reduce_in):
    # "numpy" is the CPU path; "dali" (reduction operators in the graph) is what runs on a GPU,
    # exercised here on the CPU backend
    files = list_split(dataset, "train").files
    sums = _compute(files, reduce_in=reduce_in)
    mean, std = finalize(sums)

    # The reduction is checked against the pixels DALI decoded, so the test isolates our arithmetic:
    # exact integer sums, then mean/std to 1e-6 (in fact to rounding).
    dali_pixels = _dali_decode(files)
    ref_mean, ref_std, n = _reference(dali_pixels)
    assert sums.num_images == len(files) == 18
    assert sums.num_pixels == n == sum(w * h for w, h in (SIZES[k % len(SIZES)] for k in range(18)))
    exact_sum = sum(im.reshape(-1, 3).astype(np.int64).sum(0) for im in dali_pixels)
    assert sums.sum == tuple(int(v) for v in exact_sum)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(std, ref_std, rtol=0, atol=1e-6)

    # PIL (libjpeg) may round a few pixels differently from DALI's decoder (IDCT / chroma upsampling
    # choices), by +-1 level: agreement with PIL's .convert("RGB") is asserted to 2e-3 only.
    # Grayscale JPEGs come out of both as three equal channels.
    pil_mean, pil_std, _ = _reference(_pil_decode(files))
    np.testing.assert_allclose(mean, pil_mean, rtol=0, atol=2e-3)
    np.testing.assert_allclose(std, pil_std, rtol=0, atol=2e-3)
    gray = [im for im in dali_pixels if (im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all()]
    assert len(gray) == 18 // 4  # exactly the grayscale files


@pytest.mark.parametrize("decoder", ["pil", "decode_jpeg"])
def test_torchvision_decoders_give_exact_sums_of_their_own_pixels_without_dali(dataset, decoder):
    files = list_split(dataset, "train").files
    sums = _compute(files, decoder=decoder, num_threads=2)
    pil_pixels = _pil_decode(files)  # both decoders are libjpeg-turbo, as PIL's
    exact_sum = sum(im.reshape(-1, 3).astype(np.int64).sum(0) for im in pil_pixels)
    exact_sq = sum((im.reshape(-1, 3).astype(np.int64) ** 2).sum(0) for im in pil_pixels)
    assert sums.num_images == 18 and sums.num_pixels == sum(im.shape[0] * im.shape[1] for im in pil_pixels)
    if decoder == "pil":
        assert sums.sum == tuple(int(v) for v in exact_sum)
        assert sums.sum_sq == tuple(int(v) for v in exact_sq)
    # and the same statistics as the DALI pass, to decoder rounding
    dali_mean, dali_std = finalize(_compute(files))
    np.testing.assert_allclose(finalize(sums), (dali_mean, dali_std), rtol=0, atol=2e-3)


def test_torchvision_decoder_resizes_the_shorter_side_like_the_dali_pass(dataset):
    files = list_split(dataset, "train").files
    sums = _compute(files, decoder="pil", resize_shorter=32)
    dali = _dali_decode(files, resize_shorter=32)
    # shorter side 32 in both; the longer side may differ by one pixel (torchvision truncates, DALI rounds)
    assert abs(sums.num_pixels - sum(im.shape[0] * im.shape[1] for im in dali)) <= 32 * len(files)
    assert sums.num_pixels < sum(w * h for w, h in (SIZES[k % len(SIZES)] for k in range(18)))
    np.testing.assert_allclose(
        finalize(sums), finalize(_compute(files, resize_shorter=32)), rtol=0, atol=3e-3
    )


def test_float32_running_sum_drifts_where_exact_sums_do_not(tmp_path):
    # 6 Mpx of bright noise: a float32 running sum passes 2^22 after ~4.7M pixels; from there its
    # spacing is 0.5, so each value in [0.78, 1] is rounded up to 1 and the sum drifts upward
    rng = np.random.default_rng(0)
    folder = tmp_path / "train" / "bright"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(200, 256, size=(1024, 1024, 3), dtype=np.uint8)).save(
            folder / f"{i}.JPEG", quality=95
        )
    files = list_split(tmp_path, "train").files
    mean, std = finalize(_compute(files, batch_size=3, num_threads=2))

    pixels = _dali_decode(files)
    ref_mean, ref_std, n = _reference(pixels)
    assert n == 6 * 1024 * 1024
    red = np.concatenate([im[..., 0].reshape(-1) for im in pixels]).astype(np.float32) / np.float32(255)
    float32_mean = float(np.cumsum(red, dtype=np.float32)[-1]) / n
    assert abs(float32_mean - ref_mean[0]) > 1e-3  # the naive accumulator is visibly off...
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-6)  # ...ours is not
    np.testing.assert_allclose(std, ref_std, rtol=0, atol=1e-6)


def test_finalize_is_exact_when_variance_is_tiny_next_to_the_mean():
    # 10^12 pixels of value 200 on every channel except 10 pixels of 201: std ~ 1.2e-8 on the
    # [0, 1] scale. E[x^2] - mean^2 in float64 cancels all 16 digits and is off by 15%; the exact
    # integer formula gets it to rounding.
    n, k = 10**12, 10
    s = 200 * n + k
    q = 200 * 200 * n + (201 * 201 - 200 * 200) * k
    sums = PartialSums(num_images=1, num_pixels=n, sum=(s, s, s), sum_sq=(q, q, q))
    mean, std = finalize(sums)
    exact_var = Fraction(q, n * 255**2) - Fraction(s, n * 255) ** 2
    exact_std = math.sqrt(exact_var)
    assert mean[0] == pytest.approx(float(Fraction(s, 255 * n)), rel=1e-15)
    assert std[0] == pytest.approx(exact_std, rel=1e-12)
    naive_var = (q / 255**2) / n - (s / 255 / n) ** 2
    naive_std = math.sqrt(max(naive_var, 0.0))
    assert abs(naive_std - exact_std) > 0.1 * exact_std  # why finalize does not do this


def test_two_shards_merged_equal_one_shard(dataset):
    files = list_split(dataset, "train").files
    whole = _compute(files)
    parts = [_compute(files, shard_id=r, num_shards=2) for r in range(2)]
    assert [p.num_images for p in parts] == [9, 9]
    merged = channel_sums.merge(parts)
    # the integer sums are exact, so the merge is too; only the per-image-mean float sums may differ
    # in the last bit (another summation order)
    assert (merged.num_images, merged.num_pixels, merged.sum, merged.sum_sq) == (
        whole.num_images,
        whole.num_pixels,
        whole.sum,
        whole.sum_sq,
    )
    np.testing.assert_allclose(merged.weighted_mean_sum, whole.weighted_mean_sum, rtol=1e-13)
    np.testing.assert_allclose(merged.weighted_mean_sq_sum, whole.weighted_mean_sq_sum, rtol=1e-13)
    assert merged.pixels_sq_sum == whole.pixels_sq_sum
    np.testing.assert_allclose(finalize(merged), finalize(whole), rtol=0, atol=1e-12)
    # what an all-reduce would carry round-trips exactly
    ints, floats = merged.to_arrays()
    assert PartialSums.from_arrays(ints, floats) == merged
    # more shards than images: the empty shards add nothing
    many = channel_sums.merge(_compute(files[:3], shard_id=r, num_shards=5) for r in range(5))
    assert many.sum == _compute(files[:3]).sum and many.num_images == 3


def test_resize_shorter_counts_the_resized_pixels(dataset):
    files = list_split(dataset, "train").files[:8]
    sums = _compute(files, resize_shorter=32)
    pixels = _dali_decode(files, resize_shorter=32)
    assert all(min(im.shape[:2]) == 32 for im in pixels)
    ref_mean, ref_std, n = _reference(pixels)
    assert sums.num_pixels == n
    np.testing.assert_allclose(finalize(sums), (ref_mean, ref_std), rtol=0, atol=1e-6)


def test_image_sums_are_exact_for_large_and_odd_shapes():
    rng = np.random.default_rng(3)
    for shape in ((1, 1, 3), (7, 11, 3), (600, 700, 3), (2100, 1100, 3)):  # the last: > 257 rows of 1024 px
        im = rng.integers(0, 256, size=shape, dtype=np.uint8)
        im.reshape(-1)[:1000] = 255  # saturated values: the overflow case of the integer blocks
        s, q = channel_sums.image_sums(im)
        x = im.reshape(-1, 3).astype(np.int64)
        assert s == x.sum(0).tolist() and q == (x * x).sum(0).tolist(), shape


@pytest.mark.slow  # DALI's CPU reductions take ~4 s over 17.6M pixels
@pytest.mark.parametrize("reduce_in", ["dali", "numpy"])
def test_sums_are_exact_on_an_image_whose_channel_sum_overflows_uint32(tmp_path, reduce_in):
    """4200 x 4200 pixels of value 251: the red sum is 4.43e9 > 2^32. DALI's reduction accumulates
    in the type it is asked for (uint64 here); an accumulator of the input's width would wrap."""
    side, colour = 4200, (251, 250, 3)
    path = tmp_path / "big.png"  # lossless, so the decoded pixels are known exactly
    Image.new("RGB", (side, side), colour).save(path, compress_level=1)
    sums = _compute([path], reduce_in=reduce_in)
    n = side * side
    assert 251 * n > 2**32
    assert sums.num_pixels == n
    assert sums.sum == tuple(c * n for c in colour)
    assert sums.sum_sq == tuple(c * c * n for c in colour)


def test_undecodable_image_is_a_user_error(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "0.JPEG")
    (folder / "1.JPEG").write_bytes(b"\xff\xd8 this is not a JPEG")
    with pytest.raises(UserError, match=r"the statistics pass cannot decode .*1\.JPEG"):
        _compute(list_split(tmp_path, "train").files, batch_size=2)


# ------------------------------------------------------------------------------------------ holdout


def test_holdout_is_stratified_exact_and_disjoint(tmp_path):
    classes = {"a": 10, "b": 20, "c": 31, "d": 1}
    make_image_folder(tmp_path, "train", classes, sizes=[(8, 8)])
    train = list_split(tmp_path, "train")

    # a float >= 1 is a count too (a float-typed config field turns 17 into 17.0)
    for size, expected in ((0.5, 31), (0.1, 6), (17, 17), (17.0, 17), (1, 1), (1.0, 1)):
        rest, held = carve_holdout(train, size, seed=0)
        assert len(held) == expected, size
        assert set(rest.files).isdisjoint(held.files)
        assert sorted(rest.files + held.files) == sorted(train.files)
        assert list(rest.files) == sorted(rest.files) and list(held.files) == sorted(held.files)
        assert rest.classes == held.classes == train.classes and held.split == "holdout"
        for f, label in zip(held.files, held.labels, strict=True):
            assert Path(f).parent.name == train.classes[label]
        kept = {c: sum(1 for lb in rest.labels if train.classes[lb] == c) for c in classes}
        assert all(n >= 1 for n in kept.values()), kept  # no class loses every image
    # proportional: half of each class (largest remainder puts c's extra half image in the holdout)
    _, held = carve_holdout(train, 0.5, seed=0)
    per_class = {c: sum(1 for lb in held.labels if train.classes[lb] == c) for c in classes}
    assert per_class == {"a": 5, "b": 10, "c": 16, "d": 0}


def test_holdout_is_deterministic_per_seed(dataset):
    train = list_split(dataset, "train")
    assert carve_holdout(train, 0.3, seed=5) == carve_holdout(train, 0.3, seed=5)
    assert carve_holdout(train, 0.3, seed=5)[1].files != carve_holdout(train, 0.3, seed=6)[1].files


@pytest.mark.parametrize("size", [0, -3, 1.5, 0.0, True, "0.1", float("nan"), 16, 16.0, 0.99, 0.01])
def test_bad_holdout_size_is_a_user_error_naming_it(dataset, size):
    train = list_split(dataset, "train")  # 18 images in 3 classes: at most 15 can be held out
    shown = repr(size) if isinstance(size, str) else str(size)
    if shown == "16.0":  # too many to hold out: named as typed on the command line (16, not 16.0)
        shown = "16"
    with pytest.raises(UserError, match=re.escape(f"data.holdout.size={shown} ")):
        carve_holdout(train, size, seed=0)


# ----------------------------------------------------------------------------- leakage and the guard


def _record(sums: PartialSums, selection, root, split, holdout=None) -> stats.StatsRecord:
    return build_record(
        sums, selection=selection, root=root, split=split, holdout=holdout, elapsed_s=0.1, resize_shorter=None
    )


def test_holdout_images_enter_the_stats_only_under_train(dataset):
    train = list_split(dataset, "train")
    val = list_split(dataset, "val", classes=train.classes)
    rest, held = carve_holdout(train, 0.25, seed=0)
    settings = {"size": 0.25, "seed": 0}

    on_rest = _compute(rest.files)
    on_train = _compute(train.files)
    assert on_rest.num_images == len(rest) == 18 - len(held)
    assert on_train.num_images == 18
    # the holdout's own sums are exactly the difference: its pixels are in one and not the other
    on_held = _compute(held.files)
    assert tuple(a + b for a, b in zip(on_rest.sum, on_held.sum, strict=True)) == on_train.sum

    rec_rest = _record(on_rest, rest, dataset, "train_minus_holdout", settings)
    rec_train = _record(on_train, train, dataset, "train", settings)
    held_hashes = {stats.path_hash(r) for r in stats.relative_paths(held, dataset)}
    assert held_hashes.isdisjoint(rec_rest.contents)
    assert held_hashes <= set(rec_train.contents)
    assert rec_rest.fingerprint == fingerprint(rest, dataset) != rec_train.fingerprint

    # accepted where they belong
    assert (
        check_stats_file(
            rec_rest,
            train_selection=rest,
            test=val,
            holdout=held,
            stats_from="train_minus_holdout",
            root=dataset,
        )
        == []
    )
    assert (
        check_stats_file(
            rec_train, train_selection=train, test=val, holdout=held, stats_from="train", root=dataset
        )
        == []
    )
    # full-train stats used where the holdout must be excluded: named as holdout contamination
    with pytest.raises(UserError) as e:
        check_stats_file(
            rec_train,
            train_selection=rest,
            test=val,
            holdout=held,
            stats_from="train_minus_holdout",
            root=dataset,
            path="s.json",
        )
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"stats file s.json includes {len(held)} images of the holdout split (")
    assert stats.relative_paths(held, dataset)[0] in msg and "resnet-repro stats" in msg


def test_guard_rejects_stats_that_saw_test_images(dataset):
    train = list_split(dataset, "train")
    val = list_split(dataset, "val", classes=train.classes)
    # stats computed over train + val by mistake (e.g. a wrong data.train_split)
    mixed = type(train)(
        split="train", files=train.files + val.files, labels=train.labels + val.labels, classes=train.classes
    )
    sums = PartialSums(num_images=24, num_pixels=1, sum=(1, 1, 1), sum_sq=(1, 1, 1))
    record = _record(sums, mixed, dataset, "train")
    expected = r"includes 6 images of the test split \(val/a/0.JPEG, val/a/1.JPEG, val/b/0.JPEG, \.\.\.\)"
    with pytest.raises(UserError, match=expected):
        check_stats_file(
            record, train_selection=train, test=val, holdout=None, stats_from="train", root=dataset
        )


def test_guard_rejects_stale_stats_after_a_file_is_added(tmp_path):
    make_image_folder(tmp_path, "train", {"a": 3, "b": 2}, sizes=[(16, 12)])
    make_image_folder(tmp_path, "val", {"a": 1, "b": 1}, sizes=[(16, 12)])
    train = list_split(tmp_path, "train")
    val = list_split(tmp_path, "val", classes=train.classes)
    record = _record(_compute(train.files), train, tmp_path, "train")
    shutil.copy(tmp_path / "train" / "a" / "0.JPEG", tmp_path / "train" / "a" / "new.JPEG")
    grown = list_split(tmp_path, "train")

    kw = dict(train_selection=grown, test=val, holdout=None, stats_from="train", root=tmp_path)
    with pytest.raises(UserError) as e:
        check_stats_file(record, **kw, path="x.json")
    msg = str(e.value)
    assert "stats file x.json was computed on a different file list (fingerprint " in msg
    assert "1 file of the train selection not in it: train/a/new.JPEG" in msg and "stale" in msg
    # allow_mismatch: a warning, not an error
    (warning,) = check_stats_file(record, **kw, allow_mismatch=True)
    assert "train/a/new.JPEG" in warning

    # a file replaced by one of another size: same paths, different fingerprint
    (tmp_path / "train" / "a" / "new.JPEG").unlink()
    Image.new("RGB", (40, 40), "red").save(tmp_path / "train" / "b" / "0.JPEG")
    kw["train_selection"] = list_split(tmp_path, "train")
    with pytest.raises(UserError, match="same paths, different file sizes"):
        check_stats_file(record, **kw)


def test_guard_without_a_file_list_relies_on_the_fingerprint(dataset):
    # above CONTENTS_LIMIT files (ImageNet) the record has no `contents`; a mismatch still fails
    train = list_split(dataset, "train")
    val = list_split(dataset, "val", classes=train.classes)
    rest, held = carve_holdout(train, 3, seed=0)
    record = _record(_compute(train.files[:2]), train, dataset, "train")
    record.contents = None
    kw = dict(test=val, holdout=held, root=dataset)
    with pytest.raises(UserError, match=r"different file list \(fingerprint [0-9a-f]{12} != [0-9a-f]{12}\)"):
        check_stats_file(record, train_selection=rest, stats_from="train_minus_holdout", **kw)
    assert check_stats_file(record, train_selection=train, stats_from="train", **kw) == []


def test_fingerprint_is_the_same_for_the_same_layout_elsewhere(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    a = fingerprint(list_split(dataset, "train"), dataset)
    assert fingerprint(list_split(copy, "train"), copy) == a
    assert len(a) == 64
    # relative root spelled differently: same relative paths
    assert stats.relative_paths(list_split(copy, "train"), str(copy) + "/")[0] == "train/a/0.JPEG"
    with pytest.raises(UserError, match="is not under data.root"):
        fingerprint([str(dataset / "train" / "a" / "0.JPEG")], copy / "train")


# ------------------------------------------------------------------------------------------ sampling


def test_max_images_sample_is_deterministic_stratified_and_reports_stderr(tmp_path):
    make_image_folder(tmp_path, "train", {"a": 12, "b": 24, "c": 4}, sizes=[(20, 16), (16, 20), (24, 24)])
    make_image_folder(tmp_path, "val", {"a": 1, "b": 1, "c": 1}, sizes=[(20, 16)])
    train = list_split(tmp_path, "train")
    val = list_split(tmp_path, "val", classes=train.classes)
    sample = stratified_sample(train, 10, seed=1)
    assert sample == stratified_sample(train, 10, seed=1)
    assert sample.files != stratified_sample(train, 10, seed=2).files
    assert set(sample.files) <= set(train.files) and list(sample.files) == sorted(sample.files)
    per_class = [sum(1 for lb in sample.labels if lb == c) for c in range(3)]
    assert per_class == [3, 6, 1]  # 12:24:4 of 10
    assert stratified_sample(train, 1000, seed=0) is train
    with pytest.raises(UserError, match="data.stats.max_images=0"):
        stratified_sample(train, 0, seed=0)

    sums = _compute(sample.files)
    record = build_record(
        sums,
        selection=train,
        root=tmp_path,
        split="train",
        holdout=None,
        elapsed_s=1.0,
        resize_shorter=None,
        max_images=10,
        sample_seed=1,
    )
    assert (record.num_images, record.file_count, record.max_images, record.sample_seed) == (10, 40, 10, 1)
    # the ratio estimator's standard error (the mean weights every pixel), from the decoded images
    images = [im.reshape(-1, 3).astype(np.float64) / 255 for im in _dali_decode(sample.files)]
    x = np.array([len(im) for im in images], dtype=np.float64)
    y = np.array([im.sum(axis=0) for im in images])
    ratio = y.sum(axis=0) / x.sum()
    residuals = y - x[:, None] * ratio
    expected = np.sqrt(len(x) / (len(x) - 1) * (residuals**2).sum(axis=0)) / x.sum()
    np.testing.assert_allclose(record.mean_stderr, expected, rtol=1e-9)
    # the fingerprint is of the selection the sample was drawn from, so the guard accepts it
    kw = dict(test=val, holdout=None, stats_from="train", root=tmp_path)
    assert check_stats_file(record, train_selection=train, **kw) == []


def test_the_standard_error_of_a_sampled_mean_matches_its_spread_over_repeated_samples():
    """Known truth: a population of 20,000 images whose pixel counts vary as ImageNet's do (log-normal,
    log sd 0.55: the 250-image sample's; CV 0.59 here, 0.73 in the sample). The reported mean weights
    every pixel (exact sums), so its standard error must be the weighted (ratio) one: over 3,000
    samples of 200 images, the mean reported SE matches the spread of the estimates and 95% intervals
    cover the population mean about 95% of the time. The per-image formula it replaced,
    sd(per-image means) / sqrt(n), ignored the weights: here it reported 12-15% too little and its
    intervals covered 90-91%."""
    rng = np.random.default_rng(0)
    population, n, draws = 20_000, 200, 3_000
    pixels = np.round(np.exp(rng.normal(np.log(180_000), 0.55, population))).astype(np.int64)
    means = np.clip(0.4 + rng.normal(0, 0.08, (population, 3)), 0.01, 0.99)
    sums = np.round(means * 255 * pixels[:, None]).astype(np.uint64)  # per-image channel sums
    truth = sums.sum(axis=0).astype(np.float64) / (255.0 * pixels.sum())

    estimates, stderrs = [], []
    for _ in range(draws):
        pick = rng.choice(population, n, replace=False)
        acc = channel_sums._Accumulator()
        acc.add(sums[pick], [0, 0, 0], pixels[pick])
        part = acc.result()
        estimates.append([v / (255 * part.num_pixels) for v in part.sum])  # what finalize() reports
        stderrs.append(channel_sums.mean_stderr(part))
    estimates, stderrs = np.array(estimates), np.array(stderrs)

    spread = estimates.std(axis=0, ddof=1) * np.sqrt(1 / (1 - n / population))  # without the 1% fpc
    np.testing.assert_allclose(stderrs.mean(axis=0), spread, rtol=0.08)
    covered = (np.abs(estimates - truth) <= 1.96 * stderrs).mean(axis=0)
    assert ((covered > 0.93) & (covered < 0.97)).all(), covered


# -------------------------------------------------------------------------------------- stats files


def test_stats_file_round_trips_atomically_beside_the_data(dataset):
    train = list_split(dataset, "train")
    record = _record(_compute(train.files[:4]), train, dataset, "train", {"size": 0.1, "seed": 3})
    path = default_stats_path(dataset, record.fingerprint)
    assert path == dataset / ".resnet_repro_stats" / f"{record.fingerprint[:16]}.json"
    write_stats_file(path, record)
    assert read_stats_file(path) == record
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    data = json.loads(path.read_text())
    assert data["split"] == "train" and data["holdout"] == {"size": 0.1, "seed": 3}
    assert data["version"] and data["num_images"] == 4 and data["mean_stderr"] is None
    assert list_split(dataset, "train").files == train.files  # the hidden folder is not a split/class
    # readable by other users of a shared dataset copy, as a plain file would be (umask permitting)
    assert path.stat().st_mode & 0o044 == 0o644 & 0o044 & ~_umask()

    with pytest.raises(UserError, match="does not exist; compute it with `resnet-repro stats`"):
        read_stats_file(dataset / "missing.json")
    bad = dataset / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        read_stats_file(bad)
    del data["fingerprint"]
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match="lacks fingerprint"):
        read_stats_file(bad)
    bad.unlink()


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("std", 0.3, "std=0.3: 3 numbers in (0, 0.5]"),
        ("std", ["a", "b", "c"], "std=['a', 'b', 'c']: 3 numbers in (0, 0.5]"),
        ("std", [float("nan")] * 3, "std=[nan, nan, nan]: 3 numbers in (0, 0.5]"),
        ("mean", [1e9, 1e9, 1e9], "mean=[1000000000.0, 1000000000.0, 1000000000.0]: 3 numbers in [0, 1]"),
        ("mean", [0.5, 0.5], "mean=[0.5, 0.5]: 3 numbers in [0, 1]"),
        ("format", "1", "format='1': a whole number"),
        ("fingerprint", None, "fingerprint=None: text"),
        ("num_images", -4, "num_images=-4: a whole number >= 0"),
    ],
)
def test_a_stats_file_with_values_no_pass_writes_is_refused_naming_the_value(dataset, key, value, named):
    """A hand edit or another tool's file: one line naming the value, not a TypeError later or a
    run normalized by nonsense (a mean of 1e9 trained to a val loss of 2e22, a review found)."""
    train = list_split(dataset, "train")
    record = _record(_compute(train.files[:4]), train, dataset, "train")
    bad = dataset / "edited.json"
    write_stats_file(bad, record)
    data = json.loads(bad.read_text())
    data[key] = value
    bad.write_text(json.dumps(data))
    try:
        with pytest.raises(UserError) as info:
            read_stats_file(bad)
        message = str(info.value)
        assert f"stats file {bad} has {named}" in message and "recompute with `resnet-repro stats`" in message
    finally:
        bad.unlink()


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.skipif(not SAMPLE_ROOT.is_dir(), reason=f"real ImageNet sample not present at {SAMPLE_ROOT}")
def test_real_imagenet_jpegs_agree_with_pil():
    files = list_split(SAMPLE_ROOT, "train").files[:24]
    mean, std = finalize(_compute(files, batch_size=8, num_threads=2))
    pil_mean, pil_std, _ = _reference(_pil_decode(files))
    np.testing.assert_allclose(mean, pil_mean, rtol=0, atol=2e-3)
    np.testing.assert_allclose(std, pil_std, rtol=0, atol=2e-3)


@pytest.mark.parametrize("under", ["file", "file/deeper"])
def test_a_stats_path_inside_a_file_names_the_file_not_a_read_only_dataset(tmp_path: Path, under: str):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=rf"{re.escape(str(tmp_path / 'file'))} is a file, not a folder"):
        stats.check_writable(tmp_path / under / "stats.json")
