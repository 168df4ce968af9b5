"""The GPU memory one training process needs (resnet_repro/planning/memory_fit.py): the real presets on the
meta device as rehearse builds them, checked against numbers this project did not write (torchvision's
published parameter count, direct counts on real models under autocast, a CPU step's measured peak,
NVIDIA's published per-GPU batches)."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch
import torch.nn as nn
from conftest import compose

from resnet_repro.config import ModelConfig, RegularizationConfig, UserError, per_device_batch, to_dataclass
from resnet_repro.data import progressive
from resnet_repro.models import build_model
from resnet_repro.planning import memory_fit
from resnet_repro.planning.memory_fit import GIB, check_fits, estimate, kept_bytes_per_image
from resnet_repro.planning.meta_model import saved_bytes_per_image

PAPER = "experiment=imagenet_paper"  # ResNet-50, fp32, SGD 0.9, DALI with 8 threads, global batch 256
TORCHVISION_RESNET50_PARAMETERS = 25_557_032  # torchvision's ResNet50_Weights.IMAGENET1K_V1 "num_params"
V100_16GB_GIB = 16_945_512_448 / GIB  # what torch.cuda.get_device_properties reports for a V100-SXM2-16GB


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The real models' forward passes on one thread: a small machine shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def cfg_of(*overrides: str):
    from omegaconf import OmegaConf

    dcfg = compose(list(overrides))
    if OmegaConf.is_missing(dcfg.data, "root"):
        dcfg.data.root = ""
    return to_dataclass(dcfg)


@functools.cache
def meta_net(model_json: str, regularization_json: str) -> tuple[nn.Module, int]:
    """The run's model on the meta device, as rehearse builds it, and its float32 activation bytes
    per image at 224 px (every preset used here trains at 224)."""
    with torch.device("meta"):
        net = build_model(
            ModelConfig(**json.loads(model_json)),
            1000,
            RegularizationConfig(**json.loads(regularization_json)),
        )
    return net, saved_bytes_per_image(net, (3, 224, 224))


def estimate_of(*overrides: str, world: int = 1, batch: int | None = None, on_gpu: bool = True):
    cfg = cfg_of(*overrides)
    assert max(progressive.train_sizes(cfg.data, cfg.trainer.epochs)) == 224
    net, fp32 = meta_net(
        json.dumps(dataclasses.asdict(cfg.model)), json.dumps(dataclasses.asdict(cfg.regularization))
    )
    b = batch if batch is not None else per_device_batch(cfg.trainer, world)
    return cfg, estimate(cfg, net, b, world, fp32, on_gpu=on_gpu)


# ----------------------------------------------------------------------------------- the sum
def test_the_parts_add_up_to_the_total_and_each_has_a_line():
    _, est = estimate_of(PAPER, "trainer.ema.decay=0.9999", world=2)
    parts = [getattr(est, name) for name in memory_fit.PARTS]
    assert est.total == pytest.approx(sum(parts))
    assert all(p > 0 for p in parts)  # EMA, NCCL, DALI: every part is present in this run
    assert est.allocated < est.total
    lines = est.lines()
    assert len(lines) == len(parts) + 1 and lines[-1].startswith("total")
    assert "activations" in lines[memory_fit.PARTS.index("activations")]


def test_imagenet_paper_at_32_images_per_process_fits_80_gib_comfortably():
    cfg, est = estimate_of(PAPER, "trainer.global_batch=256", world=8)  # 256 over 8 GPUs: 32 each
    assert 3 < est.total < 20
    check_fits(est, 80.0, cfg, 32, 224)  # no error


def test_4096_per_process_at_224_px_is_refused_naming_batch_pixels_need_and_gpu():
    cfg, est = estimate_of(PAPER, "trainer.global_batch=4096")
    assert est.activations > 300  # 4096 x ~82 MiB of float32 activations
    with pytest.raises(UserError) as e:
        check_fits(est, 80.0, cfg, 4096, 224)
    msg = str(e.value)
    assert "\n" not in msg
    assert "a per-process batch of 4096 at 224 px" in msg
    assert f"needs about {est.total:,.0f} GiB on an 80 GiB GPU" in msg
    assert f"(activations {est.activations:,.0f} GiB)" in msg
    # the global batch is the recipe's: more processes, a smaller global batch or bf16
    assert "raise trainer.nproc to 8 (trainer.global_batch=4096 split evenly)" in msg
    assert "lower trainer.global_batch" in msg and "trainer.precision=bf16" in msg


def test_the_largest_batch_the_message_names_fits_and_one_more_image_does_not():
    cfg, est = estimate_of(
        PAPER, "trainer.global_batch=null", "trainer.batch_size=2048", "trainer.precision=bf16"
    )
    with pytest.raises(UserError) as e:
        check_fits(est, 80.0, cfg, 2048, 224)
    msg = str(e.value)
    fit = int(msg.split("lower trainer.batch_size to at most ")[1])  # the last fix: bf16 is on already
    assert "precision" not in msg
    check_fits(estimate_of(PAPER, "trainer.precision=bf16", batch=fit)[1], 80.0, cfg, fit, 224)
    assert estimate_of(PAPER, "trainer.precision=bf16", batch=fit + 1)[1].total > 80.0


# ----------------------------------------------------------------------------------- each part
def test_parameter_bytes_are_torchvisions_published_resnet50_count_in_float32():
    _, est = estimate_of(PAPER)
    assert est.gradients * GIB == TORCHVISION_RESNET50_PARAMETERS * 4
    assert est.optimizer_state * GIB == TORCHVISION_RESNET50_PARAMETERS * 4  # SGD's momentum buffer
    assert est.weights * GIB > TORCHVISION_RESNET50_PARAMETERS * 4  # + BatchNorm's running statistics


def test_adam_and_adamw_keep_twice_the_state_of_sgd_with_momentum_and_sgd_without_none():
    sgd = estimate_of(PAPER, "optim=sgd")[1].optimizer_state
    assert estimate_of(PAPER, "optim=adam")[1].optimizer_state == pytest.approx(2 * sgd)
    assert estimate_of(PAPER, "optim=adamw")[1].optimizer_state == pytest.approx(2 * sgd)
    assert estimate_of(PAPER, "optim.momentum=0")[1].optimizer_state == 0


def test_an_ema_is_one_more_copy_of_the_weights():
    assert estimate_of(PAPER)[1].ema == 0
    _, est = estimate_of(PAPER, "trainer.ema.decay=0.9999")
    assert est.ema == pytest.approx(est.weights)  # fp32: no autocast copies in the weights


def test_bf16_and_fp16_keep_about_half_the_activation_bytes_of_fp32():
    fp32 = estimate_of(PAPER)[1]
    bf16 = estimate_of(PAPER, "trainer.precision=bf16")[1]
    fp16 = estimate_of(PAPER, "trainer.precision=fp16")[1]
    assert bf16.activations == fp16.activations
    assert 0.5 < bf16.activations / fp32.activations < 0.55  # max pooling's int64 indices stay
    assert bf16.weights > fp32.weights  # autocast's half-precision copies of the weights


def test_channels_last_changes_no_byte():
    assert estimate_of(PAPER, "model.channels_last=true")[1] == estimate_of(PAPER)[1]


def test_pipeline_buffers_count_only_for_dali_on_a_gpu():
    dali = estimate_of(PAPER)[1].pipeline_buffers
    # the training decoder's nvJPEG buffers: ~1.6 GiB at data=imagenet's 8 threads
    # (docs/troubleshooting.md), plus the prefetched float32 batches
    assert 1.57 < dali < 2.5
    assert estimate_of(PAPER, on_gpu=False)[1].pipeline_buffers == 0
    assert estimate_of(PAPER, "data.backend=torchvision")[1].pipeline_buffers == 0
    four = estimate_of(PAPER, "data.num_threads=4")[1].pipeline_buffers
    assert dali - four == pytest.approx(4 * 211_025_920 / GIB)  # per decoder thread


def test_nccl_and_ddp_buckets_count_only_for_more_than_one_process():
    one, two = estimate_of(PAPER, world=1)[1], estimate_of(PAPER, world=2)[1]
    assert two.context - one.context == memory_fit.NCCL_GIB
    assert two.gradients == pytest.approx(2 * one.gradients)  # DDP's buckets: a second copy


# ----------------------------------------------------------------------------------- oracles
def _direct_saved_bytes_per_image(net: nn.Module, size: int, bf16: bool = True) -> float:
    """Bytes per image a real forward keeps for its backward (under CPU bf16 autocast, or in float32),
    each storage once, parameters left out: the difference of batches 4 and 2, so that what does not
    grow with the batch (autocast's weight copies, BatchNorm's per-channel statistics) cancels."""
    params = {p.untyped_storage()._cdata for p in net.parameters()}

    def count(batch: int) -> int:
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.untyped_storage()._cdata not in params:
                saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(torch.randn(batch, 3, size, size))
        return sum(saved.values())

    return (count(4) - count(2)) / 2


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_the_autocast_count_matches_a_direct_count_on_a_real_model(name):
    torch.manual_seed(0)
    net = build_model(ModelConfig(name=name), 10, RegularizationConfig()).train()
    size = 32  # the counts scale with the pixels; 32 px keeps the test fast
    _, pooled = memory_fit.forward_shapes(net, size)
    fp32 = _direct_saved_bytes_per_image(net, size, bf16=False)
    counted = kept_bytes_per_image(fp32, "bf16", "bn", pooled)
    assert counted == _direct_saved_bytes_per_image(net, size)  # to the byte


class _GroupNormAsCudaAutocast(nn.GroupNorm):
    """GroupNorm as CUDA autocast runs it: inputs cast to float32 (its float32 op list)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return nn.functional.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)


