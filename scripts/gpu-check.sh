#!/usr/bin/env bash
# The GPU checks, in one call on the device machine (see BENCHMARKS.md):
# info (CUDA must be found), the benchmark for D at 224 and 32 in fp32 and
# bf16 (and channels-last off, to measure it), then VGG D trained on
# Fashion-MNIST to its end with the test accuracy. Expects the release
# binary at .device/vggtrain and the Fashion-MNIST .gz files in
# .device/fashion-mnist (scripts/gpu-prepare.sh puts them there).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.device/vggtrain
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
TORCH_LIB=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$BIN info | tee "$OUT/info.txt"
grep -q "CUDA available: yes" "$OUT/info.txt" || { echo "CUDA not found"; exit 1; }

bench() { # name, args...
  local name=$1; shift
  timeout 120 $BIN bench --device cuda --json "$@" > "$OUT/bench-$name.json" 2> "$OUT/bench-$name.err" \
    || echo "{\"failed\":\"$name\"}" > "$OUT/bench-$name.json"
  python3 - "$name" "$OUT/bench-$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
if "failed" in r:
    print(f"{sys.argv[1]:<26} FAILED"); sys.exit()
print(f"{sys.argv[1]:<26} compute {r['compute_images_per_sec']:>9.0f} img/s  {r['train_tflops']:>6.1f} TFLOP/s  "
      f"e2e {r['end_to_end_images_per_sec']:>9.0f} img/s  e2e/compute {r['end_to_end_over_compute']:.3f}  "
      f"data(mem) {r['data_memory_images_per_sec']:>9.0f}  gpu {r['peak_gpu_memory_mb'] or 0:.0f} MB")
PY
}
echo "== bench (name, compute-only, end-to-end, data-only)"
bench d224-bf16 --model D --input 224 --batch 128 --precision bf16 --steps 30
bench d224-bf16-nchw --model D --input 224 --batch 128 --precision bf16 --steps 30 --channels-last false
bench d224-fp32 --model D --input 224 --batch 128 --precision fp32 --steps 20
bench d32-bf16 --model D --input 32 --batch 256 --precision bf16 --steps 100
bench d32-bf16-nchw --model D --input 32 --batch 256 --precision bf16 --steps 100 --channels-last false
bench d32-fp32 --model D --input 32 --batch 256 --precision fp32 --steps 100

echo "== train VGG D (full width) on Fashion-MNIST"
rm -rf "$OUT/runs"
timeout ${TRAIN_TIMEOUT:-300} $BIN train --no-tui --model D --dataset fashion-mnist --data-dir .device/fashion-mnist \
  --device cuda --batch-size 128 --epochs ${EPOCHS:-30} --set train.precision='"bf16"' --set train.patience=2 \
  --set data.pca-lighting=0.0 --set run.checkpoint-every=0 --runs-dir "$OUT/runs" --name fmnist-d 2> "$OUT/train.log"
echo "train exit $?"
grep -E "^run |^epoch [0-9]+ \||^lr |^finished|^failed" "$OUT/train.log" | cut -c1-160
