"""The GPU kit's device calls, rehearsed here against a simulated node, with no network.

    python scripts/rehearse_kit.py [--work DIR] [--check-args "--device cpu --budget-s 300"]
        [--sample DIR] [--keep] [--plan-only] [--node-python PY]

1. The real plan (gpu_kit/plan.json, from `make gpu-kit`), when there is one, is measured against
   the device's limits by walking what would travel: the tracked tree (`git ls-files`), untracked
   files git does not ignore, and each carried path; at most 5 calls, 8 carried paths and 64 MiB
   each. This part needs no network and takes a second.
2. A checkout of the tracked tree in WORK/here (a git repository of its own) builds the same kit
   for the simulated node's Python: the lock's versions (scripts/gpu_kit.lock.json), the project's
   wheel, the sample, parts per call and a plan, by the same `scripts/wheelhouse.sh` commands that
   `make gpu-kit` runs. The lock is for the node's CPython 3.12; this machine's torch wheels are
   for 3.11, so the rehearsal kit holds the same versions' 3.11 wheels (sha256 then not checked
   against the lock). Downloading needs network (or pip's cache).
3. The simulated node: a fresh virtual environment of this machine's Python with only the node's
   packages (scripts/gpu_node_packages.txt) that .venv holds, hard-linked from .venv: torch 2.14.1
   here where the real node has 2.11.0+cu130 (and numpy, scipy, ... at .venv's versions). With
   `--node-python PY` they come from PY's environment instead: one made with
   `pip install torch==2.11.0 torchvision==0.26.0` and the project holds the node's torch.
4. Each call of that plan, in order, against WORK/node (the device's copy of the checkout): the
   tracked tree and the call's carried paths are copied in (earlier calls' ignored paths stay, as
   on the device while it stays warm), the bytes and paths that travel are checked against the
   limits, and the command runs under `unshare -n` with loopback up (nothing outside reachable, as
   on the device, whose torchrun rendezvous on localhost works), `python3` being the simulated
   node's, OUT an empty folder, GPU_CHECK_ARGS the --check-args. At most 8 files may come back.
5. After the last call (the install and `gpu_check.sh --device cpu`), in the node without network:
   `pip check`, and every kit package at its locked version.

Exit code 0 when every step passed, 1 otherwise; WORK/rehearsal.json holds each call's measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import kit  # noqa: E402

MiB = 2**20
FILE_BACK_BYTES = 16 * MiB
NAME_OK = re.compile(r"[A-Za-z0-9._-]+")


def git_files(root: Path, *args: str) -> list[str]:
    proc = subprocess.run(["git", "ls-files", "-z", *args], cwd=root, capture_output=True, check=True)
    return [p for p in proc.stdout.decode().split("\0") if p]


def travelling(root: Path, carry: list[str]) -> tuple[int, list[str]]:
    """(bytes, problems) of what one call sends: tracked files, untracked files git does not ignore,
    and the carried paths, measured here by walking them, not from the plan's own numbers."""
    files = set(git_files(root)) | set(git_files(root, "--others", "--exclude-standard"))
    size = sum((root / f).stat().st_size for f in files if (root / f).is_file())
    problems = []
    for c in carry:
        path = root / c
        if not path.exists():
            problems.append(f"carried path {c} does not exist")
            continue
        walk = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        size += sum(p.stat().st_size for p in walk)
    if len(carry) > kit.MAX_CARRY:
        problems.append(f"{len(carry)} carried paths, more than {kit.MAX_CARRY}")
    if size > kit.DEVICE_CALL_BYTES:
        problems.append(f"{size / MiB:.2f} MiB travel, over {kit.DEVICE_CALL_BYTES // MiB} MiB")
    return size, problems


def check_plan(root: Path, plan: dict) -> list[dict]:
    """Each call of the plan measured against the device's limits, from `root`."""
    rows = []
    for c in plan["calls"]:
        size, problems = travelling(root, c["carry"])
        if len(c["command"]) > 2000:
            problems.append(f"command of {len(c['command'])} characters, over 2000")
        rows.append({"call": c["call"], "bytes": size, "paths": len(c["carry"]), "problems": problems})
    if len(plan["calls"]) > kit.MAX_CALLS:
        rows.append({"call": None, "problems": [f"{len(plan['calls'])} calls, over {kit.MAX_CALLS}"]})
    return rows


