"""`resnet-repro plan`: steps, images and wall time of a run or a -m sweep, on known numbers."""

from __future__ import annotations

import json

import pytest

from resnet_repro.cli import main

IMAGENET = ["plan.train_images=1281167", "plan.img_per_s=1000"]
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
    assert run["img_per_s_source"] == "plan.img_per_s"
    assert "5,004" in table and "32.0 h" in table and "115,292,160" in table


def test_global_batch_stays_the_recipes_over_more_processes_and_max_steps_caps_an_epoch(capsys):
    record, _ = run_plan(capsys, "experiment=imagenet_paper", *IMAGENET, "plan.world_size=8")
    run = record["runs"][0]
    assert (run["world_size"], run["global_batch"], run["steps_per_epoch"]) == (8, 256, 5004)
    record, _ = run_plan(capsys, "experiment=demo", *IMAGENET, "trainer.max_steps_per_epoch=3")
    assert record["runs"][0]["steps_per_epoch"] == 3 and record["runs"][0]["total_steps"] == 3 * 8


def test_a_weight_decay_by_max_norm_sweep_is_twelve_jobs_and_their_total(capsys):
    record, table = run_plan(capsys, "-m", "experiment=imagenet_paper", *IMAGENET, *SWEEP)
    assert record["jobs"] == 12
    assert len({tuple(r["overrides"]) for r in record["runs"]}) == 12
    assert record["total_train_hours"] == pytest.approx(12 * 115_292_160 / 1000 / 3600)
    assert record["total_steps"] == 12 * 450_360
    assert "12 jobs" in table and "optim.weight_decay=5e-05 stabilizer.max_norm=2" in table


def test_a_sweep_over_epochs_plans_each_length(capsys):
    record, _ = run_plan(capsys, "-m", "experiment=imagenet_paper", *IMAGENET, "trainer.epochs=16,88")
    assert [r["epochs"] for r in record["runs"]] == [16, 88]
    assert record["total_steps"] == 5004 * (16 + 88)


def test_sweep_values_without_m_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "experiment=imagenet_paper", *IMAGENET, *SWEEP])
    assert "add -m" in capsys.readouterr().err


def test_images_are_counted_from_the_file_lists_after_the_holdout(image_folder_factory, capsys):
    root = image_folder_factory("train", {"a": 10, "b": 7})
    image_folder_factory("val", {"a": 2, "b": 3})
    args = [f"data.root={root}", "data=folder", "trainer.batch_size=4", "trainer.epochs=2"]
    record, table = run_plan(capsys, *args, "data.holdout.size=3", "plan.img_per_s=7")
    run = record["runs"][0]
    assert (run["train_images"], run["eval_images_per_epoch"]) == (14, 5 + 3)
    assert (run["steps_per_epoch"], run["total_steps"], run["images_processed"]) == (3, 6, 24)
    assert run["train_hours"] == pytest.approx(24 / 7 / 3600)
    assert run["train_images_source"] == f"file lists of {root}"


def test_without_data_or_a_count_the_error_names_plan_train_images(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "experiment=imagenet_paper", "plan.img_per_s=1000"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plan.train_images=N (ImageNet-1K: 1281167)" in err


@pytest.mark.slow
def test_img_per_s_is_measured_with_a_short_bench_when_not_given(demo_root, tmp_path, capsys):
    small = ["trainer.batch_size=8", "trainer.device=cpu", "data.num_threads=1", "plan.measure_steps=1"]
    record, table = run_plan(capsys, f"data.root={demo_root}", *small)
    run = record["runs"][0]
    assert run["img_per_s"] > 0 and run["img_per_s_source"].startswith("measured here: bench train")
    assert run["train_hours"] == pytest.approx(run["images_processed"] / run["img_per_s"] / 3600)
    assert "measured here" in table
    # no data to read: the model alone on synthetic batches, and the source says so
    record, _ = run_plan(capsys, f"data.root={tmp_path / 'none'}", "plan.train_images=100", *small)
    assert "bench model on synthetic batches" in record["runs"][0]["img_per_s_source"]
