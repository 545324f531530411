#!/usr/bin/env bash
# Every GPU figure the issues ask for, in three device calls of under 10 minutes each. Prepare once here:
#     bash scripts/device_wheels.sh           # zarr, dask, ... as wheels in .whl/ (the GPU image lacks them)
# then, with the `device` tool (carry [".whl"]), one call per stage:
#     bash benchmarks/gpu_campaign.sh physics     # CUDA fused tests; launch-config sweep; fused grid with checks;
#                                                 # baselines and train steps
#     bash benchmarks/gpu_campaign.sh training    # bf16 vs fp32 twin skill; 1/2/4 packed trials on one GPU
#     bash benchmarks/gpu_campaign.sh predict     # prediction of 1,000 and 10,000 basins x 30 years
# Results and logs land in $OUT (default ./gpu-results); copy the JSON into benchmarks/results/ and commit.
# Each step has its own time limit, so a slow step cannot cost the figures of the others.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: gpu_campaign.sh physics|training|predict}
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, report the exit status
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  tail -n 25 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"

case $stage in
  physics)
    step fused_tests 100 "$PY" -m pytest -q -x tests/test_fused.py tests/test_compiled.py
    step fused_tuning 120 "$PY" benchmarks/bench_physics.py --impl fused --sizes 2048x730 --no-train \
      --tune 2048x730 --tune-blocks 64,128,256 --tune-stages 1,2,3,4 --min-time 0.2 \
      --out "$OUT/physics_cuda_tuning.json"
    step physics_fused 200 "$PY" benchmarks/bench_physics.py --impl fused --no-train \
      --out "$OUT/physics_cuda_fused_grid.json"
    step physics_baselines 170 "$PY" benchmarks/bench_physics.py --impl eager,compiled,fused \
      --sizes 256x365,2048x730 --train-size 2048x730 --out "$OUT/physics_cuda_baselines.json"
    ;;
  training)
    step precision 300 "$PY" benchmarks/bench_precision.py --device cuda --out "$OUT/precision_cuda.json"
    step ensemble_packing 250 "$PY" benchmarks/bench_ensemble.py --mode gpu --basins 512 --years 12 --epochs 3 \
      --output "$OUT/ensemble_gpu.json"
    ;;
  predict)
    step predict 540 "$PY" benchmarks/bench_predict.py --device cuda --physics auto --basins 1000 10000 \
      --chunk-basins 256 --threads 4 --work /tmp --out "$OUT/predict_cuda.json"
    ;;
  *)
    echo "unknown stage '$stage' (physics | training | predict)" >&2
    exit 2
    ;;
esac
ls -l "$OUT"
