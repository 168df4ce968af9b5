"""`resnet-repro rehearse`: the user's job as typed, checked cheaply for every preset at 1 and 2
processes and for every training command the docs show, and rehearsed for real on 2 processes."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, compose, make_image_folder, run_cli

from resnet_repro import cli
from resnet_repro.config import to_dataclass

PRESETS = sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml"))
DOC_PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
STUB_DATA = "/data/imagenet"  # not readable here: the check counts ImageNet-1K's images instead


@pytest.fixture(autouse=True, scope="module")
def demo_cache(tmp_path_factory):
    """The demo's data.root (${RESNET_REPRO_CACHE}/demo-digits) built once in a tmp folder: a command
    on the demo counts its images there, not in the user's cache."""
    from resnet_repro.data.demo import build_demo_dataset

    cache = tmp_path_factory.mktemp("cache")
    build_demo_dataset(cache / "demo-digits")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNET_REPRO_CACHE", str(cache))
        yield cache


def rehearse_check(args: list[str], capsys) -> tuple[int, str, str]:
    """`resnet-repro rehearse --check-only <args>` in this process: (exit code, stdout, stderr)."""
    try:
        cli.main(["rehearse", "--check-only", *args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def cfg_of(*overrides: str):
    from omegaconf import OmegaConf

    dcfg = compose(list(overrides))
    if OmegaConf.is_missing(dcfg.data, "root"):
        dcfg.data.root = ""
    return to_dataclass(dcfg)


# ----------------------------------------------------------------------------- the step plan
def test_step_plan_trains_the_first_step_warmup_end_milestones_and_last_epoch():
    from resnet_repro.training.step_plan import windows

    cfg = cfg_of("experiment=demo")  # 8 epochs, warm-up 1 epoch, milestones 5 and 7
    got = [(w.start, w.end) for w in windows(cfg, steps_per_epoch=11, steps_per_point=1)]
    assert got == [(0, 1), (10, 11), (55, 56), (77, 78)]
    why = [w.why for w in windows(cfg, 11, 1)]
    assert why[1] == "end of warm-up" and why[-1] == "LR milestone (epoch 7), last epoch"


def test_step_plan_of_a_fast_preset_visits_the_ramp_peak_and_each_training_crop():
    from resnet_repro.training.step_plan import change_points

    cfg = cfg_of("experiment=fast_16")  # peak at epoch 2, crops 160 -> 192 over epochs 11-13
    points = dict((why, step) for step, why in change_points(cfg, steps_per_epoch=10))
    assert points["LR ramp peak (epoch 2)"] == 20
    assert [w for w in points if w.startswith("training crop")] == [
        "training crop 160 px",
        "training crop 192 px",
    ]
    assert points["last epoch"] == 150


def test_step_plan_splits_the_windows_into_a_run_and_its_resume():
    from resnet_repro.training.step_plan import StepPlan

    cfg = cfg_of("experiment=demo")
    first, second = StepPlan(1, "first").windows(cfg, 11), StepPlan(1, "second").windows(cfg, 11)
    assert [w.start for w in first] == [0, 10, 55] and [w.start for w in second] == [77]


def test_a_rehearsed_step_trains_the_first_images_of_each_batch_the_loader_delivers():
    import torch

    from resnet_repro.training.step_plan import FirstImages

    batches = [(torch.arange(12.0).view(6, 2) + 100 * b, torch.arange(6) + 10 * b) for b in range(3)]
    part = FirstImages(batches, 2)
    assert len(part) == 3  # every batch of the epoch is still read
    got = list(part)
    assert [tuple(x.shape) for x, _ in got] == [(2, 2)] * 3
    assert got[1][1].tolist() == [10, 11] and got[2][0][1].tolist() == [202.0, 203.0]


def test_images_per_step_is_the_whole_batch_on_a_gpu_and_a_few_images_on_a_cpu():
    from resnet_repro.planning.rehearse import CPU_IMAGES_PER_STEP, images_per_step

    assert images_per_step("auto", 128, "cuda:0") is None
    assert images_per_step("auto", 128, "cpu") == CPU_IMAGES_PER_STEP
    assert images_per_step("auto", 2, "cpu") is None  # a batch no larger than the cap: all of it
    assert images_per_step("all", 128, "cpu") is None
    assert images_per_step("16", 128, "cpu") == 16 and images_per_step("500", 128, "cuda:0") is None


def test_the_check_gives_the_warnings_train_gives_at_its_start(capsys):
    ramp = [f"data.progressive.{s}" for s in ("start_size=16", "end_size=32", "end_epoch=9", "step=8")]
    code, out, err = rehearse_check(["trainer.epochs=4", "stabilizer.warmup_epochs=0", *ramp], capsys)
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("  warning ")]
    assert len(warnings) == 2, out
    assert "schedule.milestones [5, 7] are at or after the last epoch (4)" in warnings[0]
    assert "leave the ramp unfinished at the last epoch (4 epochs)" in warnings[1]
    assert all(w.endswith("(train warns of it too)") for w in warnings)


def test_the_check_gives_the_listings_warning_of_an_exclusion_that_matches_no_file(tmp_path, capsys):
    listed = tmp_path / "exclude.txt"
    listed.write_text("train/0/nope.JPEG\n")
    code, out, err = rehearse_check([f"data.exclude_files={listed}"], capsys)
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("  warning ")]
    assert len(warnings) == 1 and "1 of 1 listed files are in neither train nor val" in warnings[0], out


