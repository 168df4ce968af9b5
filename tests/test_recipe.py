"""The paper recipe is exact, and each technique around it behaves as documented."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import tensorboard_scalars
from torchvision.models.resnet import Bottleneck

from resnet_repro.cluster.distributed import DistEnv
from resnet_repro.cluster.preemption import Interrupts
from resnet_repro.config import (
    EarlyStopConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    RegularizationConfig,
    RootConfig,
    ScheduleConfig,
    StabilizerConfig,
    TrainerConfig,
    to_dataclass,
    validate,
)
from resnet_repro.evaluation.evaluate import evaluate
from resnet_repro.models import build_model
from resnet_repro.training.loop import Parts, train_one_epoch
from resnet_repro.training.metrics import NullLogger
from resnet_repro.training.optim import build_optimizer, decay_groups, l1_penalty, l1_weights, peak_lr
from resnet_repro.training.run_eval import feed_model_selection
from resnet_repro.training.run_state import RunState
from resnet_repro.training.schedule import build_scheduler
from resnet_repro.training.stabilizers import EarlyStopper, NonFiniteError, NonFiniteGuard, grad_norm_summary
from resnet_repro.training.summary import Derived, deviations, render, same


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------- model
def test_resnet50_v15_has_torchvisions_parameter_count():
    assert n_params(build_model(ModelConfig(name="resnet50"), 1000)) == 25_557_032


def test_resnet50_v1_differs_only_in_stride_placement():
    v1 = build_model(ModelConfig(name="resnet50", variant="v1"), 1000)
    v15 = build_model(ModelConfig(name="resnet50", variant="v1.5"), 1000)
    assert n_params(v1) == n_params(v15) == 25_557_032
    first = v1.layer2[0]
    assert isinstance(first, Bottleneck)
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    assert v1.eval()(x).shape == v15.eval()(x).shape == (1, 1000)


def test_no_conv_feeding_a_batchnorm_has_a_bias():
    model = build_model(ModelConfig(name="resnet50"), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 53
    assert all(c.bias is None for c in convs)


def test_convs_use_kaiming_normal_fan_out_init():
    model = build_model(ModelConfig(name="resnet50"), 10)
    conv = model.layer3[1].conv2  # 3x3, 256 -> 256: fan_out = 256 * 9
    expected = math.sqrt(2.0 / (256 * 9))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_zero_init_residual_zeroes_the_last_norm_of_each_branch():
    model = build_model(ModelConfig(name="resnet50", zero_init_residual=True), 10)
    assert all(
        torch.count_nonzero(b.bn3.weight) == 0 for layer in (model.layer1, model.layer4) for b in layer
    )


def test_group_norm_replaces_every_batchnorm():
    model = build_model(ModelConfig(name="resnet18", norm="gn", gn_groups=32), 10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 20


# ------------------------------------------------------------------------------------- schedule
def lrs_per_epoch(
    schedule_cfg, stabilizer_cfg, *, global_batch: int, steps: int, epochs: int
) -> list[list[float]]:
    param = nn.Parameter(torch.zeros(1))
    optim = torch.optim.SGD([param], lr=peak_lr(OptimConfig(), global_batch), momentum=0.9)
    schedule = build_scheduler(schedule_cfg, stabilizer_cfg, optim, steps_per_epoch=steps, epochs=epochs)
    out = []
    for _ in range(epochs):
        epoch = []
        for _ in range(steps):
            epoch.append(schedule.lr)
            optim.step()
            schedule.step()
        out.append(epoch)
    return out


def test_paper_schedule_is_0_1_then_0_01_then_0_001_at_batch_256():
    lrs = lrs_per_epoch(ScheduleConfig(), StabilizerConfig(), global_batch=256, steps=3, epochs=90)
    for epoch, values in enumerate(lrs):
        expected = 0.1 if epoch < 30 else 0.01 if epoch < 60 else 0.001
        assert values == pytest.approx([expected] * 3, rel=1e-12), epoch


def test_peak_lr_scales_linearly_with_the_global_batch():
    lrs = lrs_per_epoch(ScheduleConfig(), StabilizerConfig(), global_batch=1024, steps=2, epochs=31)
    assert lrs[0][0] == pytest.approx(0.4) and lrs[30][0] == pytest.approx(0.04)


def test_warmup_rises_linearly_to_the_peak_then_follows_the_milestones():
    stab = StabilizerConfig(warmup_epochs=5, warmup_start_factor=0.1)
    lrs = [
        lr
        for epoch in lrs_per_epoch(ScheduleConfig(), stab, global_batch=256, steps=4, epochs=35)
        for lr in epoch
    ]
    ramp = lrs[:20]
    diffs = [b - a for a, b in zip(ramp, ramp[1:], strict=False)]
    assert ramp[0] == pytest.approx(0.01)
    assert diffs == pytest.approx([diffs[0]] * len(diffs))
    assert lrs[20] == pytest.approx(0.1) and lrs[30 * 4 - 1] == pytest.approx(0.1)
    assert lrs[30 * 4] == pytest.approx(0.01)


def test_cosine_ends_at_the_final_fraction_and_plateau_reacts_to_the_loss():
    lrs = lrs_per_epoch(
        ScheduleConfig(name="cosine", final_lr_factor=0.0),
        StabilizerConfig(),
        global_batch=256,
        steps=10,
        epochs=10,
    )
    assert lrs[0][0] == pytest.approx(0.1) and lrs[-1][-1] < 0.001
    param = nn.Parameter(torch.zeros(1))
    optim = torch.optim.SGD([param], lr=0.1)
    schedule = build_scheduler(
        ScheduleConfig(name="plateau", patience=1, factor=0.5),
        StabilizerConfig(),
        optim,
        steps_per_epoch=1,
        epochs=10,
    )
    for loss in (1.0, 1.0):  # the best, then one evaluation without improvement: patience 1 is up
        schedule.epoch_end({"loss": loss})
    assert schedule.lr == pytest.approx(0.05)


def plateau_schedule(patience: int, *, metric: str = "loss", min_delta: float = 0.0, warmup_epochs=0.0):
    """A plateau schedule from LR 1.0, two steps per epoch."""
    optim = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = ScheduleConfig(name="plateau", patience=patience, factor=0.1, metric=metric, min_delta=min_delta)
    return build_scheduler(
        cfg, StabilizerConfig(warmup_epochs=warmup_epochs), optim, steps_per_epoch=2, epochs=50
    )


def test_plateau_reduces_the_lr_after_exactly_patience_epochs_without_improvement():
    schedule = plateau_schedule(patience=3)
    lrs = []
    # best 0.9 at evaluation 2; 3, 4, 5 do not improve (5 is equal: not better) -> cut after 5;
    # the count restarts after a cut: 6, 7, 8 do not improve -> cut after 8; 9 improves
    for loss in (1.0, 0.9, 0.95, 0.91, 0.9, 0.92, 0.93, 0.94, 0.5):
        schedule.epoch_end({"loss": loss, "top1": 0.0})
        lrs.append(schedule.lr)
    assert lrs == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_plateau_can_follow_the_top1_error_with_an_absolute_threshold():
    schedule = plateau_schedule(patience=2, metric="top1", min_delta=0.01)
    lrs = []
    # higher is better; 0.505 and 0.509 are within min_delta of 0.50: no improvement
    for top1 in (0.50, 0.505, 0.509, 0.52):
        schedule.epoch_end({"loss": 9.9, "top1": top1})
        lrs.append(schedule.lr)
    assert lrs == pytest.approx([1, 1, 0.1, 0.1])


@pytest.mark.parametrize("metric", ["loss", "top1"])
def test_plateau_and_early_stopping_agree_on_what_counts_as_improvement(metric: str):
    """Same metric, min_delta and patience: the first LR cut and the early stop fall on the same
    evaluation, over random curves whose steps are often within min_delta."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        steps = torch.randint(-3, 4, (30,), generator=g).double() * 0.005  # multiples of min_delta / 2
        values = (0.5 + steps.cumsum(0)).tolist()
        patience = int(torch.randint(1, 5, (1,), generator=g))
        schedule = plateau_schedule(patience, metric=metric, min_delta=0.01)
        stopper = EarlyStopper(EarlyStopConfig(patience=patience, min_delta=0.01, metric=metric))
        first_cut = first_stop = None
        for i, value in enumerate(values):
            schedule.epoch_end({metric: value})
            if first_cut is None and schedule.lr < 1.0:
                first_cut = i
            if stopper.update({metric: value}) is not None and first_stop is None:
                first_stop = i
        assert first_cut == first_stop, values


