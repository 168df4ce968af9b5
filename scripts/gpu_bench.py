"""ResNet-50 `bench model` in fp32 / bf16 / bf16+channels_last / +compile, one table; then the
runner's training step against a bare loop (`bench loop-overhead`) in bf16 + channels_last.

Runs without Hydra or DALI (the lent GPU machine has torch only): it builds the config dataclasses
directly and calls resnet_repro.planning.bench.bench_model, the same code `resnet-repro bench model` runs.
Usage: python scripts/gpu_bench.py [--batch-size 256] [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from resnet_repro.config import (  # noqa: E402
    BenchConfig,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    RootConfig,
    TrainerConfig,
)
from resnet_repro.planning.bench import bench_loop_overhead, bench_model  # noqa: E402

VARIANTS = (
    ("fp32", "fp32", False, False),
    ("bf16", "bf16", False, False),
    ("bf16 + channels_last", "bf16", True, False),
    ("bf16 + channels_last + compile", "bf16", True, True),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--skip-overhead", action="store_true", help="no runner-vs-bare-loop comparison")
    p.add_argument("--json", type=Path)
    p.add_argument("--only", help="measure only this setting (e.g. 'bf16 + channels_last')")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument(
        "--device", default="cuda", help="cuda; cpu only to smoke-test this script (bf16 autocast on CPU)"
    )
    ns = p.parse_args(argv)
    if ns.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if ns.device == "cuda" else torch.device("cpu")
    torch.backends.cudnn.benchmark = True
    base = RootConfig(
        data=DataConfig(name="synthetic", root="-", image_size=ns.image_size),
        model=ModelConfig(name=ns.model),
        trainer=TrainerConfig(batch_size=ns.batch_size, device=device.type),
        logging=LoggingConfig(tensorboard=False, progress=False),
        bench=BenchConfig(mode="model", warmup=ns.warmup, steps=ns.steps, trials=ns.trials),
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = {"device": name, "batch_size": ns.batch_size, "rows": [], "loop_overhead": None}

    def save() -> None:  # after every measurement: a timeout still leaves what was measured
        if ns.json:
            ns.json.write_text(json.dumps(out, indent=2))

    def measure(label: str, precision: str, channels_last: bool, compile_: bool) -> None:
        cfg = replace(
            base,
            model=replace(base.model, channels_last=channels_last),
            trainer=replace(base.trainer, precision=precision, compile=compile_),
        )
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as run_dir:
            result = bench_model(cfg, device, Path(run_dir))
        out["rows"].append({"setting": label, **result, "wall_s": time.perf_counter() - start})
        print(f"| {label} | {result['img_per_s']:.0f} | {result['peak_memory_mb'] / 1024:.1f} |", flush=True)
        save()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\n{ns.model} train step (forward + backward + SGD step), batch {ns.batch_size}, {name}")
    print(f"| setting | img/s (median of {ns.trials}) | peak memory (GiB) |")
    print("|---|---|---|", flush=True)
    # compile last: its cold compile is the slowest and least predictable part
    variants = [v for v in VARIANTS if ns.only is None or v[0] == ns.only]
    if not variants:
        p.error(f"--only {ns.only!r} is not one of {', '.join(v[0] for v in VARIANTS)}")
    for label, precision, channels_last, compile_ in variants:
        if not compile_:
            measure(label, precision, channels_last, compile_)
    if not ns.skip_overhead:
        # the runner's step (non-finite check, clipping statistics, device-side sums) vs
        # forward/loss/backward/step on the same model and batches, interleaved trials
        cfg = replace(
            base,
            model=replace(base.model, channels_last=True),
            trainer=replace(base.trainer, precision="bf16"),
        )
        with tempfile.TemporaryDirectory() as run_dir:
            overhead = bench_loop_overhead(cfg, device, Path(run_dir))
        out["loop_overhead"] = overhead
        save()
        print(
            f"| loop overhead, bf16 + channels_last: runner {overhead['runner_img_per_s']:.0f} vs bare loop "
            f"{overhead['bare_img_per_s']:.0f} | ratio {overhead['overhead_ratio']:.3f} (goal <= 1.05) | |",
            flush=True,
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for label, precision, channels_last, compile_ in variants:
        if compile_ and not ns.skip_compile:
            measure(label, precision, channels_last, compile_)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
