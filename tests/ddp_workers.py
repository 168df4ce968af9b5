"""Functions run inside locally launched worker processes by test_ddp.py (importable by spawn)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from resnet_repro.cluster import distributed
from resnet_repro.cluster.preemption import Interrupts
from resnet_repro.config import (
    AugmentConfig,
    DataConfig,
    LoggingConfig,
    RootConfig,
    ScheduleConfig,
    TrainerConfig,
)
from resnet_repro.data.splits import list_split
from resnet_repro.evaluation.evaluate import evaluate
from resnet_repro.training.loop import Parts, train_one_epoch
from resnet_repro.training.metrics import NullLogger
from resnet_repro.training.run_data import make_eval_loader, make_train_loader
from resnet_repro.training.run_state import RunState
from resnet_repro.training.schedule import build_scheduler
from resnet_repro.training.stabilizers import EarlyStopper, NonFiniteGuard


def tiny_net(num_classes: int) -> nn.Module:
    """No BatchNorm: its batch statistics would differ between 1 x 2B and 2 x B."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def config(root: str, batch_size: int, steps: int) -> RootConfig:
    return RootConfig(
        data=DataConfig(
            name="generated",
            root=root,
            image_size=16,
            crop_ratio=1.0,
            num_threads=1,
            augment=AugmentConfig(random_resized_crop=False, hflip=False),  # deterministic inputs
        ),
        trainer=TrainerConfig(batch_size=batch_size, epochs=1, max_steps_per_epoch=steps, seed=3),
        schedule=ScheduleConfig(name="constant"),
        logging=LoggingConfig(tensorboard=False, progress=False),
    )


def eval_worker(root: str, out_dir: str, batch_size: int) -> None:
    env = distributed.detect()
    device = torch.device("cpu")
    distributed.init(env, device, timeout_s=120)
    try:
        cfg = config(root, batch_size, steps=1)
        files = list_split(root, "val")
        model = tiny_net(len(files.classes))
        loader = make_eval_loader(cfg.data, files, env, device, batch_size)
        result = evaluate(model, loader, env, device, expected_total=len(files))
        local = sum(len(labels) for _, labels in (loader or ()))
        result["local_count"] = local
        Path(out_dir, f"rank{env.rank}.json").write_text(json.dumps(result))
    finally:
        distributed.teardown()


def protocol_eval_worker(root: str, out_dir: str, protocol: str, scales: list[int]) -> None:
    """`evaluate_protocol` on this rank's shard of the val split; writes the metrics and local count."""
    from resnet_repro.config import EvalConfig
    from resnet_repro.training.run_eval import evaluate_protocol

    env = distributed.detect()
    device = torch.device("cpu")
    distributed.init(env, device, timeout_s=120)
    try:
        cfg = dataclasses.replace(
            config(root, 16, steps=1), eval=EvalConfig(protocol=protocol, scales=scales)
        )
        files = list_split(root, "val")
        model = tiny_net(len(files.classes))
        result = evaluate_protocol(cfg, model, files, env, device, batch_size=16)
        shard = make_eval_loader(cfg.data, files, env, device, 16, protocol=protocol)
        result["local_count"] = sum(len(labels) for _, labels in (shard or ()))
        Path(out_dir, f"rank{env.rank}.json").write_text(json.dumps(result))
    finally:
        distributed.teardown()


def in_process_group(body, *args) -> None:
    """body(env, device, *args) between the process group's init and teardown. The body's DDP
    module dies with the body's frame, before teardown: under torch 2.11 a DDP module freed after
    destroy_process_group can drop the last reference to the gloo process group while holding the
    GIL, and its destructor then waits forever for gloo's thread, which waits for the GIL."""
    env = distributed.detect()
    device = torch.device("cpu")
    distributed.init(env, device, timeout_s=120)
    try:
        body(env, device, *args)
    finally:
        distributed.teardown()


def one_epoch_parts(cfg, env, device, net, model, optimizer, schedule, guard) -> Parts:
    """A run's parts around `model` (DDP or not) for one epoch of train_one_epoch, logging nowhere."""
    state = RunState(
        net=net,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        early_stop=EarlyStopper(cfg.stabilizer.early_stop),
        config=cfg,
    )
    return Parts(state=state, guard=guard, logger=NullLogger(), interrupts=Interrupts(cfg, env, device))


