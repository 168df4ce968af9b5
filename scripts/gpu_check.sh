#!/usr/bin/env bash
# The GPU acceptance run (under 8 minutes on one H100/H200; --quick under 3): environment; DALI
# "mixed" vs CPU decode (fancy upsampling off/on) with top-1 agreement of a fixed model; an odd-images
# batch; multi-pass exact evaluation; GPU vs CPU statistics; memory of train + 2 eval pipelines; the
# `gpu` tests with the host-sync audit; ResNet-50 `bench model` at batch 256 (fp32 / bf16 /
# bf16+channels_last / +compile); `bench train` with DALI mixed; a CLI train + eval of the demo; a
# 1-process NCCL torchrun. One table at the end, OUT_DIR/gpu_check.json; every row says measured,
# skipped (why) or failed (why). The rows themselves live in scripts/gpu_check.py.
#
# Usage: bash scripts/gpu_check.sh [--device cuda|cpu] [--quick] [--sample DIR] [OUT_DIR]
#   --device cpu: every row that can run on a CPU (toy sizes), the GPU-only rows skipped with why.
#   WHEELHOUSE=DIR: first install what is missing (DALI, Hydra, ...) from DIR without any network
#     (scripts/wheelhouse.sh builds it), into this machine's own Python, keeping its torch; see docs/install.md.
#   PYTHON=...: the interpreter (default: .venv/bin/python when present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
ARGS=()
OUT="${OUT:-gpu_check_out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device|--sample|--rows) ARGS+=("$1" "$2"); shift 2 ;;
    --quick) ARGS+=("$1"); shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
    *) OUT="$1"; shift ;;
  esac
done
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "${WHEELHOUSE:-}" ]; then
  echo "== install from $WHEELHOUSE (no network)"
  bash scripts/wheelhouse.sh --install "$WHEELHOUSE" --python-bin "$PY" 2>&1 | tee "$OUT/install.txt" | tail -5
fi

echo "== machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" scripts/gpu_check.py --out "$OUT" "${ARGS[@]}" 2>&1 | tee "$OUT/gpu_check.txt"
exit "${PIPESTATUS[0]}"