def test_the_groupnorm_factor_covers_cuda_autocasts_float32_group_norm():
    from torchvision.models import resnet18

    net = resnet18(num_classes=10, norm_layer=functools.partial(_GroupNormAsCudaAutocast, 32)).train()
    fp32 = _direct_saved_bytes_per_image(net, 32, bf16=False)
    direct = _direct_saved_bytes_per_image(net, 32)
    assert direct > fp32  # more than float32: GN keeps float32 and the convolutions a bf16 copy
    assert 0.85 < direct / kept_bytes_per_image(fp32, "bf16", "gn", 0) <= 1.0


def test_the_summed_parts_bound_the_peak_of_a_real_cpu_step():
    """torch.profiler's allocation events over a real forward + backward (the gradients start
    empty, as after zero_grad(set_to_none=True)): the peak above the weights stays below
    activations + gradients + backward transient, and not far below."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    size, batch = 64, 16
    net = build_model(ModelConfig(name="resnet50"), 1000, RegularizationConfig()).train()
    fp32 = saved_bytes_per_image(net, (3, size, size))
    cfg = cfg_of(PAPER)
    est = estimate(cfg, net, batch, 1, fp32, image_size=size, on_gpu=False)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        nn.functional.cross_entropy(net(images), labels).backward()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        pytest.skip("this torch's profiler gives no allocation events")
    events = sorted((e.start_ns(), e.nbytes()) for e in results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    summed = (est.activations + est.gradients + est.backward_transient) * GIB
    assert peak <= summed <= 1.3 * peak


@pytest.mark.parametrize(
    ("precision", "batch", "fits"),
    [("fp16", 256, True), ("fp32", 112, True), ("fp32", 256, False)],
)
def test_nvidias_published_v100_16gb_batches_fit_and_a_larger_one_does_not(precision, batch, fits):
    """NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/configs.yml: ResNet-50 v1.5 on
    DGX-1V (8 x V100 16 GB) trains 256 images per GPU with AMP (nhwc) and 112 in FP32, with
    their PyTorch data loader (CPU decode) and DDP; 256 in FP32 is what they use on 32 GB V100s."""
    overrides = (
        PAPER,
        f"trainer.precision={precision}",
        "model.channels_last=true",
        "data.backend=torchvision",
        f"trainer.global_batch={8 * batch}",
    )
    cfg, est = estimate_of(*overrides, world=8)
    if fits:
        check_fits(est, V100_16GB_GIB, cfg, batch, 224)
    else:
        with pytest.raises(UserError, match=f"a per-process batch of {batch} at 224 px"):
            check_fits(est, V100_16GB_GIB, cfg, batch, 224)
