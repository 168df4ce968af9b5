"""Will one training process of a run fit on its GPU? The GPU memory a process needs, part by part,
against the GPU's, so that `resnet-repro rehearse` can refuse a per-process batch that cannot fit
before the job queues for GPU hours.

The parts are summed as if each peaked at the same moment, which they do not quite (the gradients
are allocated during the backward pass while the activations are freed): the total is an upper
bound of the step's peak, by design. On a CPU, where the step's allocations can be counted exactly
(torch.profiler's memory events, torchvision ResNet-50 at 96-160 px, 8-16 images, SGD), the
measured peak above the weights and momentum was 87-92% of activations + gradients alone in float32
and 76-81% under bf16 autocast. No GPU measurement of a step's peak exists in this project yet
(docs/benchmarks.md: "Measured on a GPU: nothing yet"); the constants below for what only a GPU
has (CUDA context, NCCL, cuDNN workspace, allocator slack) are public figures or stated assumptions.
The nearest public calibration: NVIDIA's DeepLearningExamples train ResNet-50 v1.5 at 256 images per
GPU with AMP and 112 in FP32 on 8 V100s of 16 GB (15.78 GiB; PyTorch/Classification/ConvNets/
configs.yml, DGX1V); the estimate gives 15.6 and 13.6 GiB for them, so it accepts both, with
0.2 GiB to spare at the tighter one (what they really used is not published).

Eager mode is estimated: a compiled model (trainer.compile=true) usually keeps less, since the
compiled graph may recompute cheap operations instead of saving them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from resnet_repro.config import RootConfig, UserError
from resnet_repro.training.optim import optimizer_state_copies

if TYPE_CHECKING:
    import torch.nn as nn

GIB = 2**30
FLOAT32 = 4  # bytes; parameters, gradients, optimizer state and the EMA stay float32 under autocast
HALF = 2  # bytes of a bf16 / fp16 element
INDEX = 8  # bytes of an int64 element: max pooling keeps the argmax of each output for its backward
RGB = 3

# train.py builds DistributedDataParallel without gradient_as_bucket_view, so its all-reduce buckets
# are a second copy of the gradients whenever world > 1 (PyTorch's DDP documentation)
DDP_GRADIENT_AS_BUCKET_VIEW = False

# CUDA autocast runs group_norm in float32 (PyTorch's autocast op reference lists group_norm and
# layer_norm among the CUDA ops that autocast to float32; batch_norm is on neither list and runs in
# its input's dtype). So with model.norm=gn a normalization keeps a float32 copy of its input, its
# ReLU a float32 output, and the next convolution a low-precision copy of that: more bytes than in
# float32. CPU autocast keeps group_norm in bf16 (checked with torch 2.x), so this was measured by
# emulation: torchvision ResNets with a GroupNorm that casts its input to float32 as CUDA autocast
# does, saved_tensors_hooks counting every saved storage once under torch.autocast("cpu", bf16), at
# 64 px, the per-image bytes taken as the difference of batches 4 and 2 (the constant part is
# autocast's weight copies). Autocast / float32 bytes: ResNet-50 1.2306, ResNet-18 1.1324; the
# larger is taken.
GN_AUTOCAST_FACTOR = 1.23

# the backward pass's largest transient: at the layer with the largest output, the gradient of that
# output and of its input (at least as large for a ResNet's stem and first stage) are alive
# together, as copies of the largest output. An assumption: on a CPU the step's measured peak came
# at the start of the backward pass, before any such layer, and stayed below the summed parts.
BACKWARD_TRANSIENT_COPIES = 2

# cuDNN's convolution workspace: with cudnn.benchmark (train.py sets it) cuDNN picks the fastest
# algorithm whose workspace PyTorch can allocate, so this part is soft (a tight GPU gets slower
# algorithms rather than an out-of-memory error). Other frameworks cap it at 512 MB (PaddlePaddle
# lowered its default from 4 GB to 512 MB, PaddlePaddle/Paddle#19780, saying ResNet-50's largest
# batch grew ~10%) or 1 GiB (LBANN/lbann#437): 1 GiB assumed.
CUDNN_WORKSPACE_GIB = 1.0

# the CUDA context (driver, loaded kernels), outside PyTorch's allocator: ~274 MiB for a bare
# context with lazy module loading, PyTorch's default since 1.13 (pytorch/pytorch#86509), ~400 MB
# (pytorch/pytorch#109888); the cuDNN and cuBLAS kernels a ResNet step loads come on top: 0.5 GiB
# assumed.
CUDA_CONTEXT_GIB = 0.5

# NCCL's buffers when world > 1: 544 MB (2 GPUs) to 688 MB (4 A100s, NVLink) per communicator after
# an all-reduce (NVIDIA/nccl#964), ~1.6 GB for one communicator in NVIDIA/nccl#864; it grows with
# the channel count, which is higher on NVLink H100s (NVIDIA/nccl#986): 1 GiB assumed.
NCCL_GIB = 1.0

# PyTorch's caching allocator reserves more than it has allocated (fragmentation, 2 MiB rounding of
# large blocks); a ResNet's fixed shapes keep that small. 10% of the parts it allocates: an
# assumption, not measured here (torch.cuda.memory_reserved vs max_memory_allocated would settle it).
ALLOCATOR_SLACK = 0.10


@dataclass(frozen=True)
class MemoryEstimate:
    """GiB per process, by part; `total` is their sum, `per_image` (not a part) what each image of
    the per-process batch adds to it."""

    weights: float  # parameters and buffers (float32), + autocast's half-precision weight copies
    gradients: float  # one float32 copy of the parameters, + DDP's buckets when world > 1
    optimizer_state: float
    ema: float  # trainer.ema: a copy of parameters and buffers
    activations: float  # kept for backward at the configured precision and largest crop, x batch
    backward_transient: float  # the backward's largest transient (gradients of the largest output)
    cudnn_workspace: float
    pipeline_buffers: float  # DALI's device buffers (nvJPEG "mixed" decode, output queues)
    context: float  # CUDA context, + NCCL when world > 1
    allocator_slack: float  # the caching allocator's reserved-but-not-allocated memory
    per_image: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, name) for name in PARTS)

    @property
    def allocated(self) -> float:
        """The parts PyTorch's allocator holds: comparable with torch.cuda.max_memory_allocated."""
        return sum(getattr(self, name) for name in ALLOCATED_PARTS)

    def lines(self) -> list[str]:
        """One line per part and the total, for the rehearsal verdict."""
        width = max(len(name) for name in PARTS)
        out = [f"{name.replace('_', ' '):<{width}}  {getattr(self, name):8.2f} GiB" for name in PARTS]
        return [*out, f"{'total':<{width}}  {self.total:8.2f} GiB"]


