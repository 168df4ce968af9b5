"""scripts/wheelhouse.sh: wheels downloaded for a given Python, then installed with no index at all."""

from __future__ import annotations

import os
import subprocess
import sys
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
        "--only",
        "hydra-core>=1.3,<1.4",
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
