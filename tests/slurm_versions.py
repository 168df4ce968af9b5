"""The SLURM versions the real-cluster tests run on, and where each one's commands are.

- 22.05: Debian 12's `slurm-wlm` in /usr/bin and /usr/sbin (scripts/slurm/local_cluster.sh
  apt-installs it when missing).
- 25.11: SLURM 25.11.7 built for Debian 12 x86-64, an archive in the `shared/` folder beside the
  repository (REPO_ROOT.parent / "shared" / "slurm", see its README.md), extracted on first use into
  /opt/slurm-25.11: the build's prefix, which its binaries need (their RUNPATH, and the slurmstepd
  that slurmd starts, are that absolute path). The archive's sha256 is checked before extracting,
  and a folder already extracted (by this module: a marker file with the archive's sha256; or by
  hand, as the README says: `slurmctld -V` says 25.11.7) is used as it is.

    from slurm_versions import VERSIONS, slurm_dirs, path_for

    dirs, reason = slurm_dirs("25.11")   # (["/opt/slurm-25.11/bin", ...], None) or (None, why not)
    env["PATH"] = path_for("25.11", env["PATH"])

`unavailable_reason(version)` answers without extracting anything (cheap enough for collection
time, e.g. to mark a parametrized test skipped); `slurm_dirs` extracts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# CI clones the repository anywhere, with shared/ beside it
SHARED_SLURM = REPO_ROOT.parent / "shared" / "slurm"


@dataclass(frozen=True)
class Build:
    """A SLURM build shipped as an archive in shared/slurm/ (one top folder: the prefix's name)."""

    release: str  # what `slurmctld -V` prints after "slurm "
    archive: str
    sha256: str
    prefix: Path  # the build's --prefix: where it must be extracted

    @property
    def archive_path(self) -> Path:
        return SHARED_SLURM / self.archive

    @property
    def dirs(self) -> list[str]:
        return [str(self.prefix / "bin"), str(self.prefix / "sbin")]


SYSTEM_VERSION = "22.05"  # Debian 12's slurm-wlm
SYSTEM_DIRS = ["/usr/bin", "/usr/sbin"]
BUILDS = {
    "25.11": Build(
        release="25.11.7",
        archive="slurm-25.11.7-debian12-x86_64.tar.xz",
        sha256="d66b4fa9fd8bea868d7917db250e1c87ef182b96abc44ae1b800f8dc88ad19f3",
        prefix=Path("/opt/slurm-25.11"),
    )
}
VERSIONS = [SYSTEM_VERSION, *BUILDS]
MARKER = ".archive-sha256"  # in the prefix: the sha256 of the archive it was extracted from


def _release_of(build: Build) -> str | None:
    """What the extracted slurmctld says it is ("25.11.7"), None if it does not run."""
    try:
        out = subprocess.run(
            [str(build.prefix / "sbin" / "slurmctld"), "-V"], capture_output=True, text=True, timeout=30
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[1] if len(out) == 2 else None


def _extracted(build: Build) -> bool:
    marker = build.prefix / MARKER
    if marker.is_file():
        return marker.read_text().strip() == build.sha256
    return (build.prefix / "sbin" / "slurmctld").is_file() and _release_of(build) == build.release


def unavailable_reason(version: str) -> str | None:
    """Why `version` cannot run here (one line), or None; extracts nothing."""
    if version == SYSTEM_VERSION:
        return None  # local_cluster.sh installs slurm-wlm, or says why it cannot
    build = BUILDS.get(version)
    if build is None:
        return f"SLURM {version} is not one of the versions the tests know ({', '.join(VERSIONS)})"
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return f"the SLURM {version} archive is built for Linux x86-64"
    if _extracted(build):
        return None
    if not build.archive_path.is_file():
        return f"SLURM {version}: no {build.archive_path} (the shared/ folder beside the repository)"
    parent = build.prefix.parent
    if not (os.access(parent, os.W_OK) or (not parent.exists() and os.geteuid() == 0)):
        return f"SLURM {version} must be extracted into {build.prefix} (its build prefix), not writable here"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(build: Build) -> str | None:
    """Extract the archive into build.prefix unless it is there already; a reason if it fails."""
    parent = build.prefix.parent
    parent.mkdir(parents=True, exist_ok=True)
    # one extraction at a time (pytest-xdist workers, two test runs): the others wait and reuse it
    with open(parent / f".{build.prefix.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _extracted(build):
            return None
        actual = _sha256(build.archive_path)
        if actual != build.sha256:
            return f"SLURM archive {build.archive_path}: sha256 {actual}, expected {build.sha256}"
        if build.prefix.exists():
            if not (build.prefix / MARKER).is_file():  # not ours: leave it alone
                return f"{build.prefix} holds something other than SLURM {build.release}; move it away"
            shutil.rmtree(build.prefix)  # extracted by this module from another archive
        with tempfile.TemporaryDirectory(prefix=f".{build.prefix.name}.", dir=parent) as tmp:
            with tarfile.open(build.archive_path, "r:xz") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # Python < 3.11.4
                    tar.extractall(tmp)  # our own archive, checked by its sha256
            extracted = Path(tmp) / build.prefix.name
            if not (extracted / "sbin" / "slurmctld").is_file():
                return f"SLURM archive {build.archive_path} has no {build.prefix.name}/sbin/slurmctld"
            (extracted / MARKER).write_text(build.sha256 + "\n")
            extracted.rename(build.prefix)  # atomic: a folder is there whole or not at all
    if _release_of(build) != build.release:
        return f"{build.prefix}/sbin/slurmctld does not run here (missing libraries? needs munge's libmunge2)"
    return None


def slurm_dirs(version: str) -> tuple[list[str] | None, str | None]:
    """(the folders to put first on PATH for `version`'s commands and daemons, None), or (None, a
    one-line reason to skip); extracts the 25.11 archive on first use."""
    if version == SYSTEM_VERSION:
        return list(SYSTEM_DIRS), None
    reason = unavailable_reason(version)
    if reason:
        return None, reason
    build = BUILDS[version]
    try:
        reason = _extract(build)
    except (OSError, tarfile.TarError) as e:
        reason = f"SLURM {version}: extracting {build.archive_path} into {build.prefix} failed ({e})"
    return (None, reason) if reason else (build.dirs, None)


def path_for(version: str, path: str | None = None) -> str:
    """PATH (default: this process's) with `version`'s SLURM found first: the other builds' folders
    removed, this build's prepended. For the system's 22.05, /usr/bin and /usr/sbin are appended
    where missing rather than prepended, so that a virtual environment's bin stays first.
    Raises RuntimeError (with the reason) where the version cannot run; call slurm_dirs first to skip."""
    dirs, reason = slurm_dirs(version)
    if dirs is None:
        raise RuntimeError(reason)
    other = {d for build in BUILDS.values() for d in build.dirs}
    path = os.environ.get("PATH", "") if path is None else path
    kept = [d for d in path.split(os.pathsep) if d and d not in other]
    if version == SYSTEM_VERSION:
        return os.pathsep.join(kept + [d for d in dirs if d not in kept])
    return os.pathsep.join(dirs + kept)


if __name__ == "__main__":  # python tests/slurm_versions.py [VERSION...]: extract and show
    for v in sys.argv[1:] or VERSIONS:
        found, why = slurm_dirs(v)
        print(f"{v}: {os.pathsep.join(found) if found else 'skip: ' + str(why)}")
