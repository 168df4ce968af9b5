"""The wheelhouse kit for an air-gapped GPU node: files split into numbered parts of a chosen size with
a manifest of sha256 checksums, and an install that checks, joins and installs each package on its own.

    python3 scripts/kit.py pack FILE... --kit KIT --split 60M
        Each FILE (wheels, the project's and the sample's archives) becomes KIT/<name>.partNNN
        pieces of at most the split size, and KIT/manifest.json lists every file's size, sha256 and
        parts (each with its own sha256). A file smaller than the split size is one part.
    python3 scripts/kit.py install KIT [--python PY] [--report FILE] [--upgrade]
        For every wheel of the manifest (or every *.whl of a plain wheelhouse folder): check that
        its parts are all there with the right checksums, join them, check the whole file, and
        install it alone (`PY -m pip install --no-index --no-deps WHEEL`) into PY's own environment,
        never into a folder on PYTHONPATH (the `nvidia` namespace holds both DALI and the CUDA wheels
        torch uses: a second `nvidia/` folder on PYTHONPATH hides one of them). A package PY already
        has is kept (its CUDA build of torch, its numpy) unless --upgrade. One line per package
        (installed, kept, missing, corrupt, failed) and a JSON report; exit code 1 if any failed.
    python3 scripts/kit.py join KIT --dest DIR
        Checks and joins the files that are not wheels (the project and sample archives) into DIR.

Standard library only: it runs on the node before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MANIFEST = "manifest.json"
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def parse_size(text: str) -> int:
    """'60M' -> 60 MiB (K, M, G: powers of 1024; a plain number: bytes)."""
    m = re.fullmatch(r"(\d+)([KMG]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not m or int(m.group(1)) == 0:
        raise SystemExit(f"kit: --split {text!r}: expected a positive size such as 60M, 512K or 1000000")
    return int(m.group(1)) * UNITS[m.group(2).upper()]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pack(files: list[Path], kit: Path, part_size: int) -> dict:
    kit.mkdir(parents=True, exist_ok=True)
    entries = []
    for path in files:
        if not path.is_file():
            raise SystemExit(f"kit: {path} is not a file")
        parts = []
        with open(path, "rb") as f:
            for i, chunk in enumerate(iter(lambda: f.read(part_size), b"")):
                name = f"{path.name}.part{i:03d}"
                (kit / name).write_bytes(chunk)
                parts.append({"name": name, "size": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
        entries.append(
            {"name": path.name, "size": path.stat().st_size, "sha256": sha256(path), "parts": parts}
        )
    manifest = {"part_size": part_size, "files": entries}
    (kit / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def join(kit: Path, entry: dict, dest: Path) -> tuple[Path | None, str]:
    """(the joined file, "") or (None, why it cannot be joined)."""
    missing = [p["name"] for p in entry["parts"] if not (kit / p["name"]).is_file()]
    if missing:
        return None, f"missing part(s) {', '.join(missing)}"
    bad = [p["name"] for p in entry["parts"] if sha256(kit / p["name"]) != p["sha256"]]
    if bad:
        return None, f"checksum mismatch in {', '.join(bad)}"
    out = dest / entry["name"]
    with open(out, "wb") as f:
        for p in entry["parts"]:
            with open(kit / p["name"], "rb") as part:
                shutil.copyfileobj(part, f)
    if sha256(out) != entry["sha256"]:
        return None, "the joined file's checksum differs from the manifest"
    return out, ""


def wheel_name_version(filename: str) -> tuple[str, str]:
    """('hydra-core', '1.3.2') from 'hydra_core-1.3.2-py3-none-any.whl' (PEP 427 / 503 names)."""
    name, version = filename.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def installed_versions(python: str) -> dict[str, str]:
    code = (
        "import json, re, importlib.metadata as m\n"
        "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version"
        " for d in m.distributions() if d.metadata['Name']}))"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def install(kit: Path, python: str, report_path: Path | None, upgrade: bool) -> int:
    manifest_path = kit / MANIFEST
    if manifest_path.is_file():
        entries = json.loads(manifest_path.read_text())["files"]
    else:  # a plain wheelhouse folder: each wheel is its own single part
        entries = [
            {"name": p.name, "sha256": sha256(p), "parts": [{"name": p.name, "sha256": sha256(p)}]}
            for p in sorted(kit.glob("*.whl"))
        ]
    wheels = [e for e in entries if e["name"].endswith(".whl")]
    have = installed_versions(python)
    results = []
    with tempfile.TemporaryDirectory(prefix="kit_") as tmp:
        for entry in wheels:
            name, version = wheel_name_version(entry["name"])
            row = {"name": name, "version": version, "file": entry["name"]}
            if name in have and not upgrade:
                row.update(result="kept", detail=f"{python} already has {name} {have[name]}")
            else:
                joined, why = join(kit, entry, Path(tmp))
                if joined is None:
                    row.update(result="missing" if why.startswith("missing") else "corrupt", detail=why)
                else:
                    proc = subprocess.run(
                        [python, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", str(joined)],
                        capture_output=True,
                        text=True,
                    )
                    last = (proc.stderr.strip().splitlines() or [""])[-1]
                    row.update(result="installed" if proc.returncode == 0 else "failed", detail=last[:300])
                    joined.unlink()
            results.append(row)
            print(
                f"kit: {row['result']:9s} {name} {version}" + (f" ({row['detail']})" if row["detail"] else "")
            )
    report = {"python": python, "kit": str(kit), "packages": results}
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=1) + "\n")
    failed = [r for r in results if r["result"] not in ("installed", "kept")]
    counts = {
        k: sum(r["result"] == k for r in results)
        for k in ("installed", "kept", "missing", "corrupt", "failed")
    }
    print("kit: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f" of {len(results)} wheels")
    if failed:
        print(
            "kit: not installed: " + ", ".join(f"{r['name']} ({r['result']})" for r in failed),
            file=sys.stderr,
        )
    return 1 if failed else 0


def join_rest(kit: Path, dest: Path) -> int:
    entries = json.loads((kit / MANIFEST).read_text())["files"]
    dest.mkdir(parents=True, exist_ok=True)
    status = 0
    for entry in (e for e in entries if not e["name"].endswith(".whl")):
        joined, why = join(kit, entry, dest)
        print(f"kit: {entry['name']}: " + (f"joined into {joined}" if joined else why))
        status |= joined is None
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack")
    a.add_argument("files", nargs="+", type=Path)
    a.add_argument("--kit", type=Path, required=True)
    a.add_argument("--split", default="60M")
    b = sub.add_parser("install")
    b.add_argument("kit", type=Path)
    b.add_argument("--python", default=sys.executable)
    b.add_argument("--report", type=Path)
    b.add_argument("--upgrade", action="store_true", help="reinstall packages the Python already has")
    c = sub.add_parser("join")
    c.add_argument("kit", type=Path)
    c.add_argument("--dest", type=Path, required=True)
    ns = p.parse_args(argv)
    if ns.command == "pack":
        manifest = pack(ns.files, ns.kit, parse_size(ns.split))
        parts = sum(len(e["parts"]) for e in manifest["files"])
        print(f"kit: {len(manifest['files'])} files in {parts} parts of at most {ns.split} in {ns.kit}")
        return 0
    if not ns.kit.is_dir():
        raise SystemExit(f"kit: {ns.kit} is not a folder (expected a kit with {MANIFEST}, or a wheelhouse)")
    if ns.command == "install":
        return install(ns.kit, ns.python, ns.report, ns.upgrade)
    return join_rest(ns.kit, ns.dest)


if __name__ == "__main__":
    raise SystemExit(main())
