#!/usr/bin/env bash
# The GPU acceptance run, judged: rows in the order the mission needs them (environment and
# `pip check`, with what the kit installed; DALI "mixed" vs CPU decode agreement on the real sample;
# ResNet-50 bf16 channels_last training img/s with DALI and data wait, and again with the non-finite
# check's per-step host sync off; the training peak memory vs rehearse's estimate; compiled
# training; 1-process DDP/NCCL torchrun; the statistics pass on the GPU; then the host-sync audit,
# pipeline memory, odd images, multi-pass evaluation, bench model and a CLI train + eval). Every row
# has goals (data) and `met`. Exit 0: status met, every row ran and met its goals; 1: missed, a
# goal missed or a row failed; 3: incomplete, nothing missed but a row skipped (the device, a
# module, --quick, --rows, the budget): a skipped row is never a pass. 2: a usage error or no CUDA.
# The runner is scripts/gpu_check.py; the rows themselves live in scripts/gpu_rows*.py.
#
# Usage: OUT=DIR bash scripts/gpu_check.sh [--device cuda|cpu] [--quick] [--budget-s 540]
#            [--goal NAME=VALUE]... [--sample DIR] [--rows 1,3] [--kit DIR] [OUT_DIR]
#   Leaves three files in OUT_DIR (default gpu_check_out): gpu_check.json, gpu_check.txt (this log)
#     and gpu_check_logs.tar.gz (the rows' own logs); runs and checkpoints go to a temporary folder.
#   --budget-s: the check's time, counted after the kit's install (default: gpu_check.py's, the
#     first five rows' estimates on an H100); rows that no longer fit are skipped and named.
#   --goal train_img_per_s=1e9: replace a goal's value (scripts/gpu_check.py --list-goals lists them).
#   --device cpu: every row that can run on a CPU (toy sizes), the GPU-only rows skipped with why.
#   --kit DIR (or WHEELHOUSE=DIR): first install, without network, each package of a kit that
#     scripts/wheelhouse.sh built (parts joined and checked) into this machine's own Python, keeping
#     its torch; what was installed goes into the environment row. See docs/install.md.
#   PYTHON=...: the interpreter (default: .venv/bin/python when present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
ARGS=()
OUT="${OUT:-gpu_check_out}"
KIT="${WHEELHOUSE:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device|--sample|--rows|--goal|--budget-s) ARGS+=("$1" "$2"); shift 2 ;;
    --kit) KIT="$2"; shift 2 ;;
    --quick) ARGS+=("$1"); shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
    *) OUT="$1"; shift ;;
  esac
done
mkdir -p "$OUT"
LOG="$OUT/gpu_check.txt"
: > "$LOG"
PY="${PYTHON:-python3}"
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_sh.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

if [ -n "$KIT" ]; then
  echo "== install from the kit $KIT (no network)" | tee -a "$LOG"
  bash scripts/wheelhouse.sh --install "$KIT" --python-bin "$PY" --report "$SCRATCH/install.json" 2>&1 | tee -a "$LOG" | tail -20
  ARGS+=(--install-report "$SCRATCH/install.json")
fi

{
  echo "== machine"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} 2>&1 | tee -a "$LOG"
"$PY" scripts/gpu_check.py --out "$OUT" "${ARGS[@]}" 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