PARTS = tuple(f.name for f in fields(MemoryEstimate) if f.name != "per_image")
ALLOCATED_PARTS = (
    "weights",
    "gradients",
    "optimizer_state",
    "ema",
    "activations",
    "backward_transient",
    "cudnn_workspace",
)


def estimate(
    cfg: RootConfig,
    net: nn.Module,
    per_process_batch: int,
    world: int,
    activation_bytes_per_image_fp32: float,
    *,
    image_size: int | None = None,
    on_gpu: bool = True,
) -> MemoryEstimate:
    """The GPU memory one training process of `cfg` needs at `per_process_batch` images per step
    among `world` processes. `net`: the run's model, best on the meta device (as rehearse builds
    it; one forward pass of 2 images reads its layer shapes); `activation_bytes_per_image_fp32`:
    what meta_model.saved_bytes_per_image counts for it at `image_size` (default: the largest training
    crop). `on_gpu`: whether the run's DALI pipeline decodes on a GPU (data.backend=dali there)."""
    from resnet_repro.data import progressive

    size = (
        image_size if image_size is not None else max(progressive.train_sizes(cfg.data, cfg.trainer.epochs))
    )
    params, buffers, cast = _weight_bytes(net)
    low = cfg.trainer.precision in ("bf16", "fp16")
    largest, pooled = forward_shapes(net, size)
    kept = kept_bytes_per_image(
        activation_bytes_per_image_fp32, cfg.trainer.precision, cfg.model.norm, pooled
    )
    if low:
        kept += RGB * size * size * FLOAT32  # the float32 input batch stays alive beside its cast copy
    gradient_element = HALF if low and cfg.model.norm == "bn" else FLOAT32
    transient = BACKWARD_TRANSIENT_COPIES * largest * gradient_element
    grad_copies = 2 if world > 1 and not DDP_GRADIENT_AS_BUCKET_VIEW else 1
    fixed, queued = pipeline_bytes(cfg, size, on_gpu)
    parts: dict[str, float] = {
        "weights": (params + buffers + (cast if low else 0)) / GIB,
        "gradients": grad_copies * params / GIB,
        "optimizer_state": optimizer_state_copies(cfg.optim) * params / GIB,
        "ema": (params + buffers) / GIB if cfg.trainer.ema.decay is not None else 0.0,
        "activations": kept * per_process_batch / GIB,
        "backward_transient": transient * per_process_batch / GIB,
        "cudnn_workspace": CUDNN_WORKSPACE_GIB,
        "pipeline_buffers": (fixed + queued * per_process_batch) / GIB,
        "context": CUDA_CONTEXT_GIB + (NCCL_GIB if world > 1 else 0.0),
    }
    parts["allocator_slack"] = ALLOCATOR_SLACK * sum(parts[name] for name in ALLOCATED_PARTS)
    per_image = (kept + transient) * (1 + ALLOCATOR_SLACK) / GIB + queued / GIB
    return MemoryEstimate(**parts, per_image=per_image)


