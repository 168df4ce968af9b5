"""scripts/wheelhouse.sh and scripts/kit.py: wheels downloaded for a given Python, cut into one folder
of parts per device call, then installed with no index at all."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WHEELHOUSE = REPO / "scripts" / "wheelhouse.sh"
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"


def _sh(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(WHEELHOUSE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_hydra_wheels_download_with_antlr_built_and_install_without_an_index(tmp_path: Path):
    """Hydra's three wheels (hydra-core, omegaconf, and antlr4-python3-runtime, which PyPI has only
    as a source archive and the script builds) land in the wheelhouse; a fresh venv then installs
    them with PIP_NO_INDEX=1 and imports them. Needs PyPI for the download half."""
    house = tmp_path / "house"
    proc = _sh(
        str(house), "--python", PYVER, "--only", "hydra-core>=1.3,<1.4", "--python-bin", sys.executable
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = sorted(p.name for p in house.glob("*.whl"))
    for name in ("hydra_core-1.3", "omegaconf-2.3", "antlr4_python3_runtime-4.9"):
        assert any(w.startswith(name) for w in wheels), wheels
    assert not list(house.glob("*.tar.gz")), "only wheels in a wheelhouse"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    proc = _sh(
        "--install",
        str(house),
        "--python-bin",
        py,
        env={"PIP_NO_INDEX": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    check = subprocess.run(
        [py, "-c", "import hydra, omegaconf, antlr4; print(hydra.__version__, omegaconf.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("1.3")


def test_wheelhouse_without_a_folder_says_what_it_needs():
    proc = _sh()
    assert proc.returncode == 2 and "give the wheelhouse folder" in proc.stderr


def _tiny_wheel(folder: Path, name: str, payload: bytes = b"") -> Path:
    """A valid pure-Python wheel of package `name` (version 1.0) built by hand: no build, no network."""
    dist = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{name}/payload.bin": payload,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
        for path, data in {**files, f"{dist}/RECORD": "\n".join(record).encode() + b"\n"}.items():
            z.writestr(path, data)
    return wheel


def _pack(house: Path, kit: Path, sample: Path | None, limit: str = "1M", tree_bytes: int = 100_000):
    """scripts/kit.py plan, as `wheelhouse.sh --pack` runs it, with tmp_path as the checkout."""
    root = house.parent
    args = [*map(str, sorted(house.glob("*.whl"))), "--kit", str(kit), "--plan", str(root / "plan.json")]
    args += ["--limit", limit, "--tree-bytes", str(tree_bytes), "--root", str(root)]
    if sample is not None and sample.is_dir():
        args += ["--sample", str(sample)]
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "kit.py"), "plan", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _walk_bytes(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def test_plan_cuts_the_wheels_into_call_folders_each_within_the_limit_with_the_sample_unpacked(
    tmp_path: Path,
):
    """Three 0.6 MiB wheels and a 0.2 MiB sample folder at a 1 MiB limit per call (0.1 MB of tree):
    as few calls as hold them, each call's carried paths plus the tree within the limit (measured
    by walking them, not from the plan's numbers), at most 8 paths, the sample a plain folder in the
    last call, whose command installs and runs scripts/gpu_check.sh; the parts join back byte for
    byte, and `verify` names the call whose part is gone."""
    house, sample = tmp_path / "house", tmp_path / "gpu_kit" / "imagenet-sample"
    house.mkdir()
    (sample / "train" / "n01").mkdir(parents=True)
    (sample / "train" / "n01" / "a.JPEG").write_bytes(os.urandom(200 * 2**10))
    wheels = [_tiny_wheel(house, name, os.urandom(600 * 2**10)) for name in ("kitone", "kittwo", "kitthree")]
    kit = tmp_path / "gpu_kit" / "parts"
    proc = _pack(house, kit, sample)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    total = sum(w.stat().st_size for w in wheels) + _walk_bytes(sample)
    room = 2**20 - 100_000 - 256 * 2**10  # the limit, less the tree and the manifest's allowance
    assert len(plan["calls"]) == -(-total // room) == 3
    for call in plan["calls"]:
        measured = 100_000 + sum(_walk_bytes(tmp_path / c) for c in call["carry"])
        assert measured == call["bytes"] <= 2**20
        assert len(call["carry"]) <= 8
    last = plan["calls"][-1]
    assert "gpu_kit/imagenet-sample" in last["carry"] and (sample / "train" / "n01" / "a.JPEG").is_file()
    assert "scripts/gpu_check.sh --kit gpu_kit/parts" in last["command"]
    assert all("gpu_kit/parts/manifest.json" in c["carry"] for c in plan["calls"])
    assert plan["problems"] == []

    sys.path.insert(0, str(REPO / "scripts"))
    import kit as kitmod

    manifest = json.loads((kit / "manifest.json").read_text())
    joined = tmp_path / "joined"
    joined.mkdir()
    for entry, wheel in zip(manifest["files"], sorted(wheels), strict=True):
        out, why = kitmod.join(kit, entry, joined)
        assert out is not None and out.read_bytes() == wheel.read_bytes(), why
    assert kitmod.verify(kit, []) == 0
    next((kit / "call2").iterdir()).unlink()
    assert kitmod.verify(kit, ["call1"]) == 0
    assert kitmod.verify(kit, ["call1", "call2"]) == 1


@pytest.mark.slow
def test_install_with_one_wheels_parts_removed_installs_the_others_and_reports_the_missing_one(
    tmp_path: Path,
):
    """Each package is joined and installed on its own (pip --no-index --no-deps) into the running
    environment of a throwaway venv: the two whole wheels install and import, the one whose parts
    were removed is reported missing (exit code 1, one line each, and in the JSON report)."""
    house = tmp_path / "house"
    house.mkdir()
    for name in ("kitalpha", "kitbeta", "kitgamma"):
        _tiny_wheel(house, name, os.urandom(2**20 + 100))  # two parts each at 1M
    kit = tmp_path / "kit"
    assert _pack(house, kit, None, limit="2M").returncode == 0
    for part in kit.glob("call*/kitbeta-*.part*"):
        part.unlink()
    venv = tmp_path / "venv"
    # no pip of its own (fast to make): the base interpreter's pip installs into this venv's prefix
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
        timeout=120,
    )
    py = str(venv / "bin" / "python")
    report = tmp_path / "install.json"
    proc = _sh("--install", str(kit), "--python-bin", py, "--report", str(report), env={"PIP_NO_INDEX": "1"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = {r["name"]: r["result"] for r in json.loads(report.read_text())["packages"]}
    assert results == {"kitalpha": "installed", "kitbeta": "missing", "kitgamma": "installed"}
    assert (
        "kit: missing   kitbeta 1.0 (missing part(s) call1/kitbeta-1.0-py3-none-any.whl.part000"
        in proc.stdout
    )
    assert "not installed: kitbeta (missing)" in proc.stderr
    check = subprocess.run(
        [py, "-c", "import kitalpha, kitgamma, sys; print(kitalpha.__file__)"], capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout.startswith(str(venv)), check.stderr
