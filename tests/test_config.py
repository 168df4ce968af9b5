"""Hydra composition of every conf/ file against the schemas, and `validate`'s cross-field checks."""

from __future__ import annotations

import re

import pytest
from conftest import CONF_DIR, compose
from hydra.errors import HydraException
from omegaconf import OmegaConf

from resnet_repro.config import (
    RUN_CONTROL_KEYS,
    TrainerConfig,
    UserError,
    deprecation_warnings,
    per_device_batch,
    sweep_collisions,
    to_dataclass,
    validate,
)
from resnet_repro.training.summary import deviations


def _discover_group_files() -> list[tuple[str, str]]:
    """(group, option) for every conf/<group>/**/<option>.yaml, except Hydra's own conf/hydra/."""
    found = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        rel = path.relative_to(CONF_DIR)
        if len(rel.parts) < 2 or rel.parts[0] == "hydra":
            continue
        found.append((rel.parent.as_posix(), path.stem))
    return found


GROUP_FILES = _discover_group_files()


@pytest.fixture(scope="module")
def default_cfg():
    return compose([])


def _composed_ok(overrides: list[str], tmp_path):
    cfg = compose([*overrides, f"data.root={tmp_path}"])
    obj = to_dataclass(cfg)
    validate(obj)
    return cfg, obj


def test_discovery_finds_every_config_group():
    groups = {g for g, _ in GROUP_FILES}
    assert {
        "data",
        "data/augment",
        "model",
        "optim",
        "schedule",
        "stabilizer",
        "trainer",
        "logging",
        "experiment",
    } <= groups
    assert len(GROUP_FILES) >= 20


@pytest.mark.parametrize(("group", "option"), GROUP_FILES, ids=[f"{g}={o}" for g, o in GROUP_FILES])
def test_every_group_file_composes_converts_and_validates(group, option, tmp_path):
    # a plateau schedule reacts to the model-selection split, which needs a holdout
    needs = ["data.holdout.size=0.1"] if (group, option) == ("schedule", "plateau") else []
    cfg, obj = _composed_ok([f"{group}={option}", *needs], tmp_path)
    # The chosen file is the one in effect (a preset's `override /group` must not win over the command line)
    own = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    if group != "experiment" and "name" in own:
        assert OmegaConf.select(cfg, f"{group.replace('/', '.')}.name") == own.name
    if group == "data/augment":
        for key in own:
            if key != "defaults":
                assert cfg.data.augment[key] == own[key], key
    assert obj.data.root == str(tmp_path)
    if group == "experiment":  # the job shapes users run: 1 and 8 processes (he2016 failed at 8)
        for world_size in (1, 8):
            per_device_batch(obj.trainer, world_size)
        deviations(obj, 8)  # its claimed reference composes and compares
        if option.startswith("fast_"):
            assert obj.reference == f"ffcv_rn50_{obj.trainer.epochs}"


def test_default_config_is_the_demo_and_validates(default_cfg):
    obj = to_dataclass(default_cfg)
    validate(obj)
    assert obj.name == "demo"
    assert obj.data.name == "demo"
    assert obj.model.name == "resnet18"


@pytest.mark.parametrize("data", ["folder", "imagenet"])
def test_folder_datasets_require_data_root(data):
    cfg = compose([f"data={data}"])
    assert OmegaConf.is_missing(cfg.data, "root")
    with pytest.raises(Exception, match="root"):
        to_dataclass(cfg)


@pytest.mark.parametrize("override", ["optim.lrr=0.1", "trainer.batch_sizee=8", "data.augment.hflipp=false"])
def test_misspelt_key_override_fails_at_compose_time(override):
    with pytest.raises(HydraException, match=override.split("=")[0]):
        compose([override])


@pytest.mark.parametrize("override", ["+optim.lrr=0.1", "+trainer.batch_sizee=8", "+lrr=0.1"])
def test_appended_misspelt_key_is_refused_before_training(override):
    """`+key=value` force-adds past Hydra's struct mode; the schema conversion must still refuse it,
    or the misspelt value is silently dropped and the run uses the default."""
    with pytest.raises(Exception, match=override.split("=")[0].lstrip("+").split(".")[-1]):
        to_dataclass(compose([override]))


