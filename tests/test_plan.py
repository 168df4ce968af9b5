"""`resnet-repro plan`: steps, images and wall time of a run or a -m sweep, on known numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from resnet_repro.cli import main

IMAGENET = ["plan.train_images=1281167", "plan.img_per_s_per_gpu=1000"]
SWEEP = ["optim.weight_decay=1e-4,5e-5,2e-4", "stabilizer.max_norm=null,1,2,5"]


def run_plan(capsys, *args: str) -> tuple[dict, str]:
    main(["plan", *args])
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_imagenet_recipe_at_1000_img_per_s_is_5004_steps_an_epoch_and_32_hours(capsys):
    record, table = run_plan(capsys, "experiment=imagenet_paper", *IMAGENET)
    assert record["jobs"] == 1
    run = record["runs"][0]
    # 1,281,167 // 256 = 5,004 full batches (the trainer drops the last 143 images of each epoch)
    assert (run["global_batch"], run["steps_per_epoch"], run["epochs"]) == (256, 5004, 90)
    assert run["total_steps"] == 450_360 and run["images_processed"] == 450_360 * 256
    assert run["train_hours"] == pytest.approx(115_292_160 / 1000 / 3600)  # 32.03 h
    assert run["img_per_s_source"].startswith("plan.img_per_s_per_gpu=1000 at 224 px")
    assert run["train_sizes"] == [224] * 90 and run["epoch_train_s"][0] == pytest.approx(5004 * 256 / 1000)
    assert "5,004" in table and "32.0 h" in table and "115,292,160" in table


def test_global_batch_stays_the_recipes_over_more_processes_and_max_steps_caps_an_epoch(capsys):
    record, _ = run_plan(
        capsys, "experiment=imagenet_paper", *IMAGENET, "plan.world_size=8", "plan.scaling_efficiency=0.9"
    )
    run = record["runs"][0]
    assert (run["world_size"], run["global_batch"], run["steps_per_epoch"]) == (8, 256, 5004)
    # img/s is per GPU: 8 GPUs at 90% of linear
    assert run["train_hours"] == pytest.approx(115_292_160 / (1000 * 8 * 0.9) / 3600)
    record, _ = run_plan(capsys, "experiment=demo", *IMAGENET, "trainer.max_steps_per_epoch=3")
    assert record["runs"][0]["steps_per_epoch"] == 3 and record["runs"][0]["total_steps"] == 3 * 8


def test_a_weight_decay_by_max_norm_sweep_is_twelve_jobs_and_their_total(capsys):
    record, table = run_plan(capsys, "-m", "experiment=imagenet_paper", *IMAGENET, *SWEEP)
    assert record["jobs"] == 12
    assert len({tuple(r["overrides"]) for r in record["runs"]}) == 12
    assert record["total_train_hours"] == pytest.approx(12 * 115_292_160 / 1000 / 3600)
    assert record["total_steps"] == 12 * 450_360
    assert "12 jobs" in table and "optim.weight_decay=5e-05 stabilizer.max_norm=2" in table


def test_a_sweeps_total_says_whether_its_evaluation_is_in_it(capsys):
    """Without data.root no job's evaluation is estimated: the sweep's total must not claim it."""
    _, table = run_plan(capsys, "-m", "experiment=imagenet_paper", *IMAGENET, SWEEP[0])
    total = next(line for line in table.splitlines() if line.startswith("3 jobs:"))
    assert "evaluation included" not in total
    assert "evaluation not estimated (evaluated images unknown: give data.root)" in total


def test_a_sweep_over_epochs_plans_each_length(capsys):
    record, _ = run_plan(capsys, "-m", "experiment=imagenet_paper", *IMAGENET, "trainer.epochs=16,88")
    assert [r["epochs"] for r in record["runs"]] == [16, 88]
    assert record["total_steps"] == 5004 * (16 + 88)


def test_sweep_values_without_m_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "experiment=imagenet_paper", *IMAGENET, *SWEEP])
    assert "add -m" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("points", "named"),
    [
        ("optim.weight_decay=1e-4,-1", "sweep point 2 of 2 (optim.weight_decay=-1): optim.weight_decay=-1.0"),
        ("optim.weight_decay=1e-4,abc", "sweep point 2 of 2 (optim.weight_decay=abc): "),
    ],
    ids=["out-of-range", "wrong-type"],
)
def test_a_bad_sweep_point_is_refused_by_its_number(capsys, points: str, named: str):
    with pytest.raises(SystemExit) as refused:
        main(["plan", "-m", "experiment=imagenet_paper", *IMAGENET, points])
    assert refused.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"resnet-repro: error: {named}")


def test_images_are_counted_from_the_file_lists_after_the_holdout(image_folder_factory, capsys):
    root = image_folder_factory("train", {"a": 10, "b": 7})
    image_folder_factory("val", {"a": 2, "b": 3})
    args = [f"data.root={root}", "data=folder", "trainer.batch_size=4", "trainer.epochs=2"]
    record, table = run_plan(
        capsys, *args, "data.holdout.size=3", "plan.img_per_s_per_gpu=7", "data.image_size=224"
    )
    run = record["runs"][0]
    assert (run["train_images"], run["eval_images_per_epoch"]) == (14, 5 + 3)
    assert (run["steps_per_epoch"], run["total_steps"], run["images_processed"]) == (3, 6, 24)
    assert run["train_hours"] == pytest.approx(24 / 7 / 3600)
    assert run["train_images_source"] == f"file lists of {root}"
    # 8 images evaluated each epoch, forward only at 3 x the training rate by default
    assert run["eval_s_per_epoch"] == pytest.approx(8 / (3 * 7)) and "evaluation time" in table
    assert run["total_hours"] == pytest.approx((24 / 7 + 2 * 8 / 21) / 3600)


def test_a_given_count_is_the_whole_training_split_and_the_holdout_is_carved_from_it(capsys):
    """he2016 trains on ImageNet's 1,281,167 training images less its 10,000-image holdout:
    (1,281,167 - 10,000) // 256 = 4,965 steps an epoch, as the run itself counts them; a fraction
    is carved as the run carves it (0.01 of 1,281,167: 12,812 images)."""
    record, table = run_plan(capsys, "experiment=he2016", *IMAGENET)
    run = record["runs"][0]
    assert (run["train_images"], run["steps_per_epoch"]) == (1_271_167, 4_965)
    assert run["train_images_source"] == "plan.train_images less the holdout's 10,000 (data.holdout.size)"
    assert "1,271,167 (plan.train_images less the holdout's 10,000" in table
    # its final evaluation under ten crops and five scales is not in the estimate, and the table says so
    assert run["final_evaluation_not_estimated"] == "ten_crop and multiscale with flips"
    assert "the final ten_crop and multiscale with flips evaluation of the test split not included" in table
    record, table = run_plan(capsys, "experiment=imagenet_paper", "eval.hflip=true", *IMAGENET)
    assert record["runs"][0]["final_evaluation_not_estimated"] == "center with flips"
    record, table = run_plan(capsys, "experiment=imagenet_paper", *IMAGENET)
    assert record["runs"][0]["final_evaluation_not_estimated"] is None and "the final" not in table
    record, _ = run_plan(capsys, "experiment=imagenet_paper", "data.holdout.size=0.01", *IMAGENET)
    assert record["runs"][0]["train_images"] == 1_281_167 - 12_812
    # a holdout that would leave a class without an image is refused, as the run refuses it
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "plan",
                "experiment=imagenet_paper",
                "plan.train_images=5000",
                "data.holdout.size=4500",
                *IMAGENET[1:],
            ]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "data.holdout.size=4500 asks for 4500 of about 5000 training images" in err
    assert "at most 4000 can be held out while each of the 1000 classes keeps one image" in err


def test_without_data_or_a_count_the_error_names_plan_train_images(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "experiment=imagenet_paper", "plan.img_per_s_per_gpu=1000"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plan.train_images=N (ImageNet-1K: 1281167)" in err


def test_fast_16_is_planned_at_its_training_crops_not_the_evaluation_size(capsys):
    # 2,470 img/s at 224 px (NVIDIA's A100 number): 160 px epochs run (224/160)^2 = 1.96x faster
    args = ["experiment=fast_16", "plan.train_images=1281167", "plan.img_per_s_per_gpu=2470"]
    record, table = run_plan(capsys, *args)
    run = record["runs"][0]
    assert run["train_sizes"] == [160] * 12 + [192] * 4  # 160 -> 192 px over epochs 11-13, step 32
    assert "training crops" in table and "160 px x 12, 192 px x 4" in table
    steps = 1281167 // 1024
    at = {size: 2470 * (224 / size) ** 2 for size in (160, 192)}
    assert run["epoch_train_s"][0] == pytest.approx(steps * 1024 / at[160])
    assert run["epoch_train_s"][-1] == pytest.approx(steps * 1024 / at[192])
    assert run["img_per_s_per_gpu"] == {"160": pytest.approx(at[160]), "192": pytest.approx(at[192])}
    assert run["train_hours"] == pytest.approx(steps * 1024 * (12 / at[160] + 4 / at[192]) / 3600)


def test_the_old_job_wide_img_per_s_key_fails_naming_its_per_gpu_successor(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "experiment=fast_16", "plan.train_images=1281167", "plan.img_per_s=2470"])
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "plan.img_per_s was renamed" in err and "plan.img_per_s_per_gpu" in err
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU here measures a GPU's img/s")
def test_without_a_gpu_a_gpu_runs_img_per_s_is_asked_for_not_measured_on_the_cpu(capsys):
    # a login node measured ResNet-50 at batch 256 on its CPU for over 12 minutes without a word,
    # to plan a GPU run with a CPU's speed
    with pytest.raises(SystemExit) as exited:
        main(["plan", "experiment=imagenet_paper", "plan.train_images=1281167"])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1, err
    assert "no GPU here" in err and "plan.img_per_s_per_gpu=N" in err and "trainer.device=cpu" in err


@pytest.mark.slow
def test_img_per_s_is_measured_with_a_short_bench_when_not_given(demo_root, tmp_path, capsys):
    small = ["trainer.batch_size=8", "trainer.device=cpu", "data.num_threads=1", "plan.measure_steps=1"]
    main(["plan", f"data.root={demo_root}", *small])
    said = capsys.readouterr()
    assert "plan: measuring training img/s here on cpu" in said.err
    assert "plan.img_per_s_per_gpu=N skips this" in said.err
    lines = said.out.strip().splitlines()
    record, table = json.loads(lines[-1]), "\n".join(lines[:-1])
    run = record["runs"][0]
    assert run["img_per_s"] > 0 and run["img_per_s_source"].startswith("measured here: bench train")
    assert run["train_hours"] == pytest.approx(run["images_processed"] / run["img_per_s"] / 3600)
    assert list(run["img_per_s_per_gpu"]) == [str(s) for s in sorted(set(run["train_sizes"]))]
    assert "measured here" in table
    # no data to read: the model alone on synthetic batches, and the source says so
    record, _ = run_plan(capsys, f"data.root={tmp_path / 'none'}", "plan.train_images=100", *small)
    assert "bench model on synthetic batches" in record["runs"][0]["img_per_s_source"]


@pytest.mark.slow  # two plans, each simulating its LR schedule
def test_weight_decay_shrink_of_the_proxy_is_a_tenth_of_fast_16s_and_an_ema_that_cannot_average_warns(capsys):
    # sum of LR x wd / (1 - momentum): peak 0.425 (1024 images at 0.10625 per 256) x 1e-4 x steps x
    # mean LR factor (the linear ramp up to epoch 2 and down to 0 averages half the peak) x 10
    fast, _ = run_plan(
        capsys, "experiment=fast_16", "plan.train_images=1281167", "plan.img_per_s_per_gpu=2470"
    )
    proxy, table = run_plan(
        capsys,
        "experiment=sweep_proxy",
        "plan.train_images=128116",  # the subset less its 5,000-image holdout: 123,116
        "plan.img_per_s_per_gpu=2470",
        "trainer.ema.decay=0.9999",
    )
    assert fast["runs"][0]["weight_decay_shrink"] == pytest.approx(
        0.425 * 1e-4 * 1251 * 16 * 0.5 * 10, rel=0.02
    )
    assert proxy["runs"][0]["weight_decay_shrink"] == pytest.approx(
        0.425 * 1e-4 * 120 * 16 * 0.5 * 10, rel=0.02
    )
    assert (
        "weight decay shrink  0.408: decay alone shrinks the decayed weights by exp(-0.408) = 0.66" in table
    )
    assert "LR x wd / (1 - momentum 0.9)" in table
    # 0.9999^1919 = 0.83 of the average is still the initial weights
    assert proxy["runs"][0]["ema_initial_weight"] == pytest.approx(0.9999**1919)
    assert table.splitlines()[-1].startswith("warning: trainer.ema.decay over 1,920 steps leaves 0.83")
    assert fast["runs"][0]["ema_initial_weight"] is None


def ramp_lrs(peak: float, steps_per_epoch: int, epochs: int, peak_epoch: float = 2.0) -> list[float]:
    """FFCV's linear ramp (fast_*), written out here: 0 -> peak at peak_epoch -> 0 at the end."""
    top, total = peak_epoch * steps_per_epoch, epochs * steps_per_epoch
    return [peak * (t / top if t <= top else 1 - (t - top) / (total - top)) for t in range(total)]