def check_fits(
    est: MemoryEstimate, gpu_gib: float, cfg: RootConfig, per_process_batch: int, image_size: int
) -> None:
    """Raises UserError with the batch, the crop, the need and the GPU's memory, and the fixes, when
    the estimate exceeds `gpu_gib` (the GPU's total memory in GiB)."""
    if est.total <= gpu_gib:
        return
    fixed = est.total - est.per_image * per_process_batch
    fit = max(0, math.floor((gpu_gib - fixed) / est.per_image)) if est.per_image > 0 else 0
    gpu = _gib(gpu_gib)
    need = (
        f"a per-process batch of {per_process_batch} at {image_size} px needs about {_gib(est.total)} GiB "
        f"on {article(gpu)} {gpu} GiB GPU (activations {_gib(est.activations)} GiB)"
    )
    if fit == 0:
        raise UserError(
            f"{need}; not even one image fits beside the {_gib(fixed)} GiB the rest needs: "
            "use a GPU with more memory"
        )
    raise UserError(f"{need}; about {fit} per process fit: {_fixes(cfg, per_process_batch, fit)}")


# ----------------------------------------------------------------------------------- the parts
def kept_bytes_per_image(fp32_bytes: float, precision: str, norm: str, pooled_elements: int) -> float:
    """Bytes per image a training forward keeps for its backward under `precision`, from the count
    in float32. Under bf16 / fp16 autocast a BatchNorm ResNet keeps every floating tensor at half
    the bytes (convolutions and the classifier save their autocast inputs; BatchNorm and ReLU run in
    them), and max pooling's int64 indices unchanged; measured on the CPU (saved_tensors_hooks under
    torch.autocast("cpu", bf16), torchvision ResNet-18 and ResNet-50 at 32, 64 and 128 px) this formula
    gave the count to the byte: 0.536 of float32 for ResNet-18, 0.509 for ResNet-50 (the indices
    weigh more in the smaller net). With GroupNorm see GN_AUTOCAST_FACTOR."""
    if precision not in ("bf16", "fp16"):
        return fp32_bytes
    if norm == "gn":
        return fp32_bytes * GN_AUTOCAST_FACTOR
    indices = pooled_elements * INDEX
    return (fp32_bytes - indices) * HALF / FLOAT32 + indices