def test_warm_up_evaluations_count_toward_neither_the_plateau_nor_early_stopping():
    schedule = plateau_schedule(patience=1, metric="top1", warmup_epochs=2)
    stopper = EarlyStopper(EarlyStopConfig(patience=1, metric="top1"))
    reasons, lrs = [], []
    for top1 in (0.9, 0.5, 0.4):  # 0.9 at the end of the first warm-up epoch is not the best
        for _ in range(2):
            schedule.optimizer.step()
            schedule.step()
        reasons.append(feed_model_selection(schedule, stopper, {"top1": top1, "loss": 1.0}))
        lrs.append(schedule.lr)
    assert reasons[:2] == [None, None] and reasons[2] is not None
    assert lrs == pytest.approx([0.55, 1.0, 0.1])  # warm-up from 0.1: halfway, at the peak, cut


# ------------------------------------------------------------------------------- weight decay
def test_decay_groups_exclude_every_norm_and_bias_when_asked_including_downsample_batchnorms():
    model = build_model(ModelConfig(name="resnet50"), 1000)
    norm_and_bias = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    norm_and_bias.add(id(model.fc.bias))
    assert id(model.layer1[0].downsample[1].weight) in norm_and_bias
    groups = decay_groups(model, 1e-4, decay_norm_and_bias=False)
    decayed = {id(p) for p in groups[0]["params"]}
    exempt = {id(p) for p in groups[1]["params"]}
    assert exempt == norm_and_bias and not decayed & norm_and_bias
    assert groups[1]["weight_decay"] == 0.0
    everything = decay_groups(model, 1e-4, decay_norm_and_bias=True)
    assert len(everything) == 1 and len(everything[0]["params"]) == len(list(model.parameters()))


