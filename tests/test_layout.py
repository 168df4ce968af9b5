"""The package's layout shows its architecture: subpackages by concern, the import flow of
docs/architecture.md checked by import-linter (the contracts in pyproject.toml), no import cycles,
a short top level, and a module map that names every module."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "resnet_repro"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
TOP_LEVEL_LIMIT = 8  # modules beside the subpackages
LINES_LIMIT = 650  # "about 600 lines" a module at most


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess:
    """`lint-imports` over the package found in `root`, with the contracts of `root`/pyproject.toml."""
    if not LINT_IMPORTS.exists():
        pytest.skip(f"lint-imports is not installed beside {sys.executable} (pip install -e '.[dev]')")
    args = [str(LINT_IMPORTS), "--no-cache"]
    for contract in contracts:
        args += ["--contract", contract]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def copy_of_package(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "resnet_repro", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(module: Path, line: str) -> None:
    module.write_text(module.read_text() + f"\n{line}  # noqa: E402, F401\n")


def test_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"Contracts: 3 kept, 0 broken", result.stdout), result.stdout[-2000:]


@pytest.mark.parametrize(
    "module, line, contract, named",
    [
        # the bottom layer reaching up to the command line
        ("config/__init__.py", "from resnet_repro import cli", "layers", "resnet_repro.config"),
        # families that must not know each other: models and data, reporting and training
        ("models/resnet.py", "from resnet_repro.data import splits", "layers", "resnet_repro.models"),
        ("reporting/seeds.py", "from resnet_repro.training import loop", "layers", "resnet_repro.reporting"),
        # a phase of the run importing the run's table of contents
        ("training/loop.py", "from resnet_repro.training import train", "training", "training.loop"),
        # the cycle that once was: the statistics' selection and the mean image importing each other
        ("data/selection.py", "from resnet_repro.data import pixel_mean", "acyclic", "pixel_mean"),
    ],
)
def test_import_contracts_refuse_a_wrong_import(tmp_path, module, line, contract, named):
    """Each contract breaks on the import it exists to refuse: the checks are not vacuous."""
    root = copy_of_package(tmp_path)
    add_import(root / "resnet_repro" / module, line)
    result = lint_imports(root, contract)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "BROKEN" in result.stdout and named in result.stdout, result.stdout[-3000:]


def top_level_modules() -> list[str]:
    return sorted(p.name for p in PACKAGE.glob("*.py"))


def test_top_level_holds_few_modules_beside_the_subpackages():
    modules = top_level_modules()
    assert len(modules) <= TOP_LEVEL_LIMIT, modules
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    for family in ("commands", "training", "cluster", "evaluation", "reporting", "config", "data", "models"):
        assert family in subpackages, subpackages


def package_modules() -> list[str]:
    """Every module's path under resnet_repro/, as the module map writes it (`training/loop.py`);
    a subpackage's __init__.py counts only when it holds code."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" and len(path.read_text().strip().splitlines()) <= 3:
            continue
        found.append(rel)
    return found


def module_map() -> str:
    text = (REPO / "docs" / "architecture.md").read_text()
    start = text.index("## Modules")
    end = text.index("\n## ", start + 1)
    return "\n".join(line for line in text[start:end].splitlines() if line.startswith("|"))


def test_module_map_names_every_module_and_only_real_ones():
    table = module_map()
    named = set(re.findall(r"`([\w/]+\.py)`", table))
    missing = [m for m in package_modules() if m not in named]
    assert not missing, f"docs/architecture.md's module map lacks {missing}"
    stale = sorted(m for m in named if not (PACKAGE / m).is_file())
    assert not stale, f"docs/architecture.md's module map names modules that do not exist: {stale}"


def test_no_module_runs_far_past_six_hundred_lines():
    long = {
        p.relative_to(REPO).as_posix(): n
        for p in [*PACKAGE.rglob("*.py"), *(REPO / "scripts").glob("*.py")]
        if (n := len(p.read_text().splitlines())) > LINES_LIMIT
    }
    assert not long, f"modules over {LINES_LIMIT} lines (split them by job): {long}"
