"""Progressive resizing: the training crop of each epoch, its rounding, resume, and a demo run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from resnet_repro.config import DataConfig, ProgressiveConfig, RootConfig, UserError, validate
from resnet_repro.data.progressive import late_ramp, size_at, train_data_config


def test_sizes_grow_linearly_between_the_epochs_rounded_to_the_step():
    # FFCV's rn50 88-epoch config: 160 px until epoch 65 (0-based start), 192 px from epoch 76
    cfg = ProgressiveConfig(start_size=160, end_size=192, start_epoch=65, end_epoch=76, step=32)
    sizes = [size_at(cfg, e, 88) for e in range(88)]
    assert sizes[:66] == [160] * 66 and sizes[76:] == [192] * 12
    # linear 160 -> 192 over 11 epochs, each rounded to a multiple of 32: the switch is half way
    assert sizes[66:76] == [160] * 5 + [192] * 5
    fine = ProgressiveConfig(start_size=24, end_size=32, start_epoch=0, end_epoch=4, step=4)
    # 26 -> 24 and 30 -> 32: a half step rounds to the even multiple, as numpy's round does
    assert [size_at(fine, e, 5) for e in range(5)] == [24, 24, 28, 32, 32]
    to_last = ProgressiveConfig(start_size=128, end_size=224, step=32)  # end_epoch null: the last one
    assert [size_at(to_last, e, 4) for e in range(4)] == [128, 160, 192, 224]


@pytest.mark.parametrize(
    ("ramp", "said"),
    [
        ((24, 32, 0, 100, 8), "start_epoch=0 and end_epoch=100 (0-based) leave the ramp unfinished"),
        ((24, 32, 50, None, 8), "start_epoch=50 and end_epoch=null (0-based) leave the ramp unfinished"),
        ((160, 192, 65, 76, 32), "(16 epochs): it trains at 160 px, never at end_size=192"),
        ((24, 32, 0, 7, 8), None),  # reached at the last epoch
        ((24, 32, 0, None, 8), None),
        ((24, 30, 0, 7, 8), None),  # end_size 30 is 32 in steps of 8: reached as it rounds
    ],
)
def test_a_ramp_that_ends_after_the_last_epoch_is_a_warning_naming_the_size_reached(ramp, said):
    epochs = 16 if ramp[0] == 160 else 8
    data = DataConfig(name="demo", root="/d", progressive=ProgressiveConfig(*ramp))
    warning = late_ramp(data, epochs)
    assert (warning is None) if said is None else (said in warning)


def test_only_the_training_loader_changes_size_and_a_resume_gets_the_same_size():
    data = DataConfig(name="demo", root="/d", image_size=32, progressive=ProgressiveConfig(16, 32, 0, 2, 8))
    assert [train_data_config(data, e, 4).image_size for e in range(4)] == [16, 24, 32, 32]
    assert data.image_size == 32  # the evaluation's crop, untouched
    # a function of the epoch alone: a run resumed at epoch 1 trains it at 24 px again
    assert train_data_config(data, 1, 4) == train_data_config(data, 1, 4)
    off = DataConfig(name="demo", root="/d")
    assert train_data_config(off, 3, 4) is off


def test_bad_progressive_settings_are_one_line_errors():
    bad = RootConfig(data=DataConfig(name="demo", root="/d", progressive=ProgressiveConfig(start_size=16)))
    with pytest.raises(UserError, match="data.progressive.start_size=16 needs a positive end_size"):
        validate(bad)
    mean_image = RootConfig(
        data=DataConfig(
            name="demo",
            root="/d",
            normalization="pixel_mean",
            progressive=ProgressiveConfig(start_size=16, end_size=32, step=8),
        )
    )
    with pytest.raises(UserError, match="pixel_mean do not combine"):
        validate(mean_image)


@pytest.mark.slow
def test_a_demo_run_logs_the_training_size_of_every_epoch(demo_root: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        f"data.root={demo_root}",
        "trainer.epochs=3",
        "trainer.batch_size=32",
        "trainer.max_steps_per_epoch=2",
        "stabilizer.warmup_epochs=0",
        "logging.progress=false",
        "data.progressive.start_size=24",
        "data.progressive.end_size=32",
        "data.progressive.step=4",
        f"hydra.run.dir={run_dir}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["image_size"] for r in rows if r["split"] == "train"] == [24, 28, 32]
    assert "progressive      training crop 24 -> 32 px" in proc.stdout + proc.stderr
    assert json.loads((run_dir / "final.json").read_text())["num_samples"] == 360  # evaluated at 32 px


@pytest.mark.slow
def test_compiled_training_with_progressive_resizing_compiles_once_per_size(monkeypatch, tmp_path: Path):
    """trainer.compile with sizes 16 -> 24 -> 32 over four epochs: dynamo compiles one static graph
    per size (its own counter, recorded as each epoch's compiled_graphs: those since the run
    started), none for the repeated 32 px epoch, and none for a dynamic-shape graph (dynamo's
    default would compile 2 for 3 sizes). The "eager" backend keeps it cheap: the same capture
    and guards, no code generation."""
    import torch
    import torch._dynamo

    from resnet_repro.cluster.distributed import DistEnv
    from resnet_repro.config import LoggingConfig, ModelConfig, ScheduleConfig, TrainerConfig
    from resnet_repro.data.progressive import train_sizes
    from resnet_repro.training import compiling
    from resnet_repro.training.loop import train_one_epoch
    from resnet_repro.training.summary import Derived
    from resnet_repro.training.train import build_parts

    monkeypatch.setattr(compiling, "BACKEND", "eager")
    torch._dynamo.reset()
    # dynamo's count is the process's (reset() keeps it): a graph compiled before the run, as an
    # earlier point of a local sweep (or another test) in this process would, is not the run's
    torch.compile(torch.nn.Linear(2, 2), backend="eager")(torch.rand(1, 2))
    growing = ProgressiveConfig(start_size=16, end_size=32, start_epoch=0, end_epoch=2, step=8)
    data = DataConfig(name="synthetic", root="-", image_size=32, progressive=growing)
    cfg = RootConfig(
        data=data,
        model=ModelConfig(name="resnet18"),
        schedule=ScheduleConfig(name="constant"),
        trainer=TrainerConfig(batch_size=2, epochs=4, compile=True),
        logging=LoggingConfig(tensorboard=False, progress=False),
    )
    sizes = [train_data_config(data, e, 4).image_size for e in range(4)]
    assert sizes == [16, 24, 32, 32] and train_sizes(data, 4) == [16, 24, 32]
    cpu = torch.device("cpu")
    parts = build_parts(cfg, Derived(1, 2, 0.1, 2, 0, 0, 4, "cpu"), DistEnv(), cpu, tmp_path)
    g = torch.Generator().manual_seed(0)
    compiled = []
    try:
        for size in sizes:
            batches = [(torch.rand(2, 3, size, size, generator=g), torch.tensor([0, 1])) for _ in range(2)]
            compiled.append(train_one_epoch(parts, batches, cfg, DistEnv(), cpu)["compiled_graphs"])
    finally:
        parts.interrupts.close()
        torch._dynamo.reset()
    assert compiled == [1, 2, 3, 3]


def test_each_compiled_run_in_one_process_compiles_every_size_of_its_own(monkeypatch):
    """A local sweep's points share a process, and dynamo's graph cache with it: models of another
    shape (a sweep over the model, the classes or the precision) each compile their sizes for the
    same forward code, and past dynamo's recompile limit (8) a later point's last sizes ran
    uncompiled, silently. Each run starts dynamo afresh, as a run in its own process does."""
    import torch
    import torch._dynamo
    from torch import nn

    from resnet_repro.training import compiling

    def small_net(classes: int) -> nn.Module:  # one forward code for all (nn.Sequential's), as ResNet's
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes)
        )

    graphs = []  # a backend of our own counts the graphs dynamo hands over (not dynamo's counter)

    def counting_backend(gm, example_inputs):
        graphs.append(1)
        return gm.forward

    monkeypatch.setattr(compiling, "BACKEND", counting_backend)
    torch._dynamo.reset()
    added = []
    for classes in (10, 11, 12):  # another head each time: every size compiles again
        before = len(graphs)
        model = compiling.compile_for_shapes(small_net(classes), shapes=3)
        for size in (16, 24, 32):
            model(torch.rand(2, 3, size, size)).sum().backward()
        added.append(len(graphs) - before)
    torch._dynamo.reset()
    assert added == [3, 3, 3]


def test_a_run_warns_at_its_start_of_a_ramp_it_will_not_finish():
    from resnet_repro.config import ScheduleConfig, TrainerConfig
    from resnet_repro.training.start_warnings import start_warnings

    data = DataConfig(name="demo", root="/d", progressive=ProgressiveConfig(24, 32, 0, 100, 8))
    cfg = RootConfig(data=data, trainer=TrainerConfig(epochs=8), schedule=ScheduleConfig(milestones=[4]))
    found = start_warnings(cfg, ["a normalization warning"], selection=None)
    assert found[0] == "a normalization warning" and len(found) == 2
    assert "leave the ramp unfinished at the last epoch (8 epochs): it trains at 24 px" in found[1]