def files_back(out: Path) -> list[str]:
    """What the device would refuse to send back from $OUT."""
    files = [p for p in out.rglob("*") if p.is_file()]
    problems = [f"{len(files)} files under $OUT, more than {kit.MAX_FILES_BACK}"] if len(files) > 8 else []
    for p in files:
        rel = p.relative_to(out)
        if len(rel.parts) > 3:
            problems.append(f"{rel}: deeper than 2 folders")
        if p.stat().st_size > FILE_BACK_BYTES:
            problems.append(f"{rel}: {p.stat().st_size / MiB:.1f} MiB, over 16 MiB")
        if not all(NAME_OK.fullmatch(part) for part in rel.parts):
            problems.append(f"{rel}: a name with other characters than letters, digits, '.', '_', '-'")
    return problems


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("rehearse: $ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, **kw)


def checkout(here: Path, sample: Path) -> None:
    """The checkout as it would travel (tracked files and untracked ones git does not ignore) in
    `here`, committed in a repository of its own, and the sample beside it."""
    here.mkdir(parents=True)
    for rel in git_files(REPO) + git_files(REPO, "--others", "--exclude-standard"):  # what travels
        src = REPO / rel
        if src.is_file():
            (here / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, here / rel)
    git = ["git", "-c", "user.name=rehearse", "-c", "user.email=rehearse@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=here, check=True)
    subprocess.run([*git, "add", "-A"], cwd=here, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "rehearsal checkout"], cwd=here, check=True)
    shutil.copytree(sample, here / "gpu_kit" / "imagenet-sample")


def site_packages(python: str) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(
        subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    )


def simulated_node(venv: Path, node: dict[str, str | None], source_py: Path) -> list[str]:
    """A fresh venv of `source_py`'s base Python holding only the node's packages that `source_py`'s
    environment has (files hard-linked from there, as listed in each distribution's RECORD).
    Returns their names and versions."""
    base = subprocess.run(
        [str(source_py), "-c", "import sys; print(sys._base_executable)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    src, dst = site_packages(str(source_py)), site_packages(str(venv / "bin" / "python"))
    import importlib.metadata as md

    taken = []
    for dist in md.distributions(path=[str(src)]):
        name = kit.normalize(dist.metadata["Name"] or "")
        if name not in node:
            continue
        for f in dist.files or []:
            rel = Path(str(f))
            if rel.parts and rel.parts[0] == "..":  # console scripts in bin/: not needed
                continue
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if (src / rel).is_file() and not target.exists():
                try:
                    os.link(src / rel, target)
                except OSError:
                    shutil.copy2(src / rel, target)
        taken.append(f"{name} {dist.version}")
    return sorted(taken)


def transfer(here: Path, node: Path, carry: list[str]) -> None:
    """The device's copy: the tracked tree and untracked files refreshed, each carried path replaced,
    other ignored paths (earlier calls' parts) kept."""
    for rel in git_files(here) + git_files(here, "--others", "--exclude-standard"):
        if (here / rel).is_file():
            (node / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(here / rel, node / rel)
    for c in carry:
        dst = node / c
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (here / c).is_dir() else shutil.copy2)(here / c, dst)


def node_env(venv: Path, out: Path, check_args: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PIP_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    venv_bin = venv / "bin"
    # `python3` is the simulated node's, first on PATH (the real node's python3 is its torch venv)
    env.update(
        PATH=f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}",
        OUT=str(out),
        GPU_CHECK_ARGS=check_args,
        PIP_CONFIG_FILE=os.devnull,  # none of this machine's pip configuration (local mirrors)
        PYTHONUNBUFFERED="1",
    )
    return env


def no_network() -> list[str]:
    """The prefix that runs a command as on the device: nothing outside reachable, loopback up.
    A bare `unshare -n` leaves `lo` down, where torchrun's --standalone rendezvous on localhost
    fails (the DDP row timed out after 120 s), which the device, whose loopback works, never sees."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        raise SystemExit(
            f"rehearse: `unshare -n` does not work here ({probe.stderr.decode().strip()}): needs root"
        )
    if shutil.which("ip") is None:
        raise SystemExit(
            "rehearse: no `ip` command to bring loopback up in the namespace (apt-get install iproute2)"
        )
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "no-network"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--work", type=Path, help="working folder (default: a temporary one, removed unless --keep)"
    )
    # every row a CPU can run (the DDP row among them: --quick would skip it), about 30 s here
    p.add_argument("--check-args", default="--device cpu --budget-s 300")
    p.add_argument("--sample", type=Path, help="default: gpu_kit/imagenet-sample, else ../shared/data/...")
    p.add_argument("--keep", action="store_true")
    p.add_argument(
        "--node-python",
        type=Path,
        default=REPO / ".venv" / "bin" / "python",
        help="the environment the simulated node's packages come from (default: .venv's); one with "
        "the node's torch 2.11.0 and torchvision 0.26.0 rehearses the node's versions",
    )
    p.add_argument("--plan-only", action="store_true", help="only step 1: the real plan against the limits")
    ns = p.parse_args(argv)
    summary: dict = {"problems": []}
    problems = summary["problems"]

    real_plan = REPO / "gpu_kit" / "plan.json"
    if real_plan.is_file():
        rows = check_plan(REPO, json.loads(real_plan.read_text()))
        summary["real_plan"] = rows
        for r in rows:
            problems += [f"real plan, call {r['call']}: {x}" for x in r["problems"]]
            if r["call"] is not None:
                print(f"rehearse: real plan call {r['call']}: {r['bytes'] / MiB:.2f} MiB, {r['paths']} paths")
    else:
        print("rehearse: no gpu_kit/plan.json here (make gpu-kit): the real plan is not measured")
    if ns.plan_only:
        print("rehearse: " + ("; ".join(problems) if problems else "the real plan fits the device"))
        return 1 if problems else 0

    sample = ns.sample or next(
        (
            s
            for s in (
                REPO / "gpu_kit" / "imagenet-sample",
                REPO.parent / "shared" / "data" / "imagenet-sample",
            )
            if (s / "train").is_dir()
        ),
        None,
    )
    if sample is None:
        raise SystemExit("rehearse: no sample (make gpu-kit, or --sample DIR)")
    unshare = no_network()
    work = ns.work or Path(tempfile.mkdtemp(prefix="rehearse_kit_"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"rehearse: {work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    here, node, venv = work / "here", work / "node", work / "node-venv"
    start = time.monotonic()
    try:
        checkout(here, sample)
        vpy = f"{sys.version_info.major}.{sys.version_info.minor}"
        py = str(REPO / ".venv" / "bin" / "python")
        for args in (
            ["gpu_kit/wheels", "--python", vpy, "--python-bin", py],
            [
                "--pack",
                "gpu_kit/wheels",
                "--kit",
                "gpu_kit/parts",
                "--sample",
                "gpu_kit/imagenet-sample",
                "--plan",
                "gpu_kit/plan.json",
                "--python-bin",
                py,
            ],
        ):
            proc = run(["bash", "scripts/wheelhouse.sh", *args], cwd=here)
            if proc.returncode != 0:
                problems.append(f"wheelhouse.sh {' '.join(args[:2])}: exit {proc.returncode}")
                raise RuntimeError
        plan = json.loads((here / "gpu_kit" / "plan.json").read_text())
        nodepk = kit.read_node_packages(REPO / "scripts" / "gpu_node_packages.txt")
        summary["simulated_node"] = simulated_node(venv, nodepk, ns.node_python)
        torch_there = next((p for p in summary["simulated_node"] if p.startswith("torch ")), "no torch")
        print(
            f"rehearse: simulated node: {len(summary['simulated_node'])} packages ({torch_there}) "
            f"hard-linked from {ns.node_python}'s environment"
        )
        node.mkdir()
        summary["calls"] = []
        measures = check_plan(here, plan)
        problems += [f"rehearsal plan: {x}" for r in measures if r["call"] is None for x in r["problems"]]
        for c, measured in zip(plan["calls"], measures[: len(plan["calls"])], strict=True):
            transfer(here, node, c["carry"])
            out = work / f"out{c['call']}"
            out.mkdir()
            t0 = time.monotonic()
            proc = run(
                [*unshare, "timeout", str(c["timeout_s"]), "bash", "-c", c["command"]],
                cwd=node,
                env=node_env(venv, out, ns.check_args),
            )
            row = {**measured, "rc": proc.returncode, "s": round(time.monotonic() - t0, 1)}
            row["problems"] = measured["problems"] + files_back(out)
            row["files_back"] = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
            last = c["call"] == len(plan["calls"])
            # the last call's gpu_check on a CPU is at best `incomplete` (3): its GPU rows are skipped
            if proc.returncode not in ((0, 3) if last else (0,)):
                row["problems"].append(f"exit {proc.returncode}")
            summary["calls"].append(row)
            problems += [f"call {c['call']}: {x}" for x in row["problems"]]
            print(
                f"rehearse: call {c['call']}: {row['bytes'] / MiB:.2f} MiB, {row['paths']} paths, "
                f"exit {proc.returncode}, {row['s']} s, {len(row['files_back'])} files back"
                + (f": {'; '.join(row['problems'])}" if row["problems"] else "")
            )
        env = node_env(venv, work / "out-after", "")
        nodepy = str(venv / "bin" / "python")
        check = run(
            [*unshare, nodepy, "-m", "pip", "check"], cwd=node, env=env, capture_output=True, text=True
        )
        summary["pip_check"] = (check.stdout + check.stderr).strip().splitlines()
        print("rehearse: pip check: " + " | ".join(summary["pip_check"]))
        if check.returncode != 0:
            problems.append("pip check failed in the simulated node: " + " | ".join(summary["pip_check"]))
        have = kit.installed_versions(nodepy)
        lock = json.loads((REPO / "scripts" / "gpu_kit.lock.json").read_text())
        wrong = [
            f"{e['name']} {have.get(e['name'], 'absent')} (locked {e['version']})"
            for e in lock["kit"]
            if have.get(e["name"]) != e["version"]
        ]
        if wrong:
            problems.append("not at the locked version in the node: " + ", ".join(wrong))
    except RuntimeError:
        pass
    finally:
        summary["seconds"] = round(time.monotonic() - start, 1)
        (work / "rehearsal.json").write_text(json.dumps(summary, indent=1) + "\n")
        if not ns.keep and ns.work is None and not problems:
            shutil.rmtree(work, ignore_errors=True)
    for line in problems:
        print(f"rehearse: PROBLEM {line}", file=sys.stderr)
    print(f"rehearse: {'passed' if not problems else 'FAILED'} in {summary['seconds']} s ({work})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
