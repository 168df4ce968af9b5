#!/usr/bin/env bash
# The kit for an air-gapped GPU node: the packages the node lacks, resolved once and pinned in
# scripts/gpu_kit.lock.json, downloaded on a machine with network, cut into one folder of parts per
# device call with a plan of the calls, and installed on the node each package on its own, offline.
#
#   bash scripts/wheelhouse.sh --lock [--python 3.12] [--index-url URL]
#       Resolves the whole environment once (pyproject.toml's dependencies and pytest; pip's resolver
#       in a Python X.Y, `pip install --dry-run --report`, binary wheels for manylinux x86_64, no
#       pre-release) with the node's known versions held (scripts/gpu_node_packages.txt), and writes
#       scripts/gpu_kit.lock.json: each package the node lacks with its version, wheel and sha256,
#       and the node's packages at the versions found compatible. torch and torchvision are the
#       node's and stay out of the resolve. antlr4-python3-runtime (PyPI has only a source archive
#       of the version Hydra 1.3 pins) is built here first. Needs network.
#
#   bash scripts/wheelhouse.sh DIR [--python 3.12] [--only "REQ ..."] [--index-url URL]
#       Downloads the lock's wheels (sha256 checked when X.Y is the lock's Python; another X.Y, as
#       the offline rehearsal uses, gets the same versions) into DIR, builds the ones marked built
#       and the project's own wheel, then checks DIR against the lock (kit.py check-wheels: one
#       version each, no pre-release, none of the node's). --only: these requirements instead, in
#       one resolve, no project wheel and no lock check.
#
#   bash scripts/wheelhouse.sh --pack DIR --kit KIT --plan PLAN [--sample DIR] [--limit 62M]
#       Cuts every wheel of DIR into KIT/callN/ folders of parts, each call at most --limit with the
#       tracked tree, the sample (a plain folder, carried as it is) in the last call, with
#       KIT/manifest.json (sha256 of every file and part) and PLAN, the device calls in order: what
#       each carries, its bytes and its command (kit.py plan). `make gpu-kit` runs all of this.
#
#   bash scripts/wheelhouse.sh --install KIT [--python-bin PY] [--report FILE] [--upgrade]
#       For each wheel of KIT (a planned kit, a packed kit, or a plain wheelhouse folder): checks its
#       parts, joins them and installs it alone (pip install --no-index --no-deps) into PY's own
#       environment (default: .venv/bin/python when present, else python3), keeping the packages PY
#       already has (its torch and CUDA wheels) unless --upgrade; one line per package, a JSON report
#       (FILE), exit code 1 if any package is missing, corrupt or failed. Never into a folder on
#       PYTHONPATH: DALI and the CUDA wheels torch uses share the `nvidia` namespace package, and a
#       second `nvidia/` folder on PYTHONPATH hides one of them.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=download DIR="" PYVER=3.12 ONLY="" PY="" KIT="" PLAN="" LIMIT=62M INDEX=https://pypi.org/simple
SAMPLE="" REPORT="" UPGRADE=()
LOCK=scripts/gpu_kit.lock.json NODE=scripts/gpu_node_packages.txt
while [ $# -gt 0 ]; do
  case "$1" in
    --lock) MODE=lock; shift ;;
    --install) MODE=install; DIR="$2"; shift 2 ;;
    --pack) MODE=pack; DIR="$2"; shift 2 ;;
    --kit) KIT="$2"; shift 2 ;;
    --plan) PLAN="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    --sample) SAMPLE="$2"; shift 2 ;;
    --report) REPORT="$2"; shift 2 ;;
    --upgrade) UPGRADE=(--upgrade); shift ;;
    --python) PYVER="$2"; shift 2 ;;
    --python-bin) PY="$2"; shift 2 ;;
    --index-url) INDEX="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    -*) echo "wheelhouse.sh: unknown option $1" >&2; exit 2 ;;
    *) DIR="$1"; shift ;;
  esac
done
[ -n "$DIR" ] || [ "$MODE" = lock ] || { echo "wheelhouse.sh: give the wheelhouse folder (see --help)" >&2; exit 2; }
if [ -z "$PY" ]; then
  PY=python3
  [ -x .venv/bin/python ] && PY=.venv/bin/python
fi

if [ "$MODE" = install ]; then
  exec "$PY" scripts/kit.py install "$DIR" --python "$PY" ${REPORT:+--report "$REPORT"} "${UPGRADE[@]}"
fi