def test_adam_adds_l2_to_the_gradient_while_adamw_decays_the_weight_directly():
    w0, g, lr, wd = 2.0, 0.5, 0.01, 0.1

    def one_step(name: str) -> float:
        p = nn.Parameter(torch.tensor([w0]))
        opt = build_optimizer(
            OptimConfig(name=name, lr_per_256=lr, weight_decay=wd, eps=1e-12), nn.ParameterList([p]), 256
        )
        p.grad = torch.tensor([g])
        opt.step()
        return p.item()

    # Adam: g' = g + wd * w0 = 0.7; the first bias-corrected step is lr * g'/|g'| = lr
    assert one_step("adam") == pytest.approx(w0 - lr, abs=1e-7)
    # AdamW: w0 * (1 - lr * wd) - lr * g/|g|
    assert one_step("adamw") == pytest.approx(w0 * (1 - lr * wd) - lr, abs=1e-7)
    # with a large weight the L2 term flips Adam's step direction; AdamW's decay stays separate
    assert one_step("adam") != one_step("adamw")


def test_l1_changes_the_loss_by_exactly_lambda_times_sum_abs_weights():
    model = build_model(ModelConfig(name="resnet18"), 10)
    lam = 1e-5
    manual = sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert l1_penalty(l1_weights(model), lam).item() == pytest.approx(lam * manual.item(), rel=1e-6)


# --------------------------------------------------------------------------- dropout family
@pytest.mark.parametrize(
    "reg",
    [
        RegularizationConfig(dropout=0.5),
        RegularizationConfig(spatial_dropout=0.3),
        RegularizationConfig(dropblock=0.3, dropblock_size=3),
        RegularizationConfig(stochastic_depth=0.5),
    ],
    ids=["dropout", "spatial_dropout", "dropblock", "stochastic_depth"],
)
def test_each_dropout_family_option_acts_in_train_mode_only(reg: RegularizationConfig):
    torch.manual_seed(0)
    plain = build_model(ModelConfig(name="resnet18"), 10)
    torch.manual_seed(0)
    regularized = build_model(ModelConfig(name="resnet18"), 10, reg)
    x = torch.randn(4, 3, 64, 64)
    plain.eval(), regularized.eval()
    torch.testing.assert_close(regularized(x), plain(x))
    plain.train(), regularized.train()
    torch.manual_seed(1)
    assert not torch.allclose(regularized(x), plain(x))


def test_dropblock_rate_ramps_linearly_over_the_configured_epochs():
    model = build_model(
        ModelConfig(name="resnet18"), 10, RegularizationConfig(dropblock=0.2, dropblock_ramp_epochs=4)
    )
    rate = model.dropblock_rate
    seen = []
    for epoch in range(6):
        rate.set_epoch(epoch)
        seen.append(rate.p)
    assert seen == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])


def test_a_compiled_model_is_not_recompiled_as_the_dropblock_rate_ramps():
    model = build_model(
        ModelConfig(name="resnet18"), 10, RegularizationConfig(dropblock=0.2, dropblock_ramp_epochs=4)
    ).train()
    graphs = []

    def counting_backend(gm, example_inputs):  # no code generation: counts what dynamo compiles
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=counting_backend)
    x = torch.randn(2, 3, 32, 32)
    counts = []
    for epoch in range(6):
        model.dropblock_rate.set_epoch(epoch)
        compiled(x)
        counts.append(len(graphs))
    assert counts == [counts[0]] * 6  # compiled once, whatever the rate