def test_wrongly_typed_override_fails_at_compose_time():
    with pytest.raises(HydraException, match="trainer.batch_size"):
        compose(["trainer.batch_size=abc"])


def test_validate_accepts_the_default_config_with_each_precision(default_cfg):
    for precision in ("fp32", "bf16", "fp16"):
        validate(to_dataclass(OmegaConf.merge(default_cfg, {"trainer": {"precision": precision}})))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("trainer.batch_size=-1", "trainer.batch_size=-1"),
        ("optim.lr_per_256=0", "optim.lr_per_256=0"),
        ("optim.lr_per_256=-0.1", "optim.lr_per_256=-0.1"),
        ("trainer.precision=fp8", "trainer.precision='fp8'"),
        ("trainer.precision=FP32", "trainer.precision='FP32'"),
        ("schedule.milestones=[60,30]", "schedule.milestones=[60, 30]"),
        ("schedule.milestones=[0,30]", "schedule.milestones=[0, 30]"),
        ("schedule.milestones=[-5]", "schedule.milestones=[-5]"),
        ("trainer.epochs=0", "trainer.epochs=0"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001"),
        ("optim.momentum=1", "optim.momentum=1"),
        ("optim.momentum=-0.9", "optim.momentum=-0.9"),
        ("data.crop_ratio=1.5", "data.crop_ratio=1.5"),
        ("data.std=[0.2,0.0,0.2]", "data.std=[0.2, 0.0, 0.2]"),
        ("data.augment.scale=[0.9,0.1]", "data.augment.scale=[0.9, 0.1]"),
        ("stabilizer.max_norm=0", "stabilizer.max_norm=0"),
        ("trainer.resume=somewhere", "trainer.resume='somewhere'"),
        ("data.stats.resize=0", "data.stats.resize=0"),
        ("data.holdout.seed=-1", "data.holdout.seed=-1"),
        ("regularization.dropblock_ramp_epochs=-2", "regularization.dropblock_ramp_epochs=-2"),
        ("model.gn_groups=48", "model.gn_groups=48"),
        ("bench.trials=0", "bench.trials=0"),
        ("logging.log_every_steps=0", "logging.log_every_steps=0"),
        ("stabilizer.max_skips=0", "stabilizer.max_skips=0"),
        ("data.augment.pca_lighting=-0.1", "data.augment.pca_lighting=-0.1"),
        ("reference=he2015", "reference='he2015'"),
        ("schedule.metric=error", "schedule.metric='error'"),
        ("schedule.patience=0", "schedule.patience=0"),
        ("data.num_threads=0", "data.num_threads=0"),
        ("data.num_threads=-1", "data.num_threads=-1"),
        ("data.backend=torchvision data.num_threads=-1", "data.num_threads=-1 must be >= 0"),
        ("data.prefetch=0", "data.prefetch=0"),
        ("trainer.max_steps_per_epoch=0", "trainer.max_steps_per_epoch=0"),
        ("schedule.factor=1.0", "schedule.factor=1.0"),
        ("schedule.min_delta=-0.1", "schedule.min_delta=-0.1"),
        ("stabilizer.early_stop.patience=0", "stabilizer.early_stop.patience=0"),
        ("stabilizer.early_stop.min_delta=-1", "stabilizer.early_stop.min_delta=-1"),
        # trained on without a word before: a negative LR, NaN from the first step, a milestone's
        # drop applied twice, top-1 measured on the training images, 0-255 statistics
        ("schedule.final_lr_factor=-1", "schedule.final_lr_factor=-1.0 must be in [0, 1]"),
        ("schedule.final_lr_factor=5", "schedule.final_lr_factor=5.0 must be in [0, 1]"),
        ("schedule.end_factor=-0.5", "schedule.end_factor=-0.5 must be in [0, 1]"),
        ("model.bn_momentum=2", "model.bn_momentum=2.0 must be in (0, 1]"),
        ("model.bn_momentum=0", "model.bn_momentum=0.0 must be in (0, 1]"),
        ("schedule.milestones=[5,5]", "schedule.milestones=[5, 5] must be increasing"),
        ("data.mean=[123.675,116.28,103.53]", "data.mean=[123.675, 116.28, 103.53] must be in [0, 1]"),
        ("data.std=[58.395,57.12,57.375]", "data.std=[58.395, 57.12, 57.375] must be in (0, 1]"),
        # refused by torch or the OS later, with a traceback
        ("optim.eps=-1", "optim.eps=-1.0 must be >= 0"),
        ("model.bn_eps=-1", "model.bn_eps=-1.0 must be positive"),
        ("model.bn_eps=0", "model.bn_eps=0.0 must be positive"),
        ("trainer.preempt_signals=[SIGKILL]", "trainer.preempt_signals: SIGKILL cannot be caught"),
        ("trainer.preempt_signals=[SIGSTOP]", "trainer.preempt_signals: SIGSTOP cannot be caught"),
        ("trainer.dist_timeout_s=-5", "trainer.dist_timeout_s=-5 must be a positive number of seconds"),
        ("trainer.dist_timeout_s=0", "trainer.dist_timeout_s=0 must be a positive number of seconds"),
        ("bench.num_classes=0", "bench.num_classes=0 must be >= 1"),
        ("data.stats.batch_size=0", "data.stats.batch_size=0 must be a positive number of images"),
        ("data.subset.seed=-1", "data.subset.seed=-1 must be a non-negative integer"),
        # found by trying every numeric key at -1, 0 and 1e9 through `rehearse --check-only`:
        # a warning that never comes, a ramp whose every size is the step (beyond its end size)
        ("stabilizer.loss_warn_after_epochs=0", "stabilizer.loss_warn_after_epochs=0 must be at least 1"),
        ("stabilizer.loss_warn_after_epochs=-1", "stabilizer.loss_warn_after_epochs=-1 must be at least 1"),
        ("stabilizer.loss_warn_threshold=0", "stabilizer.loss_warn_threshold=0.0 must be positive"),
        (
            "data.progressive.start_size=128 data.progressive.end_size=192 data.progressive.step=256",
            "data.progressive.step=256 must be at most the smaller of start_size=128 and end_size=192",
        ),
        (
            "data.progressive.start_size=128 data.progressive.end_size=192 data.progressive.start_epoch=-1",
            "data.progressive.start_epoch=-1 must be >= 0",
        ),
    ],
)
def test_validate_names_the_bad_value(default_cfg, override, named):
    # Merged into the composed default (typed) config, as a command-line override would be; composing
    # once per module keeps this fast
    obj = to_dataclass(OmegaConf.merge(default_cfg, OmegaConf.from_dotlist(override.split())))
    with pytest.raises(UserError) as info:
        validate(obj)
    assert named in str(info.value)