def shrink_of(optimizer_class, lrs: list[float], w0: float = 1.0, **kwargs) -> float:
    """ln(w_0 / w_N) of one weight that torch's optimizer steps with a zero loss gradient."""
    w = torch.nn.Parameter(torch.tensor([w0], dtype=torch.float64))
    opt = optimizer_class([w], lr=lrs[0], **kwargs)
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.zeros_like(w)
        opt.step()
    return math.log(w0 / w.item())


@pytest.mark.slow  # 20,016 optimizer steps of one weight
@pytest.mark.parametrize("nesterov", [False, True])
def test_weight_decay_shrink_of_sgd_counts_the_momentum_amplification(capsys, nesterov):
    record, table = run_plan(
        capsys,
        "experiment=fast_16",
        "plan.train_images=1281167",
        "plan.img_per_s_per_gpu=2470",
        f"optim.nesterov={str(nesterov).lower()}",
    )
    lrs = ramp_lrs(0.425, 1251, 16)
    true = shrink_of(torch.optim.SGD, lrs, momentum=0.9, weight_decay=1e-4, nesterov=nesterov)
    planned = record["runs"][0]["weight_decay_shrink"]
    assert planned == pytest.approx(true, rel=0.02)
    # ~4.25, ten times the sum of LR x wd that leaves the momentum out
    assert true == pytest.approx(10 * sum(lrs) * 1e-4, rel=0.02) and 4.1 < planned < 4.4
    assert "exp(-4.25) = 0.014" in table


