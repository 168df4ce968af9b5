"""Deviations from the claimed reference: the run's composed config compared with the reference's,
key by key (summary.deviations). Every preset's own check (it composes, splits its batch over 8
processes, claims a reference that composes) is in test_config.py's walk over conf/."""

from __future__ import annotations

from resnet_repro.config import NOT_RECIPE_KEYS, REFERENCES, compose, validate
from resnet_repro.training.summary import deviations


def deviating(experiment: str, *overrides: str, world_size: int = 8) -> dict[str, tuple]:
    cfg = compose([f"experiment={experiment}", "data.root=/nonexistent", *overrides])
    validate(cfg)
    return {d.key: (d.value, d.reference) for d in deviations(cfg, world_size)}


def test_he2016_lists_exactly_the_three_changed_keys_and_none_without_changes():
    changed = ["model.zero_init_residual=true", "data.normalization=computed", "eval.protocol=center"]
    found = deviating("he2016", *changed)
    assert found == {
        "model.zero_init_residual": (True, False),
        "data.normalization": ("computed", "pixel_mean"),
        "eval.protocol": ("center", ["ten_crop", "multiscale"]),
    }
    assert deviating("he2016") == {}


def test_a_preset_that_departs_from_its_published_recipe_says_so():
    """torchvision's recipe normalizes with ImageNet's published mean and std (references/
    classification/presets.py); imagenet_paper computes them from the train split."""
    assert deviating("imagenet_paper", world_size=1) == {"data.normalization": ("computed", "published")}
    assert deviating("imagenet_paper", "data.normalization=published", world_size=1) == {}


def test_the_cifar_preset_is_compared_with_the_cifar_recipe_not_imagenets():
    # it inherited torchvision's ImageNet recipe: a dozen meaningless stars (data set, model, LR, ...);
    # kuangliu's main.py normalizes with fixed constants, the preset with train-split statistics
    assert deviating("cifar10_resnet18", world_size=1) == {"data.normalization": ("computed", "published")}
    changed = deviating("cifar10_resnet18", "optim.weight_decay=1e-4", world_size=1)
    assert set(changed) == {"optim.weight_decay", "data.normalization"}


def test_a_change_the_row_table_missed_is_a_deviation():
    # the list: none of these had a row in the hand-written comparison
    found = deviating(
        "he2016",
        "model.norm=gn",
        "model.bn_momentum=0.01",
        "model.sync_bn=true",
        "data.holdout.size=null",
        "trainer.select_on_test=true",
    )
    assert set(found) == {
        "model.norm",
        "model.bn_momentum",
        "model.sync_bn",
        "data.holdout.size",
        "trainer.select_on_test",
    }


def test_run_control_keys_seeds_and_an_equal_global_batch_are_not_deviations():
    found = deviating(
        "he2016",
        "trainer.nproc=8",
        "trainer.max_steps_per_epoch=3",
        "logging.progress=false",
        "trainer.seed=3",
        "data.holdout.seed=1",
        "trainer.global_batch=null",
        "trainer.batch_size=32",  # x 8 processes = the paper's 256
        "optim.weight_decay=0.0001",  # 1e-4 spelt another way
    )
    assert found == {}
    assert "trainer.nproc" in NOT_RECIPE_KEYS and "data.root" in NOT_RECIPE_KEYS
    assert deviating("he2016", "trainer.global_batch=null", "trainer.batch_size=64") == {
        "trainer.global_batch": (512, 256)
    }


def test_fast_presets_are_compared_with_ffcvs_rn50_recipe_of_their_length():
    found = deviating("fast_16")
    # FFCV: 8 GPUs x 512 images, fp16 with a scaler, the published ImageNet mean / std
    assert found == {
        "trainer.global_batch": (1024, 4096),
        "trainer.precision": ("bf16", "fp16"),
        "data.normalization": ("computed", "published"),
    }
    assert REFERENCES["ffcv_rn50_16"].title == "FFCV rn50 16 epochs"
    # another length or resize ramp than FFCV's 16-epoch config is starred
    assert set(deviating("fast_16", "trainer.epochs=20", "data.progressive.end_epoch=14")) >= {
        "trainer.epochs",
        "data.progressive.end_epoch",
    }


def test_a_world_size_that_does_not_divide_the_references_batch_is_compared_not_refused():
    # 3 processes of 16 (the demo's data, torchvision's reference): the reference's 256 is its own
    # global batch whatever world this run has; asking it to split over 3 crashed the run's summary
    assert deviating("demo", "trainer.batch_size=16", world_size=3)["trainer.global_batch"] == (48, 256)
    found = deviating("he2016", "trainer.global_batch=null", "trainer.batch_size=20", world_size=3)
    assert found["trainer.global_batch"] == (60, 256)
