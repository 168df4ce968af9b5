#!/usr/bin/env bash
# One prepared GPU check (under 8 minutes on one H100): the tests marked `gpu`, then ResNet-50
# `bench model` at batch 256 in fp32 / bf16 / bf16+channels_last / +compile, as one table, and the
# runner-vs-bare-loop overhead in bf16 + channels_last. The gpu tests include the host-sync audit.
# Works on a machine with torch but without DALI or Hydra: it says what it skipped.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
for mod in nvidia.dali hydra omegaconf pytest; do
  if "$PY" -c "import $mod" 2>/dev/null; then echo "have $mod"; else echo "no $mod: what needs it is skipped"; fi
done

echo "== gpu tests"
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt" | tail -15
else
  echo "skipped: pytest is not installed"
fi

echo "== bench model"
timeout 330 "$PY" scripts/gpu_bench.py --batch-size 256 --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.txt" | tail -12
