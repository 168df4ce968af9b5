"""The GPU node's kit: one resolve pinned in scripts/gpu_kit.lock.json (one version each, no
pre-release, none of the node's own packages), and a call plan within the device's limits
(scripts/kit.py, scripts/rehearse_kit.py; the device's limits from its README)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import kit  # noqa: E402
import rehearse_kit  # noqa: E402

MiB = 2**20
NODE = kit.read_node_packages(REPO / "scripts" / "gpu_node_packages.txt")
LOCK = json.loads((REPO / "scripts" / "gpu_kit.lock.json").read_text())


def _item(name: str, version: str, url: str | None = None) -> dict:
    url = url or f"https://files.example/{name.replace('-', '_')}-{version}-py3-none-any.whl"
    return {
        "metadata": {"name": name, "version": version},
        "download_info": {"url": url, "archive_info": {"hashes": {"sha256": "ab" * 32}}},
    }


@pytest.mark.parametrize(
    "version, pre",
    [
        ("1.4.0rc3", True),
        ("2.4.1rc1", True),
        ("1.1.0.dev7", True),
        ("1.0b1", True),
        ("3.0a2", True),
        ("1.3.8", False),
        ("2.11.0+cu130", False),
        ("1.0.post1", False),
        ("2026.6", False),
    ],
)
def test_pre_releases_are_told_from_releases(version: str, pre: bool):
    assert kit.is_prerelease(version) is pre


def test_a_report_with_the_per_requirement_downloads_hydra_pair_is_refused():
    """What the issue found in the old kit: hydra-core 1.3.8 and 1.4.0rc3, omegaconf 2.3.1 and
    2.4.1rc1, and wheels the node already has. Each is named."""
    report = {
        "install": [
            _item("hydra-core", "1.3.8"),
            _item("hydra-core", "1.4.0rc3"),
            _item("omegaconf", "2.3.1"),
            _item("omegaconf", "2.4.1rc1"),
        ],
        "environment": {"python_version": "3.12"},
    }
    _, problems = kit.lock_from_report(report, {})
    assert "hydra-core 1.4.0rc3 is a pre-release" in problems
    assert "omegaconf 2.4.1rc1 is a pre-release" in problems
    assert "hydra-core: 2 versions (1.3.8, 1.4.0rc3): keep one" in problems
    assert "omegaconf: 2 versions (2.3.1, 2.4.1rc1): keep one" in problems
    assert kit.pin_problems([("SciPy", "1.18.1")], NODE) == [
        "scipy 1.18.1 is one of the node's own packages: leave it out"
    ]


def test_a_clean_report_becomes_a_lock_without_the_nodes_packages():
    """The node's packages go to `node` at the resolved versions; the rest to `kit`, each with its
    wheel and sha256, a wheel built here from a source archive (a file:// URL) marked `built`."""
    report = {
        "install": [
            _item("Hydra_Core", "1.3.8"),
            _item(
                "antlr4-python3-runtime",
                "4.9.3",
                "file:///tmp/built/antlr4_python3_runtime-4.9.3-py3-none-any.whl",
            ),
            _item("numpy", "2.5.2"),
            _item("scipy", "1.18.1"),
        ],
        "environment": {"python_version": "3.12"},
        "pip_version": "26.3",
    }
    lock, problems = kit.lock_from_report(report, {"numpy": "2.5.2", "scipy": None})
    assert problems == []
    assert [(e["name"], e["version"]) for e in lock["kit"]] == [
        ("antlr4-python3-runtime", "4.9.3"),
        ("hydra-core", "1.3.8"),
    ]
    assert lock["kit"][0]["built"] is True and "sha256" not in lock["kit"][0]
    assert (
        lock["kit"][1]["sha256"] == "ab" * 32
        and lock["kit"][1]["file"] == "Hydra_Core-1.3.8-py3-none-any.whl"
    )
    assert lock["node"] == [{"name": "numpy", "version": "2.5.2"}, {"name": "scipy", "version": "1.18.1"}]
    assert kit.lock_requirements(lock, built=True) == ["antlr4-python3-runtime==4.9.3"]
    assert kit.lock_requirements(lock, built=False) == [f"hydra-core==1.3.8 --hash=sha256:{'ab' * 32}"]
    _, problems = kit.lock_from_report(report, {"numpy": "2.4.0"})
    assert "numpy: resolved 2.5.2, the node has 2.4.0" in problems


def test_the_committed_lock_holds_one_version_each_no_pre_release_none_of_the_nodes():
    """scripts/gpu_kit.lock.json, as `wheelhouse.sh --lock` wrote it for the node's CPython 3.12."""
    assert LOCK["python"] == "3.12"
    pins = [(e["name"], e["version"]) for e in LOCK["kit"]]
    assert kit.pin_problems(pins, NODE) == []
    assert kit.pin_problems(pins + [(e["name"], e["version"]) for e in LOCK["node"]], {}) == []
    versions = dict(pins)
    assert versions["hydra-core"].startswith("1.3.") and versions["omegaconf"].startswith("2.3.")
    assert versions["nvidia-dali-cuda130"].startswith("2.")
    assert {"torch", "torchvision", "numpy", "scipy"}.isdisjoint(versions)
    for e in LOCK["kit"]:
        assert e.get("built") or (len(e["sha256"]) == 64 and e["file"].endswith(".whl")), e
    assert all(e["name"] in NODE for e in LOCK["node"])


def test_the_node_list_holds_the_nodes_torch_and_none_of_what_the_kit_brings():
    assert NODE["torch"] == "2.11.0" and NODE["torchvision"] == "0.26.0"
    for name in ("tensorboard", "scipy", "matplotlib", "numpy", "pyyaml", "pillow", "pytest"):
        assert name in NODE, name
    for name in ("hydra-core", "omegaconf", "submitit", "nvidia-dali-cuda130", "hydra-submitit-launcher"):
        assert name not in NODE, name


def test_layout_covers_every_byte_once_in_as_few_calls_as_hold_them():
    sizes = [("a.whl", 150), ("b.whl", 40), ("c.whl", 90)]
    tree, limit = 10, 100 + kit.MANIFEST_ALLOWANCE + 10  # room: 100 bytes a call
    calls = kit.layout(sizes, 30, tree, limit)
    assert len(calls) == 4  # 280 bytes of wheels + 30 of sample in calls of 100
    filled = [sum(n for _, _, n in parts) for parts in calls]
    assert filled == [100, 100, 80, 0]  # in order; the last call keeps room for the sample
    pieces = [p for parts in calls for p in parts]
    for name, size in sizes:
        mine = [(o, n) for f, o, n in pieces if f == name]
        assert [o for o, _ in mine] == [sum(n for _, n in mine[:i]) for i in range(len(mine))]
        assert sum(n for _, n in mine) == size
    with pytest.raises(SystemExit, match="do not fit one call"):
        kit.layout(sizes, 101, tree, limit)


def test_the_issues_kit_needed_more_calls_than_the_device_takes_and_this_one_fits_five():
    """382.5 MiB of parts plus a 26.7 MiB sample and a 2.5 MiB tree at 62 MiB a call: 7 calls (the
    plan refuses it); the locked kit's 257 MiB: 5."""
    tree, sample = int(2.5 * MiB), int(26.7 * MiB)
    assert len(kit.layout([("old", int(382.5 * MiB))], sample, tree)) == 7
    assert len(kit.layout([("new", int(257.2 * MiB))], sample, tree)) == 5


def test_plan_problems_name_each_limit_the_device_would_refuse():
    call = {"call": 1, "carry": ["a"], "bytes": 10, "command": "true"}
    plan = {
        "calls": [
            *[{**call, "call": i} for i in range(1, 6)],
            {"call": 6, "carry": [f"p{i}" for i in range(9)], "bytes": 65 * MiB, "command": "x" * 2001},
        ]
    }
    problems = kit.plan_problems(plan)
    assert problems == [
        "6 calls, more than 5",
        "call 6 carries 9 paths, more than 8",
        "call 6: 65.00 MiB, over 64 MiB",
        "call 6: its command is 2001 characters, over 2000",
        "the last call does not run scripts/gpu_check.sh",
    ]


def test_files_back_follow_the_devices_rules(tmp_path: Path):
    for i in range(9):
        (tmp_path / f"f{i}.txt").write_text("x")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("x")
    (tmp_path / "bad name.txt").write_text("x")
    problems = rehearse_kit.files_back(tmp_path)
    assert "11 files under $OUT, more than 8" in problems
    assert "a/b/c/deep.txt: deeper than 2 folders" in problems
    assert any(p.startswith("bad name.txt: a name with other") for p in problems)


def test_the_built_plan_fits_the_device_when_there_is_one():
    """gpu_kit/plan.json from `make gpu-kit`, measured by walking what would travel (tracked tree,
    untracked files, carried paths). Skipped where no kit was built (it is git-ignored)."""
    plan_path = REPO / "gpu_kit" / "plan.json"
    if not plan_path.is_file():
        pytest.skip("no gpu_kit/plan.json (make gpu-kit)")
    plan = json.loads(plan_path.read_text())
    assert kit.plan_problems(plan) == []
    rows = rehearse_kit.check_plan(REPO, plan)
    assert [r["problems"] for r in rows] == [[] for _ in rows]
    assert len(rows) <= 5 and all(r["paths"] <= 8 and r["bytes"] <= 64 * MiB for r in rows)


@pytest.mark.slow
def test_offline_rehearsal_runs_the_plan_end_to_end_in_a_simulated_node(tmp_path: Path):
    """scripts/rehearse_kit.py: a kit for this machine's Python from the lock, each call under
    `unshare -n` in a fresh venv holding only the node's packages, gpu_check --device cpu last, then
    pip check. About a minute here; needs pip's cache or network for the wheels, root for unshare."""
    if os.environ.get("RESNET_REPRO_KIT_REHEARSAL") != "1":
        # a minute and pip's cache or network: opt-in (the plan's arithmetic and limits, the lock's
        # checks run above); `RESNET_REPRO_KIT_REHEARSAL=1 .venv/bin/pytest tests/test_gpu_kit.py`
        pytest.skip("opt-in: RESNET_REPRO_KIT_REHEARSAL=1 runs the offline rehearsal of the kit's calls")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("`unshare -n` does not work here")
    sample = REPO / "gpu_kit" / "imagenet-sample"
    if not (sample / "train").is_dir():
        sample = REPO.parent / "shared" / "data" / "imagenet-sample"
    if not (sample / "train").is_dir():
        pytest.skip("no JPEG sample")
    if shutil.disk_usage(tmp_path).free < 4 * 2**30:
        pytest.skip("under 4 GiB free")
    # the kit's wheels come from pip's cache or PyPI: a machine with neither cannot build it
    probe = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "python"),
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--dest",
            str(tmp_path / "probe"),
            "omegaconf==2.3.0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        pytest.skip(f"pip cannot fetch wheels here (no cache, no network): {probe.stderr.strip()[-200:]}")
    work = tmp_path / "work"
    proc = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "python"),
            str(REPO / "scripts" / "rehearse_kit.py"),
            "--work",
            str(work),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((work / "rehearsal.json").read_text())
    assert len(summary["calls"]) <= 5 and summary["problems"] == []
    assert summary["calls"][-1]["files_back"] == ["gpu_check.json", "gpu_check.txt", "gpu_check_logs.tar.gz"]
    assert summary["pip_check"] == ["No broken requirements found."]
    shutil.rmtree(work)  # about 1 GB of wheels, parts and their copies


