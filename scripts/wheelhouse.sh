#!/usr/bin/env bash
# An offline install for air-gapped GPU nodes: download every wheel the project needs on a machine
# with network, carry the folder over, install from it with no network at all.
#
#   bash scripts/wheelhouse.sh DIR [--python 3.12] [--no-torch] [--only "PKG ..."]
#       Downloads wheels for CPython 3.12 (or --python X.Y) on manylinux x86_64 into DIR: the
#       dependencies of pyproject.toml (torch, DALI with its nvImageCodec / nvJPEG / nvCOMP wheels,
#       Hydra, ...), pytest, and setuptools (to install the project itself). Only binary wheels
#       (pip download --only-binary with --platform / --python-version), so the host's own Python
#       version does not matter; antlr4-python3-runtime, which has no wheel for the version Hydra
#       1.3 pins, is built into DIR first (pip wheel; pure Python, so it fits any Python 3).
#       --no-torch: leave out torch / torchvision (and their CUDA wheels): for a machine whose own
#       torch must be kept. --only: just these requirements and their dependencies.
#       --torch-index URL: also look there (pip --extra-index-url), e.g.
#       https://download.pytorch.org/whl/cu130 for a torch built for CUDA 13 like DALI's wheels.
#
#   bash scripts/wheelhouse.sh --install DIR [--python-bin PY] [--only "PKG ..."]
#       Installs from DIR without any network (pip install --no-index --find-links DIR) into PY's
#       environment (default: .venv/bin/python when present, else python3): the project's
#       dependencies, then the project itself (editable, no dependencies). Where PY already has a
#       torch, torch and torchvision are not reinstalled: that machine's own build is kept.
#       Install into the environment itself, not into a folder put on PYTHONPATH: DALI and the CUDA
#       wheels torch uses both live in the `nvidia` namespace package, and a second `nvidia/` folder
#       on PYTHONPATH shadows the environment's one, so either DALI or torch's CUDA libraries
#       disappear.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=download DIR="" PYVER=3.12 NO_TORCH=0 ONLY="" PY="" TORCH_INDEX=()
while [ $# -gt 0 ]; do
  case "$1" in
    --install) MODE=install; DIR="$2"; shift 2 ;;
    --python) PYVER="$2"; shift 2 ;;
    --python-bin) PY="$2"; shift 2 ;;
    --no-torch) NO_TORCH=1; shift ;;
    --torch-index) TORCH_INDEX=(--extra-index-url "$2"); shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    -*) echo "wheelhouse.sh: unknown option $1" >&2; exit 2 ;;
    *) DIR="$1"; shift ;;
  esac
done
[ -n "$DIR" ] || { echo "wheelhouse.sh: give the wheelhouse folder (see --help)" >&2; exit 2; }
if [ -z "$PY" ]; then
  PY=python3
  [ -x .venv/bin/python ] && PY=.venv/bin/python
fi

# The requirements: pyproject.toml's dependencies plus pytest, one per line (torch filtered on request)
requirements() {
  if [ -n "$ONLY" ]; then
    printf '%s\n' $ONLY
    return
  fi
  "$PY" - "$1" <<'EOF'
import re, sys
text = open("pyproject.toml").read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
reqs = re.findall(r'"([^"]+)"', block) + ["pytest>=7.4"]
for r in reqs:
    name = re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower()
    if sys.argv[1] == "1" and name in ("torch", "torchvision"):
        continue
    print(r)
EOF
}

if [ "$MODE" = download ]; then
  mkdir -p "$DIR"
  mapfile -t REQS < <(requirements "$NO_TORCH")
  echo "wheelhouse: ${#REQS[@]} requirements for CPython $PYVER manylinux x86_64 -> $DIR"
  # Hydra 1.3 needs antlr4-python3-runtime 4.9.*, published as a source archive only: build its wheel
  "$PY" -m pip wheel --no-deps --wheel-dir "$DIR" "antlr4-python3-runtime==4.9.*"
  ABI="cp${PYVER/./}"
  PLATFORMS=()
  for tag in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 \
             manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
    PLATFORMS+=(--platform "$tag")
  done
  EXTRA=()
  [ -z "$ONLY" ] && EXTRA=(setuptools wheel)
  "$PY" -m pip download --only-binary=:all: "${PLATFORMS[@]}" --python-version "$PYVER" \
    --implementation cp --abi "$ABI" --find-links "$DIR" "${TORCH_INDEX[@]}" --dest "$DIR" \
    "${REQS[@]}" "${EXTRA[@]}"
  echo "wheelhouse: $(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR"
  exit 0
fi

# install: no index, only the wheelhouse
KEEP_TORCH=0
"$PY" -c "import torch" 2>/dev/null && KEEP_TORCH=1
mapfile -t REQS < <(requirements "$KEEP_TORCH")
[ "$KEEP_TORCH" = 1 ] && echo "wheelhouse: keeping this Python's torch ($("$PY" -c 'import torch; print(torch.__version__)'))"
PIP_NO_INDEX=1 "$PY" -m pip install --no-index --find-links "$DIR" "${REQS[@]}"
if [ -z "$ONLY" ]; then
  PIP_NO_INDEX=1 "$PY" -m pip install --no-index --find-links "$DIR" --no-deps -e .
fi
echo "wheelhouse: installed into $("$PY" -c 'import sys; print(sys.prefix)')"