# -------------------------------------------------------------------- the training step itself
class Tiny(nn.Module):
    """Linear classifier on 4x4 images; can be told to produce NaN at a given call."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(48, 3)
        self.calls, self.nan_at = 0, nan_at
        self.dropblock_rate = None

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.flatten(1))
        return out * float("nan") if self.calls == self.nan_at else out


def make_parts(model: nn.Module, cfg: RootConfig, tmp_path: Path) -> Parts:
    """Single-process CPU parts; checkpoints (last.pt) go to tmp_path/checkpoints."""
    optimizer = build_optimizer(cfg.optim, model, cfg.trainer.batch_size)
    state = RunState(
        net=model,
        model=model,
        optimizer=optimizer,
        schedule=build_scheduler(cfg.schedule, cfg.stabilizer, optimizer, steps_per_epoch=8, epochs=1),
        scaler=torch.amp.GradScaler("cpu", enabled=cfg.trainer.precision == "fp16", init_scale=256.0),
        early_stop=EarlyStopper(cfg.stabilizer.early_stop),
        config=cfg,
    )
    return Parts(
        state=state,
        guard=NonFiniteGuard(
            cfg.stabilizer.nonfinite, cfg.stabilizer.max_skips, tmp_path / "nonfinite_report.json"
        ),
        logger=NullLogger(),
        interrupts=Interrupts(cfg, DistEnv(), torch.device("cpu")),
        ckpt_dir=tmp_path / "checkpoints",
    )


def batches(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 3, 4, 4, generator=g) * 10, torch.randint(0, 3, (4,), generator=g)) for _ in range(n)
    ]


def run_epoch(parts: Parts, cfg: RootConfig, data) -> dict[str, float] | None:
    """One epoch of train_one_epoch from step 0, single process on the CPU."""
    return train_one_epoch(parts, data, cfg, DistEnv(), torch.device("cpu"))


def tiny_cfg(**stabilizer) -> RootConfig:
    return RootConfig(
        optim=OptimConfig(lr_per_256=0.1, momentum=0.0, weight_decay=0.0),
        schedule=ScheduleConfig(name="constant"),
        stabilizer=StabilizerConfig(**stabilizer),
        trainer=TrainerConfig(batch_size=4),
        logging=LoggingConfig(tensorboard=False, progress=False),
    )


def test_clipping_under_fp16_happens_after_unscaling_and_logs_the_pre_clip_norm(tmp_path: Path):
    cfg = tiny_cfg(max_norm=1e-3)
    cfg.trainer.precision = "fp16"
    model = Tiny()
    images, labels = batches(1)[0]
    reference = Tiny()
    nn.functional.cross_entropy(reference(images), labels).backward()
    true_norm = torch.cat([p.grad.flatten() for p in reference.parameters()]).norm().item()

    before = [p.detach().clone() for p in model.parameters()]
    parts = make_parts(model, cfg, tmp_path)
    metrics = run_epoch(parts, cfg, [(images, labels)])
    parts.interrupts.close()
    # the logged norm is the true gradient's, not 256x it (scaled) nor 1e-3 (clipped)
    assert metrics["grad_norm_max"] == pytest.approx(true_norm, rel=2e-2)
    assert metrics["clipped_fraction"] == 1.0
    assert metrics["clip_factor_mean"] == pytest.approx(1e-3 / true_norm, rel=2e-2)  # what clipping kept
    step = (
        torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]).norm().item()
    )
    assert step == pytest.approx(
        peak_lr(cfg.optim, 4) * 1e-3, rel=2e-2
    )  # the update used the clipped gradient


def test_clip_factor_mean_is_the_mean_share_of_each_step_that_clipping_keeps():
    # min(1, 1/||g||) per step: 1, 1 (a norm at the threshold is not clipped), 1/2, 1/4
    summary = grad_norm_summary(torch.tensor([0.5, 1.0, 2.0, 4.0]), max_norm=1.0)
    assert summary["clip_factor_mean"] == pytest.approx((1 + 1 + 0.5 + 0.25) / 4)  # 0.6875
    assert summary["clipped_fraction"] == 0.5
    # a zero gradient is kept whole
    assert grad_norm_summary(torch.tensor([0.0, 4.0]), max_norm=1.0)["clip_factor_mean"] == 0.625


def test_clip_factor_mean_is_one_without_clipping():
    norms = torch.tensor([0.5, 3.0, 100.0])
    for max_norm in (None, 0.0):
        summary = grad_norm_summary(norms, max_norm)
        assert summary["clip_factor_mean"] == 1.0 and summary["clipped_fraction"] == 0.0


def test_clip_factor_mean_leaves_out_non_finite_norms_like_the_other_gradient_statistics():
    # the finite steps 0.5 and 4.0 under max_norm 2: kept whole and halved; inf and NaN steps
    # are not counted (they are skipped or stop the run), as for clipped_fraction and the quantiles
    summary = grad_norm_summary(torch.tensor([0.5, math.inf, 4.0, math.nan]), max_norm=2.0)
    assert summary["clip_factor_mean"] == 0.75
    assert summary["clipped_fraction"] == 0.5
    assert summary["grad_norm_max"] == 4.0
    assert grad_norm_summary(torch.tensor([math.inf, math.nan]), max_norm=2.0) == {}


def test_injected_nan_stops_within_one_step_with_a_report(tmp_path: Path, monkeypatch):
    cfg = tiny_cfg(nonfinite="stop")
    saved = []
    save = RunState.save
    monkeypatch.setattr(
        RunState, "save", lambda st, path: saved.append((st.epoch_step, st.step)) or save(st, path)
    )
    parts = make_parts(Tiny(nan_at=3), cfg, tmp_path)
    with pytest.raises(NonFiniteError, match="at epoch 1, step 2"):
        run_epoch(parts, cfg, batches())
    parts.interrupts.close()
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert (last["epoch_step"], last["step"]) == (2, 2)
    report = json.loads((tmp_path / "nonfinite_report.json").read_text())
    # epochs counted from 1, as the message and metrics.jsonl count them
    assert (report["epoch"], report["step"]) == (1, 2)
    assert report["nonfinite_grad_params"] == ["fc.weight", "fc.bias"]
    assert report["stopped"] is True
    assert 0 <= report["label_min"] <= report["label_max"] < 3
    assert saved == [(2, 2)]  # last good state: two updates applied, the bad one not
    assert all(torch.isfinite(p).all() for p in parts.state.net.parameters())


def test_skip_mode_skips_the_bad_update_and_counts_it(tmp_path: Path):
    cfg = tiny_cfg(nonfinite="skip", max_skips=3)
    parts = make_parts(Tiny(nan_at=3), cfg, tmp_path)
    metrics = run_epoch(parts, cfg, batches())
    parts.interrupts.close()
    assert parts.state.step == 8 and metrics["steps_skipped"] == 1
    assert json.loads((tmp_path / "nonfinite_report.json").read_text())["stopped"] is False
    assert all(torch.isfinite(p).all() for p in parts.state.net.parameters())
    # the count is the epoch's own: a second epoch without a bad batch skipped nothing
    assert run_epoch(parts, cfg, batches())["steps_skipped"] == 0


def test_an_epoch_resumed_mid_way_counts_the_steps_skipped_before_the_stop(tmp_path: Path):
    """The count is in the checkpoint (RunState.epoch_skipped): a launch resumed in the middle of
    an epoch that had skipped 2 steps, which then skips 1 more, reports 3 for the epoch."""
    cfg = tiny_cfg(nonfinite="skip", max_skips=3)
    parts = make_parts(Tiny(nan_at=3), cfg, tmp_path)
    parts.state.load_state_dict({**parts.state.state_dict(), "epoch_skipped": 2})
    assert run_epoch(parts, cfg, batches())["steps_skipped"] == 3
    parts.interrupts.close()


def test_early_stopping_triggers_on_a_plateau_and_names_the_reason():
    stopper = EarlyStopper(EarlyStopConfig(patience=2, min_delta=0.01, metric="top1"))
    assert stopper.update({"top1": 0.50}) is None
    assert stopper.update({"top1": 0.60}) is None
    assert stopper.update({"top1": 0.605}) is None  # below min_delta: one bad evaluation
    reason = stopper.update({"top1": 0.59})
    assert reason is not None and "top1" in reason and "2 evaluations" in reason
    loss_stopper = EarlyStopper(EarlyStopConfig(patience=1, metric="loss"))
    assert loss_stopper.update({"loss": 1.0}) is None and loss_stopper.update({"loss": 0.5}) is None
    assert loss_stopper.update({"loss": 0.7}) is not None


def test_reported_train_loss_is_the_cross_entropy_without_the_l1_penalty(tmp_path: Path):
    data = batches(1)
    reported = {}
    for l1 in (0.0, 10.0):  # a penalty far larger than the loss itself
        cfg = tiny_cfg()
        cfg.optim.lr_per_256 = 1e-12  # no visible update: both runs see the same weights
        cfg.regularization.l1 = l1
        parts = make_parts(Tiny(), cfg, tmp_path)
        metrics = run_epoch(parts, cfg, data)
        parts.interrupts.close()
        reported[l1] = metrics["loss"]
    assert reported[10.0] == pytest.approx(reported[0.0], rel=1e-6)


def test_an_epoch_whose_every_step_was_skipped_stops_with_a_clear_error(tmp_path: Path):
    cfg = tiny_cfg(nonfinite="skip", max_skips=100)
    parts = make_parts(Tiny(nan_at=1), cfg, tmp_path)
    with pytest.raises(NonFiniteError, match="every step of epoch 1 was skipped"):
        run_epoch(parts, cfg, batches(1))
    parts.interrupts.close()
    # the run stopped: its report says so, and `report` counts the job as diverged
    assert json.loads((tmp_path / "nonfinite_report.json").read_text())["stopped"] is True


def test_a_launch_resumed_mid_epoch_whose_every_step_is_skipped_says_the_earlier_steps_were_applied(
    tmp_path: Path,
):
    """Resumed at batch 7 of 8 of an epoch whose first 7 updates were applied: the one step this
    launch runs is skipped. The run stops, but not with "every step of epoch 1 was skipped"."""
    cfg = tiny_cfg(nonfinite="skip", max_skips=100)
    parts = make_parts(Tiny(nan_at=1), cfg, tmp_path)
    parts.state.epoch_step = parts.state.step = 7
    with pytest.raises(NonFiniteError) as stop:
        run_epoch(parts, cfg, batches(1))
    parts.interrupts.close()
    message = str(stop.value)
    assert "every step of epoch 1 was skipped" not in message
    assert "since this launch resumed epoch 1 at its step 8" in message
    assert "the 7 steps before it were applied" in message
    assert json.loads((tmp_path / "nonfinite_report.json").read_text())["stopped"] is True


# ---------------------------------------------------------------------------- start-up summary
def summary_of(experiment: str, *overrides: str) -> str:
    """The rendered start-up summary of an experiment preset, with the derived values of an 8-GPU
    ImageNet job."""
    from conftest import compose

    from resnet_repro.training.optim import GroupSummary

    cfg = to_dataclass(compose([f"experiment={experiment}", "data.root=/nonexistent", *overrides]))
    validate(cfg)
    gb = cfg.trainer.global_batch or cfg.trainer.batch_size * 8
    d = Derived(8, gb, peak_lr(cfg.optim, gb), 1251 * 256 // gb, 1_271_167, 50_000, 1000, "cuda")
    groups = [GroupSummary("decay", cfg.optim.weight_decay, 161, 25_557_032)]
    return render(cfg, d, groups, "per-channel", deviations(cfg, 8))


def test_values_are_compared_not_their_spelling():
    assert same((1e-4, "all"), (0.0001, "all")) and same((256,), (256.0,))
    assert same((0.1 * 3,), (0.3,))  # float arithmetic, not a different setting
    assert not same((1e-4,), (1e-3,)) and not same(("v1",), ("v1.5",)) and not same((True,), (1,))


def test_he2016_summary_shows_every_paper_setting_with_nothing_starred():
    text = summary_of("he2016")
    assert "claimed reference: He 2016 (reference=he2016): 0 deviations" in text
    assert not any(line.startswith("*") for line in text.splitlines())
    for shown in (
        "resnet50 v1 (paper strides)",
        "scale [256, 480], crop 224 + flip + lighting 0.1",
        "x0.1 after",
    ):
        assert shown in text


def test_summary_stars_each_deviation_with_the_references_value():
    text = summary_of("he2016", "optim.weight_decay=5e-4", "data.augment.pca_lighting=0")
    starred = [line.split() for line in text.splitlines() if line.startswith("*")]
    assert starred == [
        ["*", "data.augment.pca_lighting", "0", "He", "2016:", "0.1"],
        ["*", "optim.weight_decay", "0.0005", "He", "2016:", "0.0001"],
    ]
    assert "2 deviations (* below; deviations.json)" in text


# ------------------------------------------------- a non-finite step leaves BatchNorm untouched
def bn_batches(n: int = 4, bad: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Tiny 16 px images for a ResNet-18; batch `bad` carries one inf pixel."""
    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)
    ]
    if bad is not None:
        data[bad][0][1, 0, 5, 7] = float("inf")
    return data


