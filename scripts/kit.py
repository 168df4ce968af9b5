"""The wheelhouse kit for an air-gapped GPU node: files split into numbered parts of a chosen size with
a manifest of sha256 checksums, and an install that checks, joins and installs each package on its own.

    python3 scripts/kit.py pack FILE... --kit KIT --split 60M
        Each FILE (wheels, or any other file) becomes KIT/<name>.partNNN
        pieces of at most the split size, and KIT/manifest.json lists every file's size, sha256 and
        parts (each with its own sha256). A file smaller than the split size is one part.
    python3 scripts/kit.py install KIT [--python PY] [--report FILE] [--upgrade]
        For every wheel of the manifest (or every *.whl of a plain wheelhouse folder): check that
        its parts (in KIT, or in KIT/callN/ for a planned kit) are all there with the right
        checksums, join them, check the whole file, and install it alone (`PY -m pip install
        --no-index --no-deps WHEEL`) into PY's own environment, never into a folder on PYTHONPATH
        (the `nvidia` namespace holds both DALI and the CUDA wheels torch uses: a second `nvidia/`
        folder on PYTHONPATH hides one of them). A package PY already has is kept (its CUDA build
        of torch, its numpy) unless --upgrade. One line per package (installed, kept, missing,
        corrupt, failed) and a JSON report; exit code 1 if any failed.
    python3 scripts/kit.py join KIT --dest DIR
        Checks and joins the files that are not wheels into DIR.

The GPU node's kit (scripts/wheelhouse.sh drives these; docs/install.md):
    python3 scripts/kit.py lock REPORT --node scripts/gpu_node_packages.txt --out scripts/gpu_kit.lock.json
        From one `pip install --dry-run --report` of the whole environment, the lock: every resolved
        package the node lacks (name, version, wheel file, sha256), and the node's own packages at
        the versions the resolver found compatible. Refuses a pre-release, two versions of one
        package, or a node package in the kit.
    python3 scripts/kit.py requirements LOCK [--built]
        The lock's wheels as pip requirement lines with their sha256 (--built: those built here from
        source, such as antlr4-python3-runtime, unhashed).
    python3 scripts/kit.py check-wheels LOCK DIR [--python 3.12]
        DIR holds exactly the lock's wheels (plus the project's): one version each, no pre-release,
        none of the node's; each sha256 as locked when DIR was downloaded for the lock's Python.
    python3 scripts/kit.py plan FILE... --kit KIT --plan PLAN [--sample DIR] [--limit 62M]
        Splits the files into KIT/callN/ folders, each at most --limit together with the tracked
        tree (`git ls-files`, or --tree-bytes), the sample in the last call, KIT/manifest.json, and
        PLAN: the device calls in order, each with `carry` (at most 8 paths), `bytes` (the tracked
        tree included, at most 64 MiB) and `command`; the last one installs and runs the check.
    python3 scripts/kit.py verify KIT [--dir callN ...]
        Checks that those folders' parts are there with the manifest's sha256.

Standard library only: it runs on the node before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MANIFEST = "manifest.json"
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
MiB = 2**20
# The device's limits (/work/.library/device/README.md): what one call may carry, and how many calls
# the kit may take (each call's transfer and start count against the 15 device minutes).
DEVICE_CALL_BYTES = 64 * MiB  # the tracked tree + untracked files + carried paths, per call
PLAN_CALL_BYTES = 62 * MiB  # what the plan fills a call to: 2 MiB left for untracked files
MAX_CARRY = 8  # carried paths per call
MAX_CALLS = 5
MAX_FILES_BACK = 8  # files back from $OUT
MANIFEST_ALLOWANCE = 256 * 2**10  # bytes set aside in every call for the manifest it carries


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


def _part_path(kit: Path, part: dict) -> Path:
    """A part lies in KIT, or in KIT/<dir> when the plan put it in one call's folder."""
    return kit / part.get("dir", "") / part["name"]


def _where(part: dict) -> str:
    return f"{part['dir']}/{part['name']}" if part.get("dir") else part["name"]