def test_a_wheel_folder_is_checked_against_the_lock(tmp_path: Path):
    """kit.py check-wheels: one version each, no pre-release, none of the node's, nothing the lock
    lacks, every locked package there, and the locked sha256 when downloaded for the lock's Python."""
    lock = {
        "python": "3.12",
        "kit": [
            {
                "name": "hydra-core",
                "version": "1.3.8",
                "file": "hydra_core-1.3.8-py3-none-any.whl",
                "sha256": "0" * 64,
            },
            {
                "name": "omegaconf",
                "version": "2.3.1",
                "file": "omegaconf-2.3.1-py3-none-any.whl",
                "sha256": "0" * 64,
            },
            {"name": "antlr4-python3-runtime", "version": "4.9.3", "file": "x.whl", "built": True},
        ],
    }
    for name in (
        "hydra_core-1.3.8-py3-none-any.whl",
        "hydra_core-1.4.0rc3-py3-none-any.whl",
        "numpy-2.5.2-cp312-cp312-manylinux_2_28_x86_64.whl",
        "antlr4_python3_runtime-4.9.3-py3-none-any.whl",
        "resnet_repro-0.1.0-py3-none-any.whl",
    ):
        (tmp_path / name).write_bytes(b"wheel")
    problems = kit.wheel_problems(lock, tmp_path, {"numpy": "2.5.2"}, "3.12")
    assert sorted(problems) == sorted(
        [
            "hydra-core 1.4.0rc3 is a pre-release",
            "hydra-core: 2 versions (1.3.8, 1.4.0rc3): keep one",
            "numpy 2.5.2 is one of the node's own packages: leave it out",
            "hydra-core 1.4.0rc3: the lock pins 1.3.8",
            "numpy 2.5.2 is not in the lock",
            "omegaconf 2.3.1 (locked) has no wheel in " + str(tmp_path),
            "hydra_core-1.3.8-py3-none-any.whl: sha256 differs from the lock",
            "hydra_core-1.4.0rc3-py3-none-any.whl: the lock names hydra_core-1.3.8-py3-none-any.whl",
        ]
    )
    assert not any("sha256" in p for p in kit.wheel_problems(lock, tmp_path, {}, "3.11"))


def test_the_rehearsals_node_reaches_its_own_loopback_and_nothing_outside():
    """The device reaches nothing outside but its loopback works (torchrun's --standalone rendezvous
    is on localhost): a bare `unshare -n` has `lo` down and failed the DDP row where the device
    would not."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("`unshare -n` does not work here (needs root)")
    probe = (
        "import socket\n"
        "server = socket.create_server(('127.0.0.1', 0))\n"
        "socket.create_connection(server.getsockname(), timeout=5).close()\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 9), timeout=5)\n"  # TEST-NET-1: never routed
        "except OSError as e:\n"
        "    print('outside:', e.errno)\n"
        "else:\n"
        "    raise SystemExit('reached an outside address')\n"
    )
    proc = subprocess.run(
        [*rehearse_kit.no_network(), sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "outside:" in proc.stdout