if [ "$MODE" = pack ]; then
  [ -n "$KIT" ] && [ -n "$PLAN" ] || { echo "wheelhouse.sh: --pack needs --kit FOLDER and --plan FILE" >&2; exit 2; }
  ls "$DIR"/*.whl >/dev/null 2>&1 || { echo "wheelhouse.sh: no wheels in $DIR" >&2; exit 2; }
  exec "$PY" scripts/kit.py plan "$DIR"/*.whl --kit "$KIT" --plan "$PLAN" ${SAMPLE:+--sample "$SAMPLE"} --limit "$LIMIT"
fi

# pip as it is here, minus this machine's own configuration (local mirrors, find-links, caps)
PIP_COMMON=(--isolated --disable-pip-version-check --index-url "$INDEX")
PLATFORMS=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}")
for tag in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 \
           manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  PLATFORMS+=(--platform "$tag")
done
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT

if [ "$MODE" = lock ]; then
  # The resolver runs in a Python X.Y itself, so that environment markers are X.Y's
  RES=""
  for cand in "python$PYVER" "$HOME"/.pyenv/versions/"$PYVER"*/bin/python; do
    if "$cand" -c 'import sys' >/dev/null 2>&1; then RES="$cand"; break; fi  # (a pyenv shim may not run)
  done
  [ -n "$RES" ] || { echo "wheelhouse.sh: --lock needs a python$PYVER here to resolve for it" >&2; exit 2; }
  "$PY" - "$STAGE" "$NODE" <<'PYEOF'
import re, sys
stage, node = sys.argv[1:]
text = open("pyproject.toml").read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
skip = {"torch", "torchvision", "triton"}  # the node's build (+cu130) is not on PyPI: never resolved
name = lambda r: re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower()
reqs = [r for r in re.findall(r'"([^"]+)"', block) + ["pytest>=7.4"] if name(r) not in skip]
pins = [l.split("#")[0].strip() for l in open(node)]
open(f"{stage}/requirements.txt", "w").write("\n".join(reqs) + "\n")
open(f"{stage}/constraints.txt", "w").write("\n".join(p for p in pins if "==" in p and name(p) not in skip) + "\n")
PYEOF
  echo "wheelhouse: resolving $(wc -l < "$STAGE/requirements.txt") requirements for CPython $PYVER with $RES"
  "$RES" -m pip wheel "${PIP_COMMON[@]}" --quiet --no-deps --wheel-dir "$STAGE/built" "antlr4-python3-runtime==4.9.*"
  "$RES" -m pip install "${PIP_COMMON[@]}" --quiet --dry-run --target "$STAGE/target" --report "$STAGE/report.json" \
    "${PLATFORMS[@]}" --find-links "$STAGE/built" -r "$STAGE/requirements.txt" -c "$STAGE/constraints.txt"
  exec "$PY" scripts/kit.py lock "$STAGE/report.json" --node "$NODE" --out "$LOCK"
fi

mkdir -p "$DIR"
if [ -n "$ONLY" ]; then
  printf '%s\n' $ONLY > "$STAGE/only.txt"
  echo "wheelhouse: $(wc -l < "$STAGE/only.txt") requirements in one resolve for CPython $PYVER -> $DIR"
  "$PY" -m pip wheel "${PIP_COMMON[@]}" --quiet --no-deps --wheel-dir "$DIR" "antlr4-python3-runtime==4.9.*"
  "$PY" -m pip download "${PIP_COMMON[@]}" --quiet "${PLATFORMS[@]}" --find-links "$DIR" --dest "$DIR" -r "$STAGE/only.txt"
  echo "wheelhouse: $(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR"
  exit 0
fi

LOCKPY="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["python"])' "$LOCK")"
"$PY" scripts/kit.py requirements "$LOCK" > "$STAGE/wheels.txt"
"$PY" scripts/kit.py requirements "$LOCK" --built > "$STAGE/built.txt"
if [ "$PYVER" != "$LOCKPY" ]; then  # other files than the locked ones: same versions, no sha256
  sed -i 's/ --hash=.*//' "$STAGE/wheels.txt"
  echo "wheelhouse: CPython $PYVER is not the lock's $LOCKPY: the same versions, sha256 not checked" >&2
fi
echo "wheelhouse: $(wc -l < "$STAGE/wheels.txt") locked wheels (+ $(wc -l < "$STAGE/built.txt") built) for CPython $PYVER -> $DIR"
"$PY" -m pip download "${PIP_COMMON[@]}" --quiet --no-deps "${PLATFORMS[@]}" --dest "$DIR" -r "$STAGE/wheels.txt"
if [ -s "$STAGE/built.txt" ]; then
  "$PY" -m pip wheel "${PIP_COMMON[@]}" --quiet --no-deps --wheel-dir "$DIR" -r "$STAGE/built.txt"
fi
rm -f "$DIR"/resnet_repro-*.whl
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$DIR" .  # the project (pure Python)
echo "wheelhouse: $(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR"
exec "$PY" scripts/kit.py check-wheels "$LOCK" "$DIR" --node "$NODE" --python "$PYVER"
