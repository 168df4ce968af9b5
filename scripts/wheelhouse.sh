#!/usr/bin/env bash
# An offline install for air-gapped GPU nodes: download the wheels on a machine with network, pack
# them with the project and the JPEG sample into numbered parts that fit the transfer, and install
# each package on its own on the node, with no network at all.
#
#   bash scripts/wheelhouse.sh DIR [--python 3.12] [--no-torch] [--only "PKG ..."] [--torch-index URL]
#       Downloads, one requirement at a time (one that fails is reported, the others still come),
#       binary wheels for CPython 3.12 (or --python X.Y) on manylinux x86_64 into DIR: the
#       dependencies of pyproject.toml (DALI pinned there to its tested major version, with its
#       nvImageCodec / nvJPEG / nvCOMP wheels; Hydra, OmegaConf, submitit, the Hydra submitit
#       launcher, ...) and pytest; antlr4-python3-runtime, which has no wheel for the version Hydra
#       1.3 pins, is built first (pure Python, any Python 3); and the project itself as a wheel.
#       --no-torch: leave out torch / torchvision and their CUDA wheels (a node keeps its own).
#       --only: just these requirements and their dependencies (no project wheel).
#       --torch-index URL: also look there (pip --extra-index-url), e.g. a CUDA 13 torch index.
#
#   bash scripts/wheelhouse.sh --pack DIR --kit KIT [--split 60M] [--sample gpu_kit/imagenet-sample]
#       Splits every wheel of DIR, an archive of the project (its tracked files) and an archive of
#       the JPEG sample (when the folder exists) into KIT/<file>.partNNN of at most --split each, with
#       KIT/manifest.json (sizes, sha256 of every file and every part): scripts/kit.py pack.
#
#   bash scripts/wheelhouse.sh --install KIT [--python-bin PY] [--report FILE] [--upgrade]
#       For each wheel of KIT (a packed kit, or a plain wheelhouse folder): checks its parts, joins
#       them and installs it alone (pip install --no-index --no-deps) into PY's own environment
#       (default: .venv/bin/python when present, else python3), keeping the packages PY already has
#       (its torch and CUDA wheels) unless --upgrade; one line per package, a JSON report (FILE),
#       exit code 1 if any package is missing, corrupt or failed. Never into a folder on PYTHONPATH:
#       DALI and the CUDA wheels torch uses share the `nvidia` namespace package, and a second
#       `nvidia/` folder on PYTHONPATH hides one of them. `python3 scripts/kit.py join KIT --dest D`
#       joins the project and sample archives.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=download DIR="" PYVER=3.12 NO_TORCH=0 ONLY="" PY="" TORCH_INDEX=() KIT="" SPLIT=60M
SAMPLE=gpu_kit/imagenet-sample REPORT="" UPGRADE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --install) MODE=install; DIR="$2"; shift 2 ;;
    --pack) MODE=pack; DIR="$2"; shift 2 ;;
    --kit) KIT="$2"; shift 2 ;;
    --split) SPLIT="$2"; shift 2 ;;
    --sample) SAMPLE="$2"; shift 2 ;;
    --report) REPORT="$2"; shift 2 ;;
    --upgrade) UPGRADE=(--upgrade); shift ;;
    --python) PYVER="$2"; shift 2 ;;
    --python-bin) PY="$2"; shift 2 ;;
    --no-torch) NO_TORCH=1; shift ;;
    --torch-index) TORCH_INDEX=(--extra-index-url "$2"); shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    -*) echo "wheelhouse.sh: unknown option $1" >&2; exit 2 ;;
    *) DIR="$1"; shift ;;
  esac
done
[ -n "$DIR" ] || { echo "wheelhouse.sh: give the wheelhouse folder (see --help)" >&2; exit 2; }
if [ -z "$PY" ]; then
  PY=python3
  [ -x .venv/bin/python ] && PY=.venv/bin/python
fi

if [ "$MODE" = install ]; then
  exec "$PY" scripts/kit.py install "$DIR" --python "$PY" ${REPORT:+--report "$REPORT"} "${UPGRADE[@]}"
fi

if [ "$MODE" = pack ]; then
  [ -n "$KIT" ] || { echo "wheelhouse.sh: --pack needs --kit FOLDER for the parts" >&2; exit 2; }
  ls "$DIR"/*.whl >/dev/null 2>&1 || { echo "wheelhouse.sh: no wheels in $DIR" >&2; exit 2; }
  STAGE="$(mktemp -d)"
  trap 'rm -rf "$STAGE"' EXIT
  git ls-files -z | tar --null -czf "$STAGE/resnet-repro-project.tar.gz" -T -
  FILES=("$DIR"/*.whl "$STAGE/resnet-repro-project.tar.gz")
  if [ -d "$SAMPLE" ]; then
    tar -czf "$STAGE/imagenet-sample.tar.gz" -C "$(dirname "$SAMPLE")" "$(basename "$SAMPLE")"
    FILES+=("$STAGE/imagenet-sample.tar.gz")
  else
    echo "wheelhouse: no sample folder $SAMPLE (make gpu-kit copies it): packing without it" >&2
  fi
  exec "$PY" scripts/kit.py pack "${FILES[@]}" --kit "$KIT" --split "$SPLIT"
fi

# The requirements: pyproject.toml's dependencies plus pytest, one per line (torch filtered on request)
requirements() {
  if [ -n "$ONLY" ]; then
    printf '%s\n' $ONLY
    return
  fi
  "$PY" - "$1" <<'PYEOF'
import re, sys
text = open("pyproject.toml").read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
reqs = re.findall(r'"([^"]+)"', block) + ["pytest>=7.4"]
for r in reqs:
    name = re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower()
    if sys.argv[1] == "1" and name in ("torch", "torchvision"):
        continue
    print(r)
PYEOF
}

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
FAILED=()
for req in "${REQS[@]}"; do
  if ! "$PY" -m pip download --quiet --only-binary=:all: "${PLATFORMS[@]}" --python-version "$PYVER" \
      --implementation cp --abi "$ABI" --find-links "$DIR" "${TORCH_INDEX[@]}" --dest "$DIR" "$req"; then
    FAILED+=("$req")
  fi
done
if [ -z "$ONLY" ]; then  # the project itself, as a wheel (pure Python)
  "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$DIR" . || FAILED+=("resnet-repro (project wheel)")
fi
echo "wheelhouse: $(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "wheelhouse: could not download: ${FAILED[*]}" >&2
  exit 1
fi