def join(kit: Path, entry: dict, dest: Path) -> tuple[Path | None, str]:
    """(the joined file, "") or (None, why it cannot be joined)."""
    missing = [_where(p) for p in entry["parts"] if not _part_path(kit, p).is_file()]
    if missing:
        return None, f"missing part(s) {', '.join(missing)}"
    bad = [_where(p) for p in entry["parts"] if sha256(_part_path(kit, p)) != p["sha256"]]
    if bad:
        return None, f"checksum mismatch in {', '.join(bad)}"
    out = dest / entry["name"]
    with open(out, "wb") as f:
        for p in entry["parts"]:
            with open(_part_path(kit, p), "rb") as part:
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


# ---- the lock: one resolve of the whole environment, minus the node's own packages -----------------

PRE_RELEASE = re.compile(r"(a|b|c|rc|alpha|beta|pre|preview|dev)\.?\d*")


def normalize(name: str) -> str:
    """PEP 503: 'Hydra_Core' -> 'hydra-core'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_prerelease(version: str) -> bool:
    """PEP 440 pre- and dev-releases ('1.4.0rc3', '2.0.0.dev7', '1.0b1'); the local part ('+cu130')
    and post-releases do not count."""
    return bool(PRE_RELEASE.search(version.split("+", 1)[0].lower()))


def read_node_packages(path: Path) -> dict[str, str | None]:
    """scripts/gpu_node_packages.txt: {name: version or None}, one NAME or NAME==VERSION a line."""
    node: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            node[normalize(name)] = version.strip() or None
    return node


def pin_problems(kit: list[tuple[str, str]], node: dict[str, str | None]) -> list[str]:
    """What makes a kit (name, version pairs) unfit: a pre-release, two versions of one package, or
    one of the node's own packages (the node keeps its copy; a second one would replace it)."""
    problems = []
    seen: dict[str, list[str]] = {}
    for name, version in kit:
        seen.setdefault(normalize(name), []).append(version)
        if is_prerelease(version):
            problems.append(f"{name} {version} is a pre-release")
    for name, versions in seen.items():
        if len(versions) > 1:
            problems.append(f"{name}: {len(versions)} versions ({', '.join(versions)}): keep one")
        if name in node:
            problems.append(f"{name} {versions[0]} is one of the node's own packages: leave it out")
    return problems


def lock_from_report(report: dict, node: dict[str, str | None]) -> tuple[dict, list[str]]:
    """(the lock, its problems) from pip's --report of one resolve of the whole environment."""
    kit, node_pins = [], []
    for item in report["install"]:
        meta, info = item["metadata"], item["download_info"]
        name, version = normalize(meta["name"]), meta["version"]
        if name in node:
            node_pins.append({"name": name, "version": version})
            continue
        entry = {"name": name, "version": version, "file": info["url"].rsplit("/", 1)[-1]}
        digest = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        if info["url"].startswith(("http://", "https://")) and digest:
            entry.update(sha256=digest, url=info["url"])
        else:  # a wheel built here from a source archive (antlr4-python3-runtime): no wheel to hash
            entry["built"] = True
        kit.append(entry)
    problems = pin_problems([(e["name"], e["version"]) for e in kit + node_pins], {})
    problems += pin_problems([(e["name"], e["version"]) for e in kit], node)
    for pin in node_pins:
        want = node[pin["name"]]
        if want and pin["version"].split("+")[0] != want.split("+")[0]:
            problems.append(f"{pin['name']}: resolved {pin['version']}, the node has {want}")
    lock = {
        "python": report.get("environment", {}).get("python_version"),
        "pip": report.get("pip_version"),
        "kit": sorted(kit, key=lambda e: e["name"]),
        "node": sorted(node_pins, key=lambda e: e["name"]),
    }
    return lock, sorted(set(problems))


def lock_requirements(lock: dict, built: bool) -> list[str]:
    """pip requirement lines: the downloadable wheels with their sha256, or the ones built here."""
    if built:
        return [f"{e['name']}=={e['version']}" for e in lock["kit"] if e.get("built")]
    return [
        f"{e['name']}=={e['version']} --hash=sha256:{e['sha256']}" for e in lock["kit"] if not e.get("built")
    ]


