#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (see docs/gpu.md): throughput, then the 64x64 RGB quality
# table, each writing JSON under $OUT. The machine has PyTorch but not this project's other dependencies:
# pydantic travels as wheels in .whl/ (Ray and MLflow are not needed by these two benchmarks).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

start=$(date +%s)
timeout 150 python3 -m bench.gpu_bench --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu_bench.log"
echo "gpu_bench: $(( $(date +%s) - start )) s"

# Robustness curves are not part of the quality table: one eps and 3 PGD steps keep CPU scoring short.
start=$(date +%s)
timeout "${QUALITY_TIMEOUT_S:-330}" python3 -m bench.quality --config configs/color64-gpu.yaml --device cuda \
  --threads "$(nproc)" --recipes default,naive,full,balanced --budgets 1,3 \
  --time-budget-s "${QUALITY_BUDGET_S:-200}" --set evaluate.robustness_eps=[0.05] --set evaluate.pgd_steps=3 \
  --out "$OUT/quality_color64.json" 2>&1 | tee "$OUT/quality.log"
echo "quality: $(( $(date +%s) - start )) s"