def test_weight_decay_shrink_of_adamw_is_the_product_of_its_decoupled_steps(capsys):
    # 100 steps an epoch x 16: AdamW multiplies a weight by (1 - lr x wd) each step, no momentum in it
    args = ["experiment=fast_16", "optim=adamw", "optim.lr_per_256=0.01", "optim.weight_decay=0.5"]
    record, table = run_plan(capsys, *args, "plan.train_images=102400", "plan.img_per_s_per_gpu=2470")
    lrs = ramp_lrs(0.04, 100, 16)
    true = shrink_of(torch.optim.AdamW, lrs, weight_decay=0.5)
    assert true == pytest.approx(-sum(math.log(1 - lr * 0.5) for lr in lrs), rel=1e-9)
    assert record["runs"][0]["weight_decay_shrink"] == pytest.approx(true, rel=0.01)  # ~16
    assert "AdamW's decoupled decay" in table


def test_adam_has_no_weight_decay_shrink_factor_and_the_table_says_why(capsys):
    record, table = run_plan(
        capsys, "experiment=fast_16", "optim=adam", "plan.train_images=102400", "plan.img_per_s_per_gpu=2470"
    )
    assert record["runs"][0]["weight_decay_shrink"] is None
    assert "weight decay shrink" in table and "no single factor" in table
    # why: Adam divides the L2 term by its own running RMS, so a weight 10x larger shrinks by a
    # different factor, and 10x the weight decay hardly changes the shrink
    lrs = ramp_lrs(1e-3 * 4, 10, 16)
    small, large = (shrink_of(torch.optim.Adam, lrs, w0=w0, weight_decay=1e-4) for w0 in (1.0, 10.0))
    assert small > 2 * large
    assert shrink_of(torch.optim.Adam, lrs, weight_decay=1e-3) == pytest.approx(small, rel=0.05)