def wheel_problems(lock: dict, folder: Path, node: dict[str, str | None], python: str | None) -> list[str]:
    """The wheel folder against the lock: exactly its packages at its versions (and the project's
    own wheel), checked by pin_problems; each sha256 as locked when downloaded for the lock's Python."""
    wheels = sorted(folder.glob("*.whl"))
    pins = [wheel_name_version(w.name) for w in wheels]
    problems = pin_problems(pins, node)
    locked = {e["name"]: e for e in lock["kit"]}
    have = {n: v for n, v in pins}
    for name, version in pins:
        if name == "resnet-repro":
            continue
        if name not in locked:
            problems.append(f"{name} {version} is not in the lock")
        elif version != locked[name]["version"]:
            problems.append(f"{name} {version}: the lock pins {locked[name]['version']}")
    problems += [
        f"{n} {e['version']} (locked) has no wheel in {folder}" for n, e in locked.items() if n not in have
    ]
    if python == lock.get("python"):
        for w in wheels:
            entry = locked.get(wheel_name_version(w.name)[0], {})
            if entry.get("sha256") and entry["file"] == w.name and sha256(w) != entry["sha256"]:
                problems.append(f"{w.name}: sha256 differs from the lock")
            elif entry.get("sha256") and entry["file"] != w.name:
                problems.append(f"{w.name}: the lock names {entry['file']}")
    return problems


# ---- the call plan: parts in one folder per device call ---------------------------------------------


def tree_bytes(root: Path) -> int:
    """Bytes of the tracked tree (`git ls-files`), which travels with every call."""
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    return sum(
        (root / p).stat().st_size for p in proc.stdout.decode().split("\0") if p and (root / p).is_file()
    )