def forward_shapes(net: nn.Module, image_size: int) -> tuple[int, int]:
    """(elements of the largest output of any layer, elements of the max-pool outputs) per image,
    read from one forward of 2 images on `net`'s device (free on the meta device), in evaluation
    mode: a ResNet's shapes are the same in training, and a real model's BatchNorm statistics stay
    as they were."""
    import torch
    import torch.nn as nn

    largest = pooled = 0

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal largest, pooled
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel())
            if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
                pooled += output.numel()

    leaves = [m for m in net.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(record) for m in leaves]
    was_training = net.training
    device = next(net.parameters()).device
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros((2, RGB, image_size, image_size), device=device))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return largest // 2, pooled // 2


def pipeline_bytes(cfg: RootConfig, train_size: int, on_gpu: bool) -> tuple[float, float]:
    """(fixed bytes, bytes per image of the per-process batch) of DALI's device buffers: the
    training decoder's preallocated nvJPEG buffers (data/dali.py's MIXED_DECODER_ARGS: ~201 MiB per
    thread, 8 threads ~1.6 GiB, as docs/troubleshooting.md says), and the float32 batches each
    pipeline's prefetch queue holds (data.prefetch of them: training at the largest crop, the
    evaluated splits at data.image_size). The decoders' intermediate images are not counted."""
    d = cfg.data
    if d.backend != "dali" or not on_gpu:
        return 0.0, 0.0
    from resnet_repro.data.dali import decoder_args, preallocated_bytes

    nvjpeg, _ = preallocated_bytes(decoder_args(gpu=True, train=True), d.num_threads)
    eval_pipelines = 1 + (d.holdout.size is not None)  # the test split, and the holdout when carved
    queued = d.prefetch * RGB * FLOAT32 * (train_size**2 + eval_pipelines * d.image_size**2)
    return float(nvjpeg), float(queued)


def _weight_bytes(net: nn.Module) -> tuple[int, int, int]:
    """(parameter bytes, buffer bytes, bytes of autocast's half-precision copies of the convolution
    and linear parameters: cached for the forward pass and kept by those layers for the backward)."""
    import torch.nn as nn

    params = sum(p.numel() * p.element_size() for p in net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    cast = sum(
        p.numel() * HALF
        for m in net.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        for p in m.parameters(recurse=False)
    )
    return params, buffers, cast


# ----------------------------------------------------------------------------------- the message
def _fixes(cfg: RootConfig, per_process_batch: int, fit: int) -> str:
    t = cfg.trainer
    fixes = []
    if t.global_batch is not None:
        # the fewest processes, more than now, that split the global batch evenly into batches that fit
        world = max(1, t.global_batch // per_process_batch)
        more = [
            p
            for p in range(world + 1, t.global_batch + 1)
            if t.global_batch % p == 0 and t.global_batch // p <= fit
        ]
        if more:
            fixes.append(
                f"raise trainer.nproc to {more[0]} (trainer.global_batch={t.global_batch} split evenly)"
            )
        fixes.append("lower trainer.global_batch")
    else:
        fixes.append(f"lower trainer.batch_size to at most {fit}")
    if t.precision == "fp32":
        fixes.append("use trainer.precision=bf16")
    if len(fixes) == 1:
        return fixes[0]
    return ", ".join(fixes[:-1]) + ("," if len(fixes) > 2 else "") + " or " + fixes[-1]


def _gib(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def article(number: str) -> str:
    """ "an" before a number read with a vowel sound (8, 80, 11, 18, 800...), else "a"."""
    digits = number.replace(",", "").split(".")[0]
    return "an" if digits.startswith("8") or (len(digits) % 3 == 2 and digits[:2] in ("11", "18")) else "a"