def resnet18_parts(cfg: RootConfig, tmp_path: Path) -> Parts:
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="resnet18"), 3)
    net.dropblock_rate = None
    return make_parts(net, cfg, tmp_path)


def bn_buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running_" in k or "num_batches" in k}


def test_a_skipped_non_finite_step_leaves_batchnorm_statistics_as_if_the_batch_was_never_seen(tmp_path: Path):
    """One inf pixel: the forward's BatchNorm update (NaN running mean/var) is undone with the step."""
    cfg = tiny_cfg(nonfinite="skip", max_skips=3)
    skipped = resnet18_parts(cfg, tmp_path)
    metrics = run_epoch(skipped, cfg, bn_batches(bad=2))
    skipped.interrupts.close()
    assert metrics["steps_skipped"] == 1
    buffers = bn_buffers(skipped.state.net)
    assert buffers and all(torch.isfinite(v.float()).all() for v in buffers.values())

    clean = resnet18_parts(cfg, tmp_path)
    run_epoch(clean, cfg, [b for i, b in enumerate(bn_batches(bad=2)) if i != 2])
    clean.interrupts.close()
    torch.testing.assert_close(buffers, bn_buffers(clean.state.net), rtol=0, atol=0)
    torch.testing.assert_close(skipped.state.net.state_dict(), clean.state.net.state_dict(), rtol=0, atol=0)
    result = evaluate(skipped.state.net, bn_batches(2), DistEnv(), torch.device("cpu"), expected_total=8)
    assert math.isfinite(result["loss"])