def test_a_sweep_table_prints_each_jobs_weight_decay_shrink(capsys):
    record, table = run_plan(
        capsys,
        "-m",
        "experiment=imagenet_paper",
        *IMAGENET,
        "optim.weight_decay=1e-4,2e-4",
        "trainer.epochs=1",
    )
    shrinks = [r["weight_decay_shrink"] for r in record["runs"]]
    assert shrinks[1] == pytest.approx(2 * shrinks[0])
    header = table.splitlines()[1]
    assert "wd shrink" in header
    assert f"{shrinks[0]:.3g}" in table.splitlines()[2] and f"{shrinks[1]:.3g}" in table.splitlines()[3]


def test_step_milestones_at_or_after_the_last_epoch_are_a_warning_naming_them(capsys):
    """A milestone at or after the last epoch never cuts the LR (a preset's [30, 60] in a 40-epoch
    run): not an error, since smoke runs of a preset shorten it on purpose, but said."""
    record, table = run_plan(capsys, "experiment=imagenet_paper", "trainer.epochs=40", *IMAGENET)
    said = (
        "warning: schedule.milestones [60] are at or after the last epoch (40): the LR is never "
        "multiplied by 0.1 there"
    )
    assert said in table
    _, table = run_plan(capsys, "experiment=imagenet_paper", *IMAGENET)
    assert "schedule.milestones" not in table


def test_a_progressive_ramp_past_the_last_epoch_is_a_warning_in_the_plan(capsys):
    ramp = [f"data.progressive.{setting}" for setting in ("start_size=160", "end_size=192", "end_epoch=200")]
    _, table = run_plan(capsys, "experiment=imagenet_paper", *IMAGENET, *ramp)
    said = "end_epoch=200 (0-based) leave the ramp unfinished at the last epoch (90 epochs): it trains"
    assert f"warning: data.progressive.start_epoch=0 and {said} at 160 px, never at end_size=192" in table
    _, table = run_plan(capsys, "experiment=imagenet_paper", *IMAGENET, *ramp[:2])
    assert "data.progressive" not in table


def test_a_holdout_size_is_named_as_typed_in_both_refusals():
    from resnet_repro.data.holdout import size_text

    assert [size_text(x) for x in (1000.0, 2e6, 0.05, 1)] == ["1000", "2000000", "0.05", "1"]