def test_stand_in_and_scan_together_are_refused_not_one_dropped(capsys):
    code, out, err = rehearse_check(["--stand-in", "--scan", "experiment=he2016"], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "resnet-repro: error: --scan reads every listed image of data.root and --stand-in does not read "
        "data.root: give one"
    ]


@pytest.mark.parametrize("value", ["1", "-3", "half", ""])
def test_a_bad_images_per_step_is_refused_in_one_line_naming_it(value, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["rehearse", f"--images-per-step={value}", "experiment=he2016"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"resnet-repro: error: --images-per-step={value}: expected a count of images (2 or more), "
        "'all' or 'auto'"
    ]


def test_saved_activations_count_each_kept_tensor_once_and_no_parameters():
    import torch
    import torch.nn as nn

    from resnet_repro.planning.meta_model import saved_bytes_per_image

    with torch.device("meta"):
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
        tiny = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    # conv keeps its input (3x8x8), ReLU its output (4x8x8), which Flatten's view and the linear
    # layer keep again (one storage): 4 bytes each, the weights not counted
    assert saved_bytes_per_image(net, (3, 8, 8)) == 4 * (3 * 8 * 8 + 4 * 8 * 8)
    conv = net[:2]  # with the pixels: 4 x at twice the side
    assert saved_bytes_per_image(conv, (3, 16, 16)) == 4 * saved_bytes_per_image(conv, (3, 8, 8))
    net.eval()
    saved_bytes_per_image(net, (3, 8, 8))
    assert not net.training  # the module's mode is put back
    assert saved_bytes_per_image(tiny, (3, 1, 1)) > 0  # BatchNorm at 1 x 1 px: counted on 2 images


def test_the_check_counts_the_activations_a_resnet50_step_keeps_per_image(capsys):
    from resnet_repro.planning.rehearse import check

    paper, fast = check(cfg_of("experiment=imagenet_paper")), check(cfg_of("experiment=fast_88"))
    # ResNet-50 (v1.5) at 224 px keeps about 80 MB per image for its backward pass in float32; at
    # fast_88's largest crop (192 px) the count scales with the pixels
    assert 60 < paper.activation_mb_per_image < 110
    assert fast.activation_mb_per_image == pytest.approx(
        paper.activation_mb_per_image * (192 / 224) ** 2, rel=0.05
    )
    code, out, _ = rehearse_check(["experiment=imagenet_paper", "trainer.nproc=2"], capsys)
    per_process = paper.activation_mb_per_image * 128 / 1024
    assert "GB per process at 128 (largest crop, float32; counted on the meta device)" in out
    assert f"{per_process:,.1f} GB per process" in out


# ----------------------------------------------------------------------------- the cheap layer
@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("experiment", PRESETS)
def test_every_preset_passes_the_rehearsal_check(experiment, nproc, capsys):
    code, out, err = rehearse_check([f"experiment={experiment}", f"trainer.nproc={nproc}"], capsys)
    assert code == 0, err
    cfg = cfg_of(f"experiment={experiment}")
    global_batch = cfg.trainer.global_batch or cfg.trainer.batch_size * nproc
    assert f"{global_batch // nproc} per process, {global_batch} global" in out
    assert f"processes        {nproc}:" in out


def test_he2016_on_8_gpus_as_make_train_imagenet_composes_it_passes_the_check(capsys):
    """The README's `make train-imagenet EXPERIMENT=he2016 GPUS=8`, expanded by make without running."""
    args = make_train_args("train-imagenet", f"DATA={STUB_DATA}", "GPUS=8", "EXPERIMENT=he2016")
    assert "trainer.nproc=8" in args and "experiment=he2016" in args
    code, out, err = rehearse_check(["--stand-in", *args, "plan.img_per_s_per_gpu=2500"], capsys)
    assert code == 0, err
    assert "32 per process, 256 global" in out
    assert (
        "plan             " in out
        and "at 20,000.0 img/s over 8 processes (plan.img_per_s_per_gpu=2500" in out
    )
    assert "deviations       from reference=he2016: none" in out


def test_the_check_refuses_what_the_run_would_refuse_in_one_line_with_exit_2(capsys):
    code, out, err = rehearse_check(
        ["experiment=he2016", "trainer.batch_size=256", "trainer.nproc=2"], capsys
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "resnet-repro: error: trainer.batch_size=256 per process x 2 processes disagrees with "
        "trainer.global_batch=256; pass trainer.batch_size=null to split the global batch over the "
        "processes, or trainer.global_batch=null to use the per-process batch"
    ]


def test_the_check_of_a_sweep_checks_each_job(capsys):
    code, out, err = rehearse_check(["-m", "experiment=he2016,imagenet_paper", "trainer.nproc=2"], capsys)
    assert code == 0, err
    assert out.count("rehearsal verdict") == 2
    assert "reference=he2016" in out and "reference=torchvision" in out


def test_the_check_of_a_sweep_names_the_point_it_refuses(capsys):
    args = ["--stand-in", "-m", "experiment=he2016", "trainer.nproc=4", "trainer.global_batch=256,258"]
    code, out, err = rehearse_check(args, capsys)
    assert code == 2
    assert out.count("rehearsal verdict") == 1  # the first point, checked before the refusal
    (line,) = err.strip().splitlines()
    assert line.startswith(
        "resnet-repro: error: sweep point 2 of 2 (trainer.global_batch=258): trainer.global_batch=258 is not"
    )


# ----------------------------------------------------------------------------- what the docs show
def make_train_args(target: str, *variables: str) -> list[str]:
    """The `resnet-repro train` arguments `make <target> <variables>` would run (make -n: nothing runs)."""
    out = subprocess.run(
        ["make", "-n", "-s", "-C", str(REPO_ROOT), target, *variables],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [ln for ln in out.replace("\\\n", " ").splitlines() if "resnet-repro train" in ln]
    assert len(lines) == 1, out
    return shlex.split(lines[0].split("resnet-repro train", 1)[1])


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every `resnet-repro ...` and `make ...` line of README.md and docs/: in
    fenced and indented code blocks (continuation lines joined, comments dropped) and in inline code."""
    found = []
    for page in DOC_PAGES:
        text = page.read_text()
        blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
        rest = re.sub(r"```.*?```", "", text, flags=re.S)
        blocks += ["\n".join(ln[4:] for ln in rest.splitlines() if ln.startswith("    "))]
        lines = [ln.split(" #")[0].strip() for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
        lines += [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", rest)]
        found += [(page.name, ln) for ln in lines if re.match(r"(resnet-repro|make) \S", ln)]
    return sorted(set(found))


MAKE_TRAINING_TARGETS = ("train-imagenet", "sweep", "sweep-slurm", "demo")


def rehearsal_args(command: str) -> list[str] | None:
    """The `rehearse` arguments of a documented training command, its paths stubbed; None for a
    command that trains nothing or whose arguments are placeholders (`...`, `<id>`, `[overrides]`)."""
    words = shlex.split(command.replace("DATA=...", f"DATA={STUB_DATA}"))
    if any("..." in w or "<" in w or w.startswith("[") for w in words) or "--cfg" in words:
        return None
    if words[:2] in (["resnet-repro", "train"], ["resnet-repro", "rehearse"]):
        return [w for w in words[2:] if w != "--check-only"]
    if (
        words[0] == "make"
        and len(words) > 1
        and words[1] in ("train-imagenet", "sweep", "sweep-slurm", "demo")
    ):
        variables = [w for w in words[2:] if "=" in w]
        if words[1] == "train-imagenet" and not any(v.startswith("DATA=") for v in variables):
            variables.append(f"DATA={STUB_DATA}")
        return make_train_args(words[1], *variables)
    return None


DOC_COMMANDS = documented_commands()
TRAINING_COMMANDS = [
    (page, c) for page, c in DOC_COMMANDS if re.match(r"resnet-repro train|make (train|sweep|demo)", c)
]


def test_the_docs_show_training_commands_to_rehearse():
    assert len(TRAINING_COMMANDS) >= 15, TRAINING_COMMANDS


@pytest.mark.parametrize("page,command", TRAINING_COMMANDS, ids=[c for _, c in TRAINING_COMMANDS])
def test_every_documented_training_command_passes_the_rehearsal_check(page, command, capsys):
    args = rehearsal_args(command)
    if args is None:
        pytest.skip(f"{page}: placeholders in {command!r}")
    # as a user without the data here rehearses it: the data's counts estimated
    code, out, err = rehearse_check(["--stand-in", *args], capsys)
    assert code == 0, f"{page}: {command}: {err}"
    assert "rehearsal verdict" in out


# ----------------------------------------------------------------------------- the data
def test_stand_in_for_he2016_has_its_classes_sizes_and_room_for_its_holdout(tmp_path):
    from PIL import Image

    from resnet_repro.planning.rehearse import rehearsal_config
    from resnet_repro.training.run_data import load_file_lists

    cfg = cfg_of("experiment=he2016", "trainer.nproc=2")
    rcfg, note = rehearsal_config(cfg, world=2, run_dir=tmp_path)
    assert note.startswith("a generated stand-in (data.root is not set): 1000 classes")
    splits = load_file_lists(rcfg.data)  # the real listing, holdout carved as the run carves it
    assert len(splits.train.classes) == 1000
    assert len(splits.train) >= 2 * 256 and len(splits.train_full) - len(splits.train) == 10000  # holdout
    assert Image.open(splits.train.files[0]).size == (341, 256)  # shorter side 224 / 0.875
    assert rcfg.data.max_eval_images == 4 and rcfg.trainer == cfg.trainer and rcfg.model == cfg.model


def test_sample_of_data_root_takes_a_few_images_per_class_through_the_real_listing(tmp_path):
    from resnet_repro.planning.rehearse import rehearsal_config

    root = tmp_path / "data"
    make_image_folder(root, "train", {"a": 12, "b": 12, "c": 12})
    make_image_folder(root, "val", {"a": 2, "b": 2, "c": 2})
    cfg = cfg_of("data=folder", f"data.root={root}", "trainer.batch_size=4", "model=resnet18")
    rcfg, note = rehearsal_config(cfg, world=1, run_dir=tmp_path / "run")
    sample = Path(rcfg.data.root)
    per_class = [len(list((sample / "train" / c).iterdir())) for c in "abc"]
    assert per_class == [4, 4, 4]  # 2 global batches of 4 over 3 classes, +1 each
    assert all(len(list((sample / "val" / c).iterdir())) == 1 for c in "abc")
    assert note.startswith(f"a sample of {root}: 12 training images")
    (root / "train" / "d").mkdir()  # an empty class folder: the real listing's guard refuses it
    with pytest.raises(Exception, match="has no images"):
        rehearsal_config(cfg, world=1, run_dir=tmp_path / "run2")


# ----------------------------------------------------------------------------- a real rehearsal
@pytest.mark.slow
def test_rehearsal_of_the_demo_on_2_processes_trains_resumes_evaluates_and_gives_a_verdict(
    tmp_path, demo_root
):
    run_dir = tmp_path / "rehearsal"
    result = run_cli(
        "rehearse",
        "trainer.nproc=2",
        f"data.root={demo_root}",
        "logging.progress=false",
        f"--out={run_dir}",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "64 per process, 128 global" in out
    assert re.search(r"peak memory +rank 0: [\d,]+ MB, rank 1: [\d,]+ MB", out)
    assert "trained images   the first 2 of each process's 64 per step" in out  # a CPU
    assert "trained steps    1 (first step); 11 (end of warm-up); 56 (LR milestone (epoch 5)); 78" in out
    assert "a second launch of the processes resumed it" in out
    log = (run_dir / "train.log").read_text()
    assert f"resumed from {run_dir}/checkpoints/last.pt: epoch 7, step 56" in log
    # each launch recorded its own processes' peak memory
    recorded = sorted(p.name for p in (run_dir / "rehearsal").glob("peak_memory_*.json"))
    assert recorded == [f"peak_memory_rank{r}_{phase}.json" for r in (0, 1) for phase in ("first", "second")]
    record = json.loads((run_dir / "rehearsal.json").read_text())
    assert record["final"]["protocol"] == "center" and len(record["peak_memory_mb"]) == 2
    assert record["launches"] == 2 and record["images_per_step"] == 2
    final = json.loads((run_dir / "final.json").read_text())
    assert final["epochs_run"] == 8
    assert (run_dir / "curves.png").is_file()  # `report` on the result


@pytest.mark.slow
def test_rehearsal_of_he2016_on_2_processes_without_data_runs_on_the_stand_in_to_the_papers_protocols(
    tmp_path,
):
    """The paper's preset as a user without ImageNet here types it: ResNet-50, 128 per process,
    a holdout, the mean image, and the 10-crop and multi-scale test protocols at the end."""
    run_dir = tmp_path / "he2016"
    result = run_cli(
        "rehearse",
        "experiment=he2016",
        "trainer.nproc=2",
        "logging.progress=false",
        f"--out={run_dir}",
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "128 per process, 256 global" in out and "4,965 x 120 epochs" in out
    assert "data             a generated stand-in (data.root is not set): 1000 classes" in out
    assert "trained images   the first 2 of each process's 128 per step" in out
    assert "trained steps    1 (first step); " in out and "(last epoch)" in out
    assert "deviations       from reference=he2016: none" in out
    assert "final eval       ten_crop top-1 " in out and ", multiscale top-1 " in out
    # 2 images of 128 per step say nothing of the run's speed: no estimate made from them
    assert "plan             no estimate: steps of 2 of 128 images are not the run's speed" in out
    final = json.loads((run_dir / "final.json").read_text())
    assert final["epochs_run"] == 120 and final["protocol"] == "ten_crop"
    assert final["multiscale"]["protocol"] == "multiscale" and "center" in final
    assert json.loads((run_dir / "deviations.json").read_text())["deviations"] == []