def test_a_non_finite_stop_saves_finite_batchnorm_statistics_as_the_last_good_state(tmp_path: Path):
    cfg = tiny_cfg(nonfinite="stop")
    parts = resnet18_parts(cfg, tmp_path)
    before_bad: list[dict[str, torch.Tensor]] = []

    class Data(list):  # records the BatchNorm buffers just before the bad batch is trained on
        def __iter__(self):
            for i, batch in enumerate(super().__iter__()):
                if i == 2:
                    before_bad.append(bn_buffers(parts.state.net))
                yield batch

    with pytest.raises(NonFiniteError):
        run_epoch(parts, cfg, Data(bn_batches(bad=2)))
    parts.interrupts.close()
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step"], saved["epoch_step"]) == (0, 2, 2)
    last = saved["model"]
    assert all(torch.isfinite(v.float()).all() for v in last.values())
    torch.testing.assert_close({k: last[k] for k in before_bad[0]}, before_bad[0], rtol=0, atol=0)
    result = evaluate(parts.state.net, bn_batches(2), DistEnv(), torch.device("cpu"), expected_total=8)
    assert math.isfinite(result["loss"])


# ------------------------------------------------------------------------------------ linear ramp
def test_linear_ramp_lr_at_known_steps_equals_the_direct_formula():
    """FFCV's schedule: np.interp(epoch, [0, peak_epoch, epochs], [0, 1, end_factor]) x peak LR,
    evaluated per iteration."""
    import numpy as np

    from resnet_repro.config import ScheduleConfig, StabilizerConfig
    from resnet_repro.training.schedule import build_scheduler

    steps_per_epoch, epochs, peak_lr = 10, 8, 0.4
    cfg = ScheduleConfig(name="linear_ramp", peak_epoch=2.0, end_factor=0.1)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=peak_lr)
    schedule = build_scheduler(cfg, StabilizerConfig(), opt, steps_per_epoch=steps_per_epoch, epochs=epochs)
    seen = []
    for _ in range(epochs * steps_per_epoch):
        seen.append(schedule.lr)
        opt.step()
        schedule.step()
    expected = [
        peak_lr * np.interp(i / steps_per_epoch, [0, 2, epochs], [0, 1, 0.1]) for i in range(len(seen))
    ]
    np.testing.assert_allclose(seen, expected, rtol=1e-12, atol=1e-15)
    assert seen[20] == pytest.approx(peak_lr) and seen[-1] == pytest.approx(peak_lr * (0.1 + 0.9 / 60))