def path_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def layout(
    sizes: list[tuple[str, int]], sample_bytes: int, tree: int, limit: int = PLAN_CALL_BYTES
) -> list[list[tuple[str, int, int]]]:
    """Each call's parts as (file, offset, length): the files, in order, cut into as few calls as
    hold them, each call at most `limit` with the tree and the manifest; the last also carries the
    sample (a folder, never cut)."""
    room = limit - tree - MANIFEST_ALLOWANCE
    if sample_bytes > room:
        raise SystemExit(
            f"kit: the sample ({sample_bytes / MiB:.1f} MiB) and the tracked tree ({tree / MiB:.1f} MiB) "
            f"do not fit one call of {limit / MiB:.0f} MiB: use a smaller sample"
        )
    total = sum(size for _, size in sizes)
    n = max(1, -(-(total + sample_bytes) // room))
    capacity = [room] * (n - 1) + [room - sample_bytes]
    calls: list[list[tuple[str, int, int]]] = [[] for _ in range(n)]
    i, free = 0, capacity[0]
    for name, size in sizes:
        offset = 0
        while offset < size:
            if free == 0:
                i, free = i + 1, capacity[i + 1]
            length = min(size - offset, free)
            calls[i].append((name, offset, length))
            offset, free = offset + length, free - length
    return calls


def plan_problems(plan: dict) -> list[str]:
    """The plan against the device's limits (calls, carried paths and bytes per call)."""
    calls = plan["calls"]
    problems = [f"{len(calls)} calls, more than {MAX_CALLS}"] if len(calls) > MAX_CALLS else []
    for c in calls:
        if len(c["carry"]) > MAX_CARRY:
            problems.append(f"call {c['call']} carries {len(c['carry'])} paths, more than {MAX_CARRY}")
        if c["bytes"] > DEVICE_CALL_BYTES:
            problems.append(
                f"call {c['call']}: {c['bytes'] / MiB:.2f} MiB, over {DEVICE_CALL_BYTES // MiB} MiB"
            )
        if len(c["command"]) > 2000:
            problems.append(f"call {c['call']}: its command is {len(c['command'])} characters, over 2000")
    if calls and "scripts/gpu_check.sh" not in calls[-1]["command"]:
        problems.append("the last call does not run scripts/gpu_check.sh")
    return problems


def make_plan(
    files: list[Path],
    kit: Path,
    plan_path: Path,
    sample: Path | None,
    tree: int,
    limit: int = PLAN_CALL_BYTES,
    root: Path | None = None,
) -> dict:
    """Writes KIT/callN/ parts, KIT/manifest.json and PLAN (see the module's docstring)."""
    root = (root or Path.cwd()).resolve()
    kit = kit.resolve()
    rel = lambda p: Path(os.path.relpath(p.resolve(), root)).as_posix()  # noqa: E731
    if rel(kit).startswith("..") or (sample is not None and rel(sample).startswith("..")):
        raise SystemExit(f"kit: the kit and the sample must lie inside {root}: they travel with the tree")
    if kit.exists():
        shutil.rmtree(kit)
    kit.mkdir(parents=True)
    by_name = {f.name: f for f in files}
    sample_bytes = path_bytes(sample) if sample is not None else 0
    calls = layout([(f.name, f.stat().st_size) for f in files], sample_bytes, tree, limit)
    entries: dict[str, dict] = {
        f.name: {"name": f.name, "size": f.stat().st_size, "sha256": sha256(f), "parts": []} for f in files
    }
    for i, parts in enumerate(calls, start=1):
        folder = kit / f"call{i}"
        folder.mkdir()
        for name, offset, length in parts:
            entry = entries[name]
            part_name = f"{name}.part{len(entry['parts']):03d}"
            with open(by_name[name], "rb") as f:
                f.seek(offset)
                chunk = f.read(length)
            (folder / part_name).write_bytes(chunk)
            entry["parts"].append(
                {
                    "name": part_name,
                    "dir": folder.name,
                    "size": length,
                    "sha256": hashlib.sha256(chunk).hexdigest(),
                }
            )
    manifest = kit / MANIFEST
    manifest.write_text(json.dumps({"files": list(entries.values())}, indent=1) + "\n")
    assert manifest.stat().st_size <= MANIFEST_ALLOWANCE, "the manifest outgrew its allowance"
    plan_calls = []
    for i in range(1, len(calls) + 1):
        carry = [rel(kit / f"call{i}"), rel(manifest)]
        if i < len(calls):
            dirs = " ".join(f"call{j}" for j in range(1, i + 1))
            command = f"python3 scripts/kit.py verify {rel(kit)} --dir {dirs}"
            timeout = 120
        else:
            if sample is not None:
                carry.append(rel(sample))
            command = (
                f"python3 scripts/kit.py verify {rel(kit)} && PYTHON=python3 bash scripts/gpu_check.sh "
                f'--kit {rel(kit)} ${{GPU_CHECK_ARGS:-}} "$OUT"'
            )
            timeout = 600
        size = tree + sum(path_bytes(root / c) for c in carry)
        plan_calls.append(
            {"call": i, "carry": carry, "bytes": size, "command": command, "timeout_s": timeout}
        )
    plan = {
        "device_limits": {
            "call_bytes": DEVICE_CALL_BYTES,
            "carry_paths": MAX_CARRY,
            "calls": MAX_CALLS,
            "files_back": MAX_FILES_BACK,
        },
        "plan_call_bytes": limit,
        "tree_bytes": tree,
        "kit": rel(kit),
        "sample": rel(sample) if sample is not None else None,
        "files": [{"name": e["name"], "size": e["size"]} for e in entries.values()],
        "calls": plan_calls,
    }
    plan["problems"] = plan_problems(plan)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan, indent=1) + "\n")
    return plan


