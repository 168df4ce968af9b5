"""Weight EMA: the averaged weights and BatchNorm buffers equal a hand-computed average."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import run_cli

from resnet_repro.training.ema import WeightEMA


def test_ema_weights_and_buffers_equal_a_hand_computed_average_after_a_few_steps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.rand(2, 3, 6, 6))  # materialize the lazy layer
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    decay = 0.9
    ema = WeightEMA(net, decay)
    by_hand: dict[str, torch.Tensor] | None = None
    for _ in range(4):
        loss = net(torch.rand(8, 3, 6, 6)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(net)
        now = {k: v.detach().clone().double() for k, v in net.state_dict().items()}
        # the first update copies; later ones move decay of the way back towards the old average
        by_hand = now if by_hand is None else {k: decay * by_hand[k] + (1 - decay) * now[k] for k in now}
    averaged = ema.module.state_dict()
    for key, value in by_hand.items():
        if key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(averaged[key].double(), value, rtol=1e-6, atol=1e-7, msg=key)
    # the averaged model is not the live one
    assert not torch.equal(averaged["0.weight"], net.state_dict()["0.weight"])


def test_ema_update_matches_torchs_averaged_model_exactly_including_integer_buffers():
    """The update without AveragedModel.update_parameters (no read of n_averaged) gives torch's
    averages bit for bit: the first call copies, then foreach lerp per dtype, num_batches_tracked
    as torch rounds it; and the counter a checkpoint holds stays the same."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ours = WeightEMA(net, 0.7)
    torchs = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.7), use_buffers=True)
    for _ in range(5):
        net(torch.rand(8, 3, 6, 6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ours.update(net)
        torchs.update_parameters(net)
    expected = torchs.state_dict()
    got = ours.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert got["n_averaged"].device.type == "cpu" and int(got["n_averaged"]) == 5


def test_ema_state_round_trips_through_a_state_dict():
    net = nn.Linear(3, 2)
    ema = WeightEMA(net, 0.5)
    ema.update(net)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    restored = WeightEMA(nn.Linear(3, 2), 0.5)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.module.weight, ema.module.weight)
    assert int(restored.averaged.n_averaged) == 2 and restored.updates == 2


@pytest.mark.slow
def test_a_demo_run_with_progressive_resizing_and_ema_evaluates_both_and_checkpoints_the_average(
    demo_root: Path, tmp_path: Path
):
    from resnet_repro import checkpoint

    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        f"data.root={demo_root}",
        "trainer.epochs=2",
        "trainer.batch_size=32",
        "trainer.max_steps_per_epoch=3",
        "stabilizer.warmup_epochs=0",
        "logging.progress=false",
        "data.progressive.start_size=24",
        "data.progressive.end_size=32",
        "data.progressive.step=8",
        "trainer.ema.decay=0.5",
        f"hydra.run.dir={run_dir}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["image_size"] for r in rows if r["split"] == "train"] == [24, 32]
    assert [r["epoch"] for r in rows if r["split"] == "val-ema"] == [1, 2]
    assert all(r["num_samples"] == 360 for r in rows if r["split"] in ("val", "val-ema"))
    final = json.loads((run_dir / "final.json").read_text())
    assert final["ema"]["num_samples"] == 360 and 0.0 <= final["ema"]["top1"] <= 1.0
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert int(state["ema"]["n_averaged"]) == 6  # one update per optimizer step
    assert not torch.equal(state["ema"]["module.conv1.weight"], state["model"]["conv1.weight"])


def test_ema_decay_outside_zero_one_is_a_one_line_error():
    from resnet_repro.config import EmaConfig, RootConfig, TrainerConfig, UserError, validate

    with pytest.raises(UserError, match=r"trainer.ema.decay=1.0 must be in \(0, 1\)"):
        validate(RootConfig(trainer=TrainerConfig(ema=EmaConfig(decay=1.0))))