def test_linear_ramp_refuses_a_second_warm_up_and_a_peak_outside_the_run():
    from resnet_repro.config import ScheduleConfig, StabilizerConfig, UserError
    from resnet_repro.training.schedule import build_scheduler

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ramp = ScheduleConfig(name="linear_ramp", peak_epoch=2.0)
    with pytest.raises(UserError, match="set stabilizer.warmup_epochs=0"):
        build_scheduler(ramp, StabilizerConfig(warmup_epochs=1), opt, steps_per_epoch=5, epochs=4)
    with pytest.raises(UserError, match=r"schedule.peak_epoch=5.0 must be inside the run \(0, 4\)"):
        late = ScheduleConfig(name="linear_ramp", peak_epoch=5.0)
        build_scheduler(late, StabilizerConfig(), opt, steps_per_epoch=5, epochs=4)


def test_an_epoch_resumed_mid_way_logs_the_lr_it_began_with_and_every_steps_gradient_norm(tmp_path: Path):
    """The oracle is the same epoch run without a stop: a launch stopped after step 3 of 8 and a
    second one resuming from its last.pt give the epoch the LR it began with (warm-up raises it every
    step), and TensorBoard holds each of the 8 steps' gradient norms once, equal to the oracle's."""
    from resnet_repro.training.metrics import MetricsLogger

    cfg = tiny_cfg(warmup_epochs=0.9)  # 7 warm-up steps of the 8: the LR rises step by step
    cfg.logging.tensorboard = True

    def launch(run_dir: Path) -> Parts:
        parts = make_parts(Tiny(), cfg, run_dir)
        parts.logger = MetricsLogger(run_dir, cfg.logging)
        return parts

    ref = launch(tmp_path / "ref")
    expected = run_epoch(ref, cfg, batches())
    ref.logger.close()
    ref.interrupts.close()

    run_dir = tmp_path / "stopped"
    first = launch(run_dir)

    class StopAfterStep3(list):
        def __iter__(self):
            for i, batch in enumerate(list.__iter__(self)):
                if i == 2:  # a signal during step 3: the loop looks for one after each step
                    first.interrupts.watch.received = "SIGTERM"
                yield batch

    assert run_epoch(first, cfg, StopAfterStep3(batches())) is None
    first.logger.close()
    first.interrupts.close()

    second = launch(run_dir)
    second.state.load_state_dict(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False))
    second.logger.continue_from(second.state.epoch, second.state.step)
    assert (second.state.epoch_step, second.state.step) == (3, 3)
    got = run_epoch(second, cfg, batches()[3:])
    second.logger.close()
    second.interrupts.close()

    assert got["lr"] == pytest.approx(expected["lr"], rel=1e-12)
    assert got["lr"] != pytest.approx(got["lr_end"])  # the warm-up did move it during the epoch
    norms, ref_norms = (tensorboard_scalars(d)["train/grad_norm"] for d in (run_dir, tmp_path / "ref"))
    assert [step for step, _ in norms] == list(range(1, 9))
    assert [v for _, v in norms] == pytest.approx([v for _, v in ref_norms], rel=1e-6)


