"""scripts/wheelhouse.sh: wheels downloaded for a given Python, then installed with no index at all."""

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


def _pack(house: Path, kit: Path, sample: Path) -> subprocess.CompletedProcess:
    return _sh("--pack", str(house), "--kit", str(kit), "--split", "1M", "--sample", str(sample))


def test_pack_splits_wheels_project_and_sample_into_parts_of_at_most_the_split_size(tmp_path: Path):
    """A 2.5 MiB wheel becomes three parts of at most 1 MiB; the project and the sample travel as
    archives beside the wheels; every part and every joined file matches the manifest's sha256."""
    house, sample = tmp_path / "house", tmp_path / "imagenet-sample" / "train" / "n01"
    house.mkdir()
    sample.mkdir(parents=True)
    (sample / "a.JPEG").write_bytes(os.urandom(3000))
    _tiny_wheel(house, "kitbig", os.urandom(5 * 2**19))  # 2.5 MiB of incompressible bytes
    _tiny_wheel(house, "kitsmall")
    kit = tmp_path / "kit"
    proc = _pack(house, kit, sample.parents[1])
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((kit / "manifest.json").read_text())
    names = [e["name"] for e in manifest["files"]]
    assert names == [
        "kitbig-1.0-py3-none-any.whl",
        "kitsmall-1.0-py3-none-any.whl",
        "resnet-repro-project.tar.gz",
        "imagenet-sample.tar.gz",
    ]
    parts = sorted(p for p in kit.iterdir() if p.name != "manifest.json")
    assert parts and all(p.stat().st_size <= 2**20 for p in parts)
    assert len(manifest["files"][0]["parts"]) == 3
    for entry in manifest["files"]:
        for part in entry["parts"]:
            assert hashlib.sha256((kit / part["name"]).read_bytes()).hexdigest() == part["sha256"]
    joined = tmp_path / "joined"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "kit.py"), "join", str(kit), "--dest", str(joined)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p.name for p in joined.iterdir()} == {"resnet-repro-project.tar.gz", "imagenet-sample.tar.gz"}


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
    assert _pack(house, kit, tmp_path / "no-sample").returncode == 0
    for part in kit.glob("kitbeta-*.part*"):
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
    assert "kit: missing   kitbeta 1.0 (missing part(s) kitbeta-1.0-py3-none-any.whl.part000" in proc.stdout
    assert "not installed: kitbeta (missing)" in proc.stderr
    check = subprocess.run(
        [py, "-c", "import kitalpha, kitgamma, sys; print(kitalpha.__file__)"], capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout.startswith(str(venv)), check.stderr