def test_imagenet_paper_experiment_is_the_paper_recipe(tmp_path):
    _, obj = _composed_ok(["experiment=imagenet_paper"], tmp_path)
    assert obj.name == "imagenet_paper"
    assert obj.reference == "torchvision"  # torchvision's recipe (76.13%), not He et al. 2016 as written
    assert obj.model.name == "resnet50"
    assert obj.trainer.global_batch == 256  # the paper's batch, whatever the number of GPUs
    assert per_device_batch(obj.trainer, 8) == 32 and per_device_batch(obj.trainer, 1) == 256
    assert obj.trainer.epochs == 90
    assert obj.optim.name == "sgd"
    assert obj.optim.lr_per_256 == pytest.approx(0.1)
    assert obj.optim.momentum == pytest.approx(0.9)
    assert obj.optim.weight_decay == pytest.approx(1e-4)
    assert obj.schedule.milestones == [30, 60]
    assert obj.schedule.gamma == pytest.approx(0.1)
    assert obj.stabilizer.warmup_epochs == 0
    assert obj.stabilizer.max_norm is None
    assert obj.data.name == "imagenet"
    assert obj.data.image_size == 224
    assert obj.data.crop_ratio == pytest.approx(0.875)
    assert obj.data.augment.random_resized_crop is True
    assert obj.data.augment.scale == pytest.approx([0.08, 1.0])
    assert obj.data.augment.ratio == pytest.approx([3 / 4, 4 / 3])
    assert obj.data.augment.hflip is True