def verify(kit: Path, dirs: list[str]) -> int:
    """Checks the manifest's parts that lie in `dirs` (all when empty): present, sha256 as listed."""
    entries = json.loads((kit / MANIFEST).read_text())["files"]
    parts = [p for e in entries for p in e["parts"] if not dirs or p.get("dir", "") in dirs]
    present = [p for p in parts if _part_path(kit, p).is_file()]
    missing = [_where(p) for p in parts if not _part_path(kit, p).is_file()]
    bad = [_where(p) for p in present if sha256(_part_path(kit, p)) != p["sha256"]]
    folders = sorted({p.get("dir", "") for p in parts})
    size = sum(p["size"] for p in parts)
    if missing or bad:
        lost = sorted({m.split("/")[0] for m in missing})
        print(
            f"kit: verify {kit}: {len(missing)} part(s) missing (from {', '.join(lost) or '-'}: the machine "
            f"was given back between calls? rerun those calls), {len(bad)} corrupt: {', '.join(bad) or '-'}",
            file=sys.stderr,
        )
        return 1
    print(
        f"kit: verify {kit}: {len(parts)} parts, {size / MiB:.1f} MiB in {', '.join(folders)}: "
        "all present, sha256 ok"
    )
    return 0


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
    d = sub.add_parser("lock")
    d.add_argument("report", type=Path, help="pip install --dry-run --report's JSON")
    d.add_argument("--node", type=Path, required=True, help="the node's packages (gpu_node_packages.txt)")
    d.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("requirements")
    e.add_argument("lock", type=Path)
    e.add_argument("--built", action="store_true")
    f = sub.add_parser("check-wheels")
    f.add_argument("lock", type=Path)
    f.add_argument("folder", type=Path)
    f.add_argument("--node", type=Path, required=True)
    f.add_argument(
        "--python", help="the Python the wheels were downloaded for (sha256 checked if the lock's)"
    )
    g = sub.add_parser("plan")
    g.add_argument("files", nargs="+", type=Path)
    g.add_argument("--kit", type=Path, required=True)
    g.add_argument("--plan", type=Path, required=True)
    g.add_argument("--sample", type=Path)
    g.add_argument("--limit", default="62M", help="a call's bytes with the tracked tree (device: 64M)")
    g.add_argument("--tree-bytes", type=int, help="the tracked tree's size (default: git ls-files in --root)")
    g.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout that travels (default: here)")
    h = sub.add_parser("verify")
    h.add_argument("kit", type=Path)
    h.add_argument("--dir", nargs="*", default=[], help="only these call folders (callN)")
    ns = p.parse_args(argv)
    if ns.command == "lock":
        lock, problems = lock_from_report(json.loads(ns.report.read_text()), read_node_packages(ns.node))
        for line in problems:
            print(f"kit: lock: {line}", file=sys.stderr)
        if problems:
            return 1
        ns.out.write_text(json.dumps(lock, indent=1) + "\n")
        print(
            f"kit: {ns.out}: {len(lock['kit'])} packages for the kit, {len(lock['node'])} kept from the node"
        )
        return 0
    if ns.command == "requirements":
        print("\n".join(lock_requirements(json.loads(ns.lock.read_text()), ns.built)))
        return 0
    if ns.command == "check-wheels":
        lock = json.loads(ns.lock.read_text())
        problems = wheel_problems(lock, ns.folder, read_node_packages(ns.node), ns.python)
        for line in problems:
            print(f"kit: {ns.folder}: {line}", file=sys.stderr)
        n = len(list(ns.folder.glob("*.whl")))
        print(
            f"kit: {ns.folder}: {n} wheels, "
            + ("as locked" if not problems else f"{len(problems)} problem(s)")
        )
        return 1 if problems else 0
    if ns.command == "plan":
        if ns.sample is not None and not ns.sample.is_dir():
            raise SystemExit(f"kit: no sample folder {ns.sample} (make gpu-kit copies it)")
        tree = ns.tree_bytes if ns.tree_bytes is not None else tree_bytes(ns.root)
        plan = make_plan(ns.files, ns.kit, ns.plan, ns.sample, tree, parse_size(ns.limit), ns.root)
        for c in plan["calls"]:
            print(f"kit: call {c['call']}: {c['bytes'] / MiB:6.2f} MiB, carry {' '.join(c['carry'])}")
        for line in plan["problems"]:
            print(f"kit: plan: {line}", file=sys.stderr)
        return 1 if plan["problems"] else 0
    if ns.command == "verify":
        return verify(ns.kit, ns.dir)
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