def train_worker(root: str, out_dir: str, batch_size: int, steps: int) -> None:
    in_process_group(_train_steps, root, out_dir, batch_size, steps)


def _train_steps(env, device, root: str, out_dir: str, batch_size: int, steps: int) -> None:
    cfg = config(root, batch_size, steps)
    files = list_split(root, "train")
    model = tiny_net(len(files.classes))
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(model)
    net = model.module if env.distributed else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = build_scheduler(cfg.schedule, cfg.stabilizer, optimizer, steps_per_epoch=steps, epochs=1)
    guard = NonFiniteGuard("stop", 1, Path(out_dir, "report.json"))
    parts = one_epoch_parts(cfg, env, device, net, model, optimizer, schedule, guard)
    loader = make_train_loader(cfg, files, env, device, epoch=0)
    metrics = train_one_epoch(parts, loader, cfg, env, device)
    step = parts.state.step
    parts.interrupts.close()
    if env.is_main:
        torch.save(
            {"weights": net.state_dict(), "loss": metrics["loss"], "steps": step}, Path(out_dir, "out.pt")
        )


def stats_worker(root: str, out_dir: str) -> None:
    """Each rank computes its shard of the training stats; the sums are all-reduced."""
    from resnet_repro.data.normalization import compute_record
    from resnet_repro.training.run_data import load_file_lists

    env = distributed.detect()
    device = torch.device("cpu")
    distributed.init(env, device, timeout_s=120)
    try:
        cfg = DataConfig(name="generated", root=root, num_threads=1)
        record = compute_record(cfg, load_file_lists(cfg), env, device)
        Path(out_dir, f"rank{env.rank}.json").write_text(
            json.dumps({"mean": record.mean, "std": record.std, "num_pixels": record.num_pixels})
        )
    finally:
        distributed.teardown()


def pixel_mean_worker(root: str, out_dir: str) -> None:
    """data.normalization=pixel_mean: computed (shards all-reduced), then loaded (rank 0 reads,
    broadcasts); each rank writes what it got both times."""
    import hashlib

    from resnet_repro.config import StatsConfig
    from resnet_repro.data.normalization import resolve
    from resnet_repro.training.run_data import load_file_lists

    env = distributed.detect()
    device = torch.device("cpu")
    distributed.init(env, device, timeout_s=120)
    try:
        stats_cfg = StatsConfig(path=str(Path(out_dir, "stats.json")))
        cfg = DataConfig(
            name="generated", root=root, num_threads=1, image_size=16, crop_ratio=0.5,
            normalization="pixel_mean", stats=stats_cfg,
        )  # fmt: skip
        splits = load_file_lists(cfg)
        got = []
        for _ in range(2):
            norm, _ = resolve(cfg, splits, env, device)
            image = hashlib.sha256(norm.mean_image.tobytes()).hexdigest()
            got.append({"image": image, "std": norm.std, "detail": norm.detail.split(" from ")[0]})
        Path(out_dir, f"rank{env.rank}.json").write_text(json.dumps(got))
    finally:
        distributed.teardown()


def failing_on_one_rank_worker(out_dir: str, failing_rank: int) -> None:
    """`all_or_none` with a UserError on one rank: every rank must get it (and none wait)."""
    from resnet_repro.config import UserError

    env = distributed.detect()
    distributed.init(env, torch.device("cpu"), timeout_s=60)
    try:

        def work() -> int:
            if env.rank == failing_rank:
                raise UserError("data.root=/nope does not exist")
            return env.rank

        try:
            distributed.all_or_none(env, work)
            outcome = "no error"
        except UserError as e:
            outcome = str(e)
        distributed.barrier(env)  # a rank left behind would hang here, not pass
        Path(out_dir, f"rank{env.rank}.txt").write_text(outcome)
    finally:
        distributed.teardown()


def nonfinite_bn_worker(out_dir: str) -> None:
    """ResNet-18 under DDP with stabilizer.nonfinite=skip: rank 0's second batch and rank 1's last
    batch carry one inf pixel. Saves each rank's BatchNorm buffers after the epoch."""
    in_process_group(_nonfinite_bn_steps, out_dir)