@pytest.mark.parametrize("stop", ["signal", "periodic checkpoint, then killed"])
def test_an_epoch_resumed_mid_way_reports_the_whole_epochs_train_metrics(tmp_path: Path, stop: str):
    """The oracle is the same epoch run without a stop: its row's loss, top-1, steps and gradient
    norm statistics (the clipping figure's) must cover all 8 steps, not the 5 after the resume."""
    cfg = tiny_cfg(max_norm=30.0)  # some of the 8 steps clip, some do not

    ref = make_parts(Tiny(), cfg, tmp_path / "ref")
    expected = run_epoch(ref, cfg, batches())
    ref.interrupts.close()
    assert 0 < expected["clipped_fraction"] < 1, expected

    run_dir = tmp_path / "stopped"
    first = make_parts(Tiny(), cfg, run_dir)

    class Stop(Exception):
        pass

    class StopAfterStep3(list):
        def __iter__(self):
            for i, batch in enumerate(list.__iter__(self)):
                if i == 2 and stop == "signal":  # the loop looks for one after each step
                    first.interrupts.watch.received = "SIGTERM"
                if i == 3 and stop != "signal":  # last.pt written after step 3; then a kill -9
                    raise Stop
                yield batch

    if stop != "signal":
        first.interrupts.save_interval_s = 0.0  # a periodic checkpoint after every step
        with pytest.raises(Stop):
            run_epoch(first, cfg, StopAfterStep3(batches()))
    else:
        assert run_epoch(first, cfg, StopAfterStep3(batches())) is None
    first.interrupts.close()

    second = make_parts(Tiny(), cfg, run_dir)
    second.state.load_state_dict(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False))
    assert second.state.epoch_step == 3
    got = run_epoch(second, cfg, batches()[3:])
    second.interrupts.close()

    assert got["steps"] == 8
    for key in ("loss", "top1", "clipped_fraction", "grad_norm_p50", "grad_norm_p90", "grad_norm_max"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    assert got["epoch_time_s"] > 0 and got["img_per_s"] == pytest.approx(32 / got["epoch_time_s"])


def test_a_resumed_launch_sets_aside_the_rows_its_checkpoint_does_not_cover_and_hides_later_events(
    tmp_path: Path,
):
    """A launch killed after its checkpoint at step 6 (epoch 1 done) had written epoch 2's rows, a
    final evaluation row, half a line and step events up to 8; the launch resumed from step 6 writes
    epoch 2 again. metrics.jsonl keeps one row per epoch and split, the newer; the older rows go to
    metrics.superseded.jsonl; TensorBoard's reader shows each step once, the resumed launch's."""
    from resnet_repro.training.metrics import MetricsLogger

    cfg = LoggingConfig(tensorboard=True, progress=False)
    killed = MetricsLogger(tmp_path, cfg)
    for epoch, step in ((1, 4), (2, 8)):
        for split in ("train", "val"):
            killed.record({"epoch": epoch, "split": split, "step": step, "loss": 1.0}, step)
    killed.record({"epoch": 2, "split": "val-ten_crop", "step": 8, "top1": 0.5}, 8)
    for step in range(1, 9):
        killed.scalar("train/step_loss", 1.0, step)
    killed.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "spl')  # the kill cut the line

    resumed = MetricsLogger(tmp_path, cfg)
    resumed.continue_from(1, 6, ["val-ten_crop"])
    for step in (7, 8):
        resumed.scalar("train/step_loss", 2.0, step)
    for split in ("train", "val"):
        resumed.record({"epoch": 2, "split": split, "step": 8, "loss": 2.0}, 8)
    resumed.close()

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"], r["loss"]) for r in rows] == [
        (1, "train", 1.0),
        (1, "val", 1.0),
        (2, "train", 2.0),
        (2, "val", 2.0),
    ]
    aside = (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()
    assert [json.loads(line)["split"] for line in aside[:3]] == ["train", "val", "val-ten_crop"]
    assert aside[3] == '{"epoch": 3, "spl'
    scalars = tensorboard_scalars(tmp_path)
    assert scalars["train/step_loss"] == [(s, 1.0) for s in range(1, 7)] + [(7, 2.0), (8, 2.0)]
    assert scalars["val/loss"] == [(4, 1.0), (8, 2.0)]


def test_rows_written_again_at_the_checkpoints_own_step_keep_their_one_tensorboard_value(tmp_path: Path):
    """A finished run (checkpoint at step 8) rerun with a final ten-crop evaluation, or a launch
    killed after the rows of an epoch whose steps its checkpoint already held: the rows at step 8
    are written again. metrics.jsonl keeps the newer row; TensorBoard keeps one value per step."""
    from resnet_repro.training.metrics import MetricsLogger

    cfg = LoggingConfig(tensorboard=True, progress=False)
    first = MetricsLogger(tmp_path, cfg)
    first.record({"epoch": 1, "split": "val", "step": 8, "top1": 0.5}, 8)
    first.record({"epoch": 1, "split": "val-ten_crop", "step": 8, "top1": 0.6}, 8)
    first.close()
    again = MetricsLogger(tmp_path, cfg)
    again.continue_from(1, 8, ["val-ten_crop"])
    again.record({"epoch": 1, "split": "val-ten_crop", "step": 8, "top1": 0.6}, 8)
    again.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["top1"]) for r in rows] == [("val", 0.5), ("val-ten_crop", 0.6)]
    scalars = tensorboard_scalars(tmp_path)
    assert scalars["val/top1"] == [(8, 0.5)] and scalars["val-ten_crop/top1"] == [(8, pytest.approx(0.6))]

    # stopped on step 8, the last of epoch 1 (its checkpoint holds the epoch's train metrics, not
    # yet its rows); the resumed launch wrote the rows and was killed before its next checkpoint
    run_dir = tmp_path / "stopped"
    for _ in range(2):
        launch = MetricsLogger(run_dir, cfg)
        launch.continue_from(0, 8)
        launch.record({"epoch": 1, "split": "val", "step": 8, "top1": 0.5}, 8)
        launch.close()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert tensorboard_scalars(run_dir)["val/top1"] == [(8, 0.5)]


def test_a_fresh_start_in_a_used_run_directory_sets_aside_its_rows_and_hides_its_events(tmp_path: Path):
    """A launch that failed before its first checkpoint (or trainer.resume=never, or another run's
    checkpoint, in a used directory): the next launch starts its outputs afresh."""
    from resnet_repro.training.metrics import MetricsLogger

    cfg = LoggingConfig(tensorboard=True, progress=False)
    failed = MetricsLogger(tmp_path, cfg)
    for step in (1, 2):
        failed.scalar("train/step_lr", 0.1, step)
    failed.record({"epoch": 1, "split": "train", "step": 2, "loss": 1.0}, 2)
    failed.close()
    fresh = MetricsLogger(tmp_path, cfg)
    fresh.start_afresh()
    for step in (1, 2):
        fresh.scalar("train/step_lr", 0.2, step)
    fresh.record({"epoch": 1, "split": "train", "step": 2, "loss": 2.0}, 2)
    fresh.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [2.0]
    assert [
        json.loads(line)["loss"] for line in (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()
    ] == [1.0]
    scalars = tensorboard_scalars(tmp_path)
    assert scalars["train/step_lr"] == [(1, pytest.approx(0.2)), (2, pytest.approx(0.2))]
    assert scalars["train/loss"] == [(2, 2.0)]