def test_imagenet_paper_stabilized_adds_warmup_and_clipping_only(tmp_path):
    _, paper = _composed_ok(["experiment=imagenet_paper"], tmp_path)
    _, stab = _composed_ok(["experiment=imagenet_paper_stabilized"], tmp_path)
    assert stab.stabilizer.warmup_epochs == 5
    assert stab.stabilizer.max_norm == pytest.approx(5.0)
    assert stab.optim == paper.optim
    assert stab.schedule == paper.schedule
    assert stab.trainer == paper.trainer
    assert stab.data == paper.data
    assert stab.model == paper.model


def test_demo_experiment_does_not_flip_digits():
    obj = to_dataclass(compose(["experiment=demo"]))
    validate(obj)
    assert obj.data.name == "demo"
    assert obj.data.augment.hflip is False
    assert obj.data.image_size == 32


def test_plateau_or_early_stopping_without_a_selection_split_is_refused(tmp_path):
    with pytest.raises(UserError, match="data.holdout.size"):
        _composed_ok(["schedule=plateau"], tmp_path)
    with pytest.raises(UserError, match="model-selection split"):
        _composed_ok(["stabilizer.early_stop.patience=3"], tmp_path)
    _composed_ok(["stabilizer.early_stop.patience=3", "trainer.select_on_test=true"], tmp_path)


def test_global_batch_that_does_not_divide_over_the_world_is_refused():
    with pytest.raises(UserError, match="trainer.global_batch=250 is not divisible by the world size 8"):
        per_device_batch(TrainerConfig(global_batch=250), 8)
    assert per_device_batch(TrainerConfig(batch_size=64), 8) == 64  # per-device batch when unset


def test_he2016_experiment_is_the_paper_as_written(tmp_path):
    _, obj = _composed_ok(["experiment=he2016"], tmp_path)
    assert obj.name == "he2016" and obj.reference == "he2016"
    assert obj.model.name == "resnet50" and obj.model.variant == "v1"  # stride 2 in the first 1x1
    assert obj.model.zero_init_residual is False and obj.model.norm == "bn"
    assert obj.trainer.global_batch == 256 and obj.trainer.epochs == 120
    assert obj.optim.name == "sgd" and obj.optim.nesterov is False
    assert obj.optim.lr_per_256 == pytest.approx(0.1)
    assert obj.optim.momentum == pytest.approx(0.9)
    assert obj.optim.weight_decay == pytest.approx(1e-4)
    assert obj.optim.decay_norm_and_bias is True
    assert obj.schedule.name == "plateau" and obj.schedule.factor == pytest.approx(0.1)
    assert obj.schedule.metric == "top1"  # "when the error plateaus"
    assert obj.data.holdout.size == 10000  # "the error plateaus" on a holdout carved from train
    assert obj.data.eval_split == "val"
    assert obj.stabilizer.warmup_epochs == 0 and obj.stabilizer.max_norm is None
    assert all(v == 0 for k, v in vars(obj.regularization).items() if not k.startswith("dropblock_"))
    a = obj.data.augment
    assert a.random_resized_crop is False and a.pad_crop == 0
    assert a.scale_short_side == [256, 480] and obj.data.image_size == 224
    assert a.hflip is True and a.pca_lighting == pytest.approx(0.1)