def _nonfinite_bn_steps(env, device, out_dir: str) -> None:
    from resnet_repro.config import StabilizerConfig
    from resnet_repro.models import build_model

    cfg = RootConfig(
        schedule=ScheduleConfig(name="constant"),
        stabilizer=StabilizerConfig(nonfinite="skip", max_skips=3),
        trainer=TrainerConfig(batch_size=4),
        logging=LoggingConfig(tensorboard=False, progress=False),
    )
    torch.manual_seed(0)
    net = build_model(cfg.model, 3)
    model = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(env.rank)
    data = [
        (torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(3)
    ]
    data[1 if env.rank == 0 else 2][0][0, 1, 3, 3] = float("inf")
    schedule = build_scheduler(cfg.schedule, cfg.stabilizer, optimizer, steps_per_epoch=3, epochs=1)
    guard = NonFiniteGuard("skip", 3, Path(out_dir, "report.json"))
    parts = one_epoch_parts(cfg, env, device, net, model, optimizer, schedule, guard)
    metrics = train_one_epoch(parts, data, cfg, env, device)
    parts.interrupts.close()
    buffers = {k: v for k, v in net.state_dict().items() if "running_" in k}
    torch.save({"buffers": buffers, "skipped": metrics["steps_skipped"]}, Path(out_dir, f"rank{env.rank}.pt"))


class Killed(Exception):
    """Raised by every rank's data at the same step: the launch ends there, as a kill -9 ends it."""


class _KilledAtStep4(list):
    def __iter__(self):
        for i, batch in enumerate(list.__iter__(self)):
            if i == 3:
                raise Killed
            yield batch


def resumed_epoch_worker(out_dir: str, phase: str) -> None:
    """Two ranks, 8 steps of fixed per-rank batches. phase "whole": the epoch uninterrupted;
    "first": a periodic checkpoint after every step (agreed by the ranks), killed after step 3;
    "second": resumed from that last.pt. Rank 0 saves the epoch's train metrics as <phase>.json."""
    in_process_group(_resumed_epoch_steps, out_dir, phase)


def _resumed_epoch_steps(env, device, out_dir: str, phase: str) -> None:
    cfg = RootConfig(
        schedule=ScheduleConfig(name="constant"),
        trainer=TrainerConfig(batch_size=4, preempt_check_steps=1),
        logging=LoggingConfig(tensorboard=False, progress=False),
    )
    net = tiny_net(3)
    model = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(10 + env.rank)  # each rank its own images
    data = [
        (torch.randn(4, 3, 8, 8, generator=g) * 3, torch.randint(0, 3, (4,), generator=g)) for _ in range(8)
    ]
    schedule = build_scheduler(cfg.schedule, cfg.stabilizer, optimizer, steps_per_epoch=8, epochs=1)
    guard = NonFiniteGuard("stop", 1, Path(out_dir, "report.json"))
    parts = one_epoch_parts(cfg, env, device, net, model, optimizer, schedule, guard)
    if env.is_main:
        parts.ckpt_dir = Path(out_dir, "checkpoints")
        parts.ckpt_dir.mkdir(exist_ok=True)
    metrics = None
    try:
        if phase == "whole":
            metrics = train_one_epoch(parts, data, cfg, env, device)
        elif phase == "first":
            parts.interrupts.save_interval_s = 0.0
            try:
                train_one_epoch(parts, _KilledAtStep4(data), cfg, env, device)
            except Killed:
                pass
        else:
            last = torch.load(Path(out_dir, "checkpoints", "last.pt"), weights_only=False)
            parts.state.load_state_dict(last)
            metrics = train_one_epoch(parts, data[parts.state.epoch_step :], cfg, env, device)
    finally:
        parts.interrupts.close()
    if env.is_main and metrics is not None:
        Path(out_dir, f"{phase}.json").write_text(json.dumps(metrics))


def exit_worker(code: int) -> None:
    """A worker that ends at once, with `code` as its exit status when it is not 0."""
    if code:
        raise SystemExit(code)


def waiting_worker(ready_dir: str) -> None:
    """A worker that says it has started (a file per rank) and waits to be stopped by a signal."""
    import time

    Path(ready_dir, f"rank{os.environ['RANK']}").touch()
    time.sleep(120)


def threads_worker(out_dir: str) -> None:
    """Records the intra-op threads this worker's torch runs with, and the variable that set them."""
    record = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads()}
    Path(out_dir, f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))
