#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (docs/gpu.md). Parts, in order; name some to run only those:
#   step     bench/gpu_bench.py: the training step before and after (sync, bf16, compile, CUDA graphs)
#   ddp      bench/gpu_ddp_check.py: NCCL DDP with SyncBatchNorm on one card
#   dag      the color64 DAG through Ray Train on 1 GPU, tracked in MLflow (SQLite), a model registered,
#            its Tune campaign's 4 trials sharing the GPU (tune.gpus_per_trial 0.25), then the same
#            campaign at one trial per GPU for trials per hour
#   ray      bench/trainer_bench.py --gpu: Ray Train on 1 GPU against the bare loop on the same card
#   quality  bench/quality.py on color64 (the recipes table; long, not in the default set)
# usage (device run, carrying .gpukit):  bash bench/gpu_check.sh [step] [ddp] [dag] [ray] [quality]
# Default: step ddp dag ray. Each part runs under the timeout given below (not yet run on a GPU). Every
# part writes JSON and a log under $OUT, and a part that fails does not stop the next. The machine has
# PyTorch but not Ray, MLflow or pydantic: .gpukit/site.tar.xz (built by ../shared/tools/gpu-kit.sh)
# carries them; .whl/ (pydantic wheels) is enough for step and ddp.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
parts=${*:-step ddp dag ray}
if [ -f .gpukit/site.tar.xz ]; then
  mkdir -p /tmp/site && tar -xJf .gpukit/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD || exit 1
elif [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
python3 -c "import ray, mlflow, pydantic; print('ray', ray.__version__, 'mlflow', mlflow.__version__)" \
  || echo "no Ray or MLflow here: the dag and ray parts need .gpukit (../shared/tools/gpu-kit.sh)"

timed() {  # timed NAME LIMIT_S COMMAND...: run, log, and record the seconds and status in $OUT/parts.txt
  local name=$1 limit=$2 start status
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
  status=$?
  echo "$name: exit $status in $(( $(date +%s) - start )) s" | tee -a "$OUT/parts.txt"
}

W=$(mktemp -d /tmp/gpu-dag.XXXX)
dag_sets=(--set "work_dir=$W/outputs" --set "tracking.uri=sqlite:///$W/mlflow.db"
          --set "tracking.artifact_root=$W/mlartifacts" --set "train.num_workers=1" --set "tune.num_samples=1")
for part in $parts; do
  case $part in
    step) timed step 300 python3 -m bench.gpu_bench --out "$OUT/gpu_step.json" --time-limit-s 230 ;;
    ddp) timed ddp 120 python3 -m bench.gpu_ddp_check --out "$OUT/gpu_ddp_check.json" ;;
    dag)
      timed dag 300 python3 -m pipeline run --config configs/color64-gpu.yaml "${dag_sets[@]}" \
        --set tune.gpus_per_trial=0.25 --set tune.max_concurrent_trials=4
      timed tune_one_per_gpu 180 python3 -m pipeline run --config configs/color64-gpu.yaml "${dag_sets[@]}" \
        --set tune.gpus_per_trial=1 --set tune.max_concurrent_trials=4 --only tune
      python3 - "$OUT" <<'PY'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
def stage_seconds(log, stage):
    found = re.findall(rf"\] {stage}: done in ([0-9.]+)s", (out / log).read_text()) if (out / log).exists() else []
    return float(found[-1]) if found else None
def trials(log):
    found = re.findall(r"tune: (\d+) trials", (out / log).read_text()) if (out / log).exists() else []
    return int(found[-1]) if found else None
runs = {"gpus_per_trial_0.25": "dag.log", "gpus_per_trial_1": "tune_one_per_gpu.log"}
seconds = {k: stage_seconds(log, "tune") for k, log in runs.items()}
summary = {"tune_seconds": seconds, "trials": {k: trials(log) for k, log in runs.items()},
           "trials_per_hour": {k: round(3600 * trials(log) / seconds[k], 1) if seconds[k] and trials(log) else None
                               for k, log in runs.items()},
           "registered": re.findall(r"promote: (\S+ v\d+ -> [^;]+)", (out / "dag.log").read_text())
                         if (out / "dag.log").exists() else []}
(out / "gpu_tune_packing.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary))
PY
      ;;
    ray) timed ray 240 python3 -m bench.trainer_bench --gpu --modes bare,ray_train_1 --out "$OUT/gpu_trainer.json" ;;
    quality)
      # The document's widths: the default recipe over 3 seeds first, then naive; a spent budget skips the rest.
      timed quality "${QUALITY_TIMEOUT_S:-330}" python3 -m bench.quality --data color64-gpu --device cuda \
        --threads "$(nproc)" --recipes default,naive --seeds 0,1,2 --budgets 1,3 \
        --time-budget-s "${QUALITY_BUDGET_S:-200}" --grids "$OUT/quality_grids" \
        --set evaluate.robustness_eps=[0.05] --set evaluate.pgd_steps=3 --out "$OUT/quality_color64_gpu.json" ;;
    *) echo "unknown part '$part': choose from step ddp dag ray quality" ;;
  esac
done
cp -r "$W/outputs/reports" "$OUT/" 2>/dev/null || true
cat "$OUT/parts.txt"