def test_he2016_settings_show_in_cfg_job(tmp_path):
    """`resnet-repro train experiment=he2016 --cfg job` prints every paper setting."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnet_repro",
            "train",
            "experiment=he2016",
            f"data.root={tmp_path}",
            "--cfg",
            "job",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    ).stdout
    job = OmegaConf.create(out)
    assert job.reference == "he2016" and job.model.variant == "v1"
    assert list(job.data.augment.scale_short_side) == [256, 480] and job.data.augment.pca_lighting == 0.1
    assert job.schedule.name == "plateau" and job.trainer.epochs == 120 and job.trainer.global_batch == 256
    assert job.optim.weight_decay == pytest.approx(1e-4) and job.data.holdout.size == 10000


def test_old_augment_name_paper_is_torchvisions_recipe_with_a_deprecation_line(tmp_path):
    _, old = _composed_ok(["data=imagenet", "data/augment=paper"], tmp_path)
    _, new = _composed_ok(["data=imagenet", "data/augment=torchvision"], tmp_path)
    assert old.data.augment == new.data.augment
    assert new.data.augment.random_resized_crop is True and new.data.augment.scale == [0.08, 1.0]
    (line,) = deprecation_warnings(["data/augment=paper", "trainer.epochs=3"])
    assert "data/augment=paper is deprecated; use data/augment=torchvision" in line
    assert len(deprecation_warnings(["data/augment=light,paper"])) == 1  # a sweep's list too
    assert deprecation_warnings(["data/augment=torchvision", "data/augment=he2016"]) == []


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["data.augment.scale_short_side=[256,480]"], "random_resized_crop=false"),
        (["data.augment.random_resized_crop=false", "data.augment.scale_short_side=[200,480]"], "[200, 480]"),
        (["data.augment.random_resized_crop=false", "data.augment.scale_short_side=[480,256]"], "[480, 256]"),
    ],
)
def test_bad_scale_augmentation_is_refused_naming_the_value(overrides, named, tmp_path):
    with pytest.raises(UserError, match=re.escape(named)):
        _composed_ok(["data=imagenet", *overrides], tmp_path)


def test_a_per_device_batch_must_agree_with_the_global_batch():
    assert per_device_batch(TrainerConfig(batch_size=32, global_batch=256), 8) == 32  # they agree
    assert per_device_batch(TrainerConfig(batch_size=None, global_batch=256), 8) == 32
    with pytest.raises(
        UserError,
        match=r"trainer.batch_size=64 per process x 8 processes disagrees with trainer.global_batch=256",
    ):
        per_device_batch(TrainerConfig(batch_size=64, global_batch=256), 8)
    with pytest.raises(UserError, match="both null"):
        per_device_batch(TrainerConfig(batch_size=None), 1)
    with pytest.raises(UserError, match="both null"):
        validate(to_dataclass(compose(["trainer.batch_size=null"])))


@pytest.mark.parametrize(
    ("preset", "epochs", "ramp"),
    [
        ("fast_16", 16, (11, 13)),
        ("fast_24", 24, (17, 20)),
        ("fast_40", 40, (29, 34)),
        ("fast_88", 88, (65, 76)),
    ],
)
def test_fast_presets_are_ffcvs_resnet50_configurations(tmp_path, preset, epochs, ramp):
    from resnet_repro.data.progressive import size_at

    _, obj = _composed_ok([f"experiment={preset}"], tmp_path)
    assert obj.name == preset and obj.trainer.epochs == epochs and obj.model.name == "resnet50"
    assert obj.trainer.precision == "bf16" and obj.model.channels_last is True
    assert obj.schedule.name == "linear_ramp" and obj.schedule.peak_epoch == 2
    assert obj.regularization.label_smoothing == pytest.approx(0.1)
    assert obj.optim.decay_norm_and_bias is False and obj.optim.weight_decay == pytest.approx(1e-4)
    assert obj.eval.hflip is True and obj.data.image_size == 256
    p = obj.data.progressive
    assert (p.start_size, p.end_size, p.start_epoch, p.end_epoch) == (160, 192, *ramp)
    sizes = [size_at(p, e, epochs) for e in range(epochs)]
    assert sizes[0] == 160 and sizes[-1] == 192 and set(sizes) == {160, 192}


def test_sweep_proxy_is_a_100_class_low_resolution_fast_16(tmp_path):
    _, obj = _composed_ok(["experiment=sweep_proxy"], tmp_path)
    assert obj.data.subset.classes == 100 and obj.data.holdout.size == 5000
    assert obj.trainer.epochs == 16 and obj.data.image_size == 128
    assert (obj.data.progressive.start_size, obj.data.progressive.end_size) == (112, 128)


def test_sweep_job_directory_names_leave_out_run_control_keys():
    overrides = [
        "optim.weight_decay=0.0001",
        "stabilizer.max_norm=null",
        "trainer.epochs=2",
        "trainer.max_steps_per_epoch=3",
        "logging.progress=false",
        "data.root=/data/imagenet",
        "data.num_threads=2",
        "trainer.nproc=2",
    ]
    cfg = compose(overrides, return_hydra_config=True)
    assert (
        cfg.hydra.job.override_dirname
        == "optim.weight_decay=0.0001,stabilizer.max_norm=null,trainer.epochs=2"
    )


def test_run_control_keys_are_the_directory_name_exclude_list_and_real_config_keys():
    cfg = compose([], return_hydra_config=True)
    # one list: reporting/tb_hparams.py uses RUN_CONTROL_KEYS, Hydra's names this copy
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == list(RUN_CONTROL_KEYS)
    for key in RUN_CONTROL_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        assert leaf in node, f"{key} is not a config key"


def test_sweeping_a_run_control_key_is_recognised_but_a_list_value_is_not():
    assert sweep_collisions(["-m", "data.num_threads=2,4", "optim.weight_decay=1e-4,5e-4"]) == [
        "data.num_threads"
    ]
    assert sweep_collisions(["trainer.max_steps_per_epoch=range(2,5)"]) == ["trainer.max_steps_per_epoch"]
    assert sweep_collisions(["trainer.preempt_signals=[SIGUSR1,SIGTERM]", "data.root=/a/b"]) == []
    assert sweep_collisions(["hydra.launcher.partition=a,b"]) == []  # hydra.* is not a job override


def test_a_multirun_over_a_run_control_key_is_refused_before_any_job_starts(capsys):
    from resnet_repro import cli

    with pytest.raises(SystemExit):
        cli.main(["train", "-m", "data.num_threads=2,4", "optim.weight_decay=1e-4,5e-4"])
    err = capsys.readouterr().err
    assert "sweeping data.num_threads" in err and "hydra.sweep.subdir=" in err


def test_a_null_holdout_seed_follows_trainer_seed_so_a_seed_sweep_varies_the_holdout_too(tmp_path):
    from conftest import make_image_folder

    from resnet_repro.config import compose as compose_config
    from resnet_repro.training.run_data import load_file_lists

    make_image_folder(tmp_path, "train", {"a": 12, "b": 12}, sizes=[(8, 8)])
    make_image_folder(tmp_path, "val", {"a": 1, "b": 1}, sizes=[(8, 8)])

    def holdout(*overrides: str) -> tuple[int, tuple[str, ...]]:
        cfg = compose_config(["data=folder", f"data.root={tmp_path}", "data.holdout.size=6", *overrides])
        validate(cfg)
        splits = load_file_lists(cfg.data)
        assert splits.holdout is not None
        return cfg.data.holdout.seed, tuple(splits.holdout.files)

    # the default (0): one holdout for every training seed, as runs have always had
    assert holdout("trainer.seed=1") == holdout("trainer.seed=2") == holdout()
    # null: the training seed's, resolved when the config is read (the run's config records it)
    s1, h1 = holdout("trainer.seed=1", "data.holdout.seed=null")
    s2, h2 = holdout("trainer.seed=2", "data.holdout.seed=null")
    assert (s1, s2) == (1, 2) and h1 != h2
    assert holdout("trainer.seed=2", "data.holdout.seed=2") == (s2, h2)


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr_per_256=nan",
        "optim.lr_per_256=inf",
        "optim.weight_decay=nan",
        "optim.weight_decay=inf",
        "stabilizer.max_norm=nan",
        "stabilizer.max_norm=inf",
        "stabilizer.warmup_epochs=nan",
        "schedule.gamma=nan",
        "plan.img_per_s_per_gpu=nan",
        "plan.img_per_s_per_gpu=inf",
        "data.crop_ratio=nan",
    ],
)
def test_a_number_that_is_not_finite_is_refused_naming_its_key(override, tmp_path):
    """nan or inf in any numeric setting: refused before anything runs, not trained on until a
    non-finite loss names another value (or, for a max norm, read as "clip nothing")."""
    key = override.split("=")[0]
    with pytest.raises(UserError, match=rf"^{re.escape(key)}=(nan|inf) must be a finite number$"):
        _composed_ok([override], tmp_path)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("schedule.gamma=0", "schedule.gamma=0.0 must be in (0, 1]"),
        ("schedule.gamma=-1", "schedule.gamma=-1.0 must be in (0, 1]"),
        ("schedule.gamma=2", "schedule.gamma=2.0 must be in (0, 1]"),
        ("trainer.seed=-1", "trainer.seed=-1 must be >= 0"),
        ("bench.min_images=0", "bench.min_images=0 must be >= 1"),
        ("bench.warmup=-1", "bench.warmup=-1 must be >= 0"),
    ],
)
def test_out_of_range_decay_factor_seed_and_bench_counts_are_refused(override, words, tmp_path):
    with pytest.raises(UserError, match=re.escape(words)):
        _composed_ok([override], tmp_path)
