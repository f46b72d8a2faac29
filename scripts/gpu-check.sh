#!/usr/bin/env bash
# The GPU checks, in one call on the device machine (see BENCHMARKS.md), in
# about 6 minutes (BUDGET seconds, default 345):
# 1. info (CUDA must be found);
# 2. compute-only throughput of VGG D (full width, 10 classes) at 224 batch
#    128 and at 32 batch 256: vggtrain bf16 and fp16, vggtrain fp32 at 224,
#    PyTorch eager bf16 and torch.compile bf16 (channels-last, both from
#    benches/pytorch_vgg.py; compile with the fused SGD step);
# 3. a profiler trace of vggtrain D 224 bf16 (its top-ops table, the trace
#    in $OUT/trace.json.gz), then the variants that time allows (NCHW, fp32
#    at 32);
# 4. VGG D trained on Fashion-MNIST in bf16 (EPOCHS, default 25) with the
#    test accuracy;
# 5. the table of 2 again, and the count of libtorch warnings in vggtrain's
#    stderr (bench-*.err, train.log).
# Every command has its own timeout, capped by what is left of BUDGET after
# keeping TRAIN_RESERVE seconds (default 120) for the training; a step with
# under 15 s left is skipped and says so. Expects the release binary at
# .device/vggtrain and the Fashion-MNIST .gz files in .device/fashion-mnist
# (scripts/gpu-prepare.sh puts them there), and python3 with a CUDA torch.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BIN=.device/vggtrain
OUT=${OUT:-/tmp/gpu-check}
END=$((SECONDS + ${BUDGET:-345}))
TRAIN_RESERVE=${TRAIN_RESERVE:-120}
mkdir -p "$OUT"
rm -f "$OUT"/bench-* "$OUT"/pt-* "$OUT"/trace.* "$OUT"/train.log
TORCH_LIB=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 60 "$BIN" info | tee "$OUT/info.txt"
grep -q "CUDA available: yes" "$OUT/info.txt" || { echo "CUDA not found"; exit 1; }

# Seconds a step may take: CAP, or less when the training's reserve is near.
slot() { # cap
  local left=$((END - TRAIN_RESERVE - SECONDS))
  echo $((left < $1 ? left : $1))
}

# Writes {"failed": REASON} as NAME's result.
record() { # name, reason
  python3 -c 'import json,sys;print(json.dumps({"failed":sys.argv[1]}))' "$2" > "$OUT/$1.json"
}

# The rows of the table: NAME's results from $OUT/NAME.json (bench-*:
# vggtrain bench --json; pt-*: benches/pytorch_vgg.py).
table() { # names...
  python3 - "$OUT" "$@" <<'PY'
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]
def load(n):
    try:
        return json.load(open(os.path.join(out, n + ".json")))
    except (OSError, ValueError) as e:
        return {"failed": f"no result ({type(e).__name__})"}
def ips(r):
    return r.get("compute_images_per_sec", r.get("pytorch_images_per_sec"))
for n in names:
    r = load(n)
    label = n.removeprefix("bench-").removeprefix("pt-")
    label = ("vggtrain " if n.startswith("bench-") else "pytorch ") + label
    if "failed" in r:
        print(f"{label:<32} {r['failed'][:140]}")
        continue
    # against vggtrain bf16 on the same shape
    base = load("bench-d%d-bf16" % r["input"])
    rel = f"{ips(r) / ips(base):6.2f}x" if "failed" not in base else "     - "
    e2e = r.get("end_to_end_over_compute")
    e2e = f"e2e/compute {e2e:.3f}" if e2e is not None else ""
    # Both: the CUDA allocator's peak of allocated memory (the issue's goal's measure)
    mem = r.get("peak_gpu_memory_mb")
    mem = f"{mem:>7.0f}" if mem is not None else "      -"
    warm = f"warm-up {r['warmup_s']:.0f} s" if r.get("compile") else ""
    print(f"{label:<32} {ips(r):>9.0f} img/s {r['train_tflops']:>6.1f} TFLOP/s {rel} "
          f"{mem} MB GPU  {e2e}{warm}")
PY
}

# Runs one measurement under its timeout: stdout to $OUT/NAME.out (its last
# JSON line to $OUT/NAME.json), stderr to $OUT/NAME.err; prints its row.
measure() { # name, cap seconds, command...
  local name=$1 t rc
  t=$(slot "$2"); shift 2
  if ((t < 15)); then
    record "$name" "skipped: ${t} s left before the training's reserve"
  else
    timeout -k 10 "$t" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    rc=$?
    grep '^{' "$OUT/$name.out" | tail -n 1 > "$OUT/$name.json"
    if ((rc == 124 || rc == 137)); then
      record "$name" "timeout after ${t} s"
    elif ((rc != 0)) || [ ! -s "$OUT/$name.json" ]; then
      record "$name" "exit $rc: $(grep -v '^[[:space:]]*$' "$OUT/$name.err" | tail -n 1 | cut -c1-120)"
    fi
  fi
  table "$name"
}
# The same, only when the full CAP fits (the variants that may be trimmed).
measure_if_time() { # name, cap seconds, command...
  if (($(slot "$2") < $2)); then
    record "$1" "skipped: not enough time left"
    table "$1"
  else
    measure "$@"
  fi
}

vgg() { # name, cap, args...: vggtrain bench
  local name=$1 cap=$2; shift 2
  measure "bench-$name" "$cap" "$BIN" bench --device cuda --json "$@"
}
pt() { # name, cap, args...: benches/pytorch_vgg.py, full-width D
  local name=$1 cap=$2; shift 2
  measure "pt-$name" "$cap" python3 benches/pytorch_vgg.py --device cuda --model D --width 1 --classes 10 "$@"
}
D224=(--model D --input 224 --batch 128)
D32=(--model D --input 32 --batch 256)

echo "== bench VGG D: compute only (img/s, TFLOP/s, against vggtrain bf16 of the same shape,"
echo "   peak GPU memory: the CUDA allocator's peak allocated, for both)"
vgg d224-bf16 45 "${D224[@]}" --precision bf16 --steps 40
vgg d224-fp16 45 "${D224[@]}" --precision fp16 --steps 40
vgg d32-bf16 40 "${D32[@]}" --precision bf16 --steps 200
vgg d32-fp16 40 "${D32[@]}" --precision fp16 --steps 200
vgg d224-fp32 45 "${D224[@]}" --precision fp32 --steps 10
pt eager-d224-bf16 60 "${D224[@]}" --precision bf16 --channels-last --steps 40
pt eager-d32-bf16 60 "${D32[@]}" --precision bf16 --channels-last --steps 200
pt compile-d224-bf16 120 "${D224[@]}" --precision bf16 --channels-last --compile --fused --steps 40
pt compile-d32-bf16 120 "${D32[@]}" --precision bf16 --channels-last --compile --fused --steps 200

echo "== profile: vggtrain bench D 224 bf16, 10 steps"
t=$(slot 60)
if ((t >= 15)); then
  timeout -k 10 "$t" "$BIN" bench --device cuda "${D224[@]}" --precision bf16 --steps 10 \
    --trace "$OUT/trace.json" > "$OUT/trace.txt" 2> "$OUT/bench-trace.err"
  echo "trace exit $?"
  head -n 25 "$OUT/trace.txt" | cut -c1-200
  [ -f "$OUT/trace.json" ] && gzip -f "$OUT/trace.json" && ls -l "$OUT/trace.json.gz"
else
  echo "skipped: ${t} s left before the training's reserve"
fi

echo "== the variants time allows"
vgg_if_time() { local name=$1 cap=$2; shift 2; measure_if_time "bench-$name" "$cap" "$BIN" bench --device cuda --json "$@"; }
vgg_if_time d224-bf16-nchw 40 "${D224[@]}" --precision bf16 --steps 40 --channels-last false
vgg_if_time d32-fp32 40 "${D32[@]}" --precision fp32 --steps 100
vgg_if_time d32-bf16-nchw 40 "${D32[@]}" --precision bf16 --steps 200 --channels-last false

echo "== train VGG D (full width) on Fashion-MNIST, bf16, ${EPOCHS:-25} epochs"
rm -rf "$OUT/runs"
t=$((END - SECONDS - 5))
t=$((t < ${TRAIN_TIMEOUT:-240} ? t : ${TRAIN_TIMEOUT:-240}))
if ((t >= 30)); then
  echo "(timeout ${t} s)"
  timeout -k 10 "$t" "$BIN" train --no-tui --model D --dataset fashion-mnist --data-dir .device/fashion-mnist \
    --device cuda --batch-size 128 --epochs "${EPOCHS:-25}" --set train.precision='"bf16"' --set train.patience=2 \
    --set data.pca-lighting=0.0 --set run.checkpoint-every=0 --runs-dir "$OUT/runs" --name fmnist-d 2> "$OUT/train.log"
  echo "train exit $?"
  grep -E "^run |^epoch [0-9]+ \||^lr |^finished|^failed" "$OUT/train.log" | cut -c1-160
else
  echo "skipped: ${t} s left"
fi

echo "== summary: VGG D compute only (img/s, TFLOP/s, against vggtrain bf16 of the same shape,"
echo "   peak GPU memory: the CUDA allocator's peak allocated, for both)"
table bench-d224-bf16 bench-d224-fp16 bench-d224-fp32 bench-d224-bf16-nchw pt-eager-d224-bf16 pt-compile-d224-bf16 \
  bench-d32-bf16 bench-d32-fp16 bench-d32-fp32 bench-d32-bf16-nchw pt-eager-d32-bf16 pt-compile-d32-bf16
shopt -s nullglob
errs=("$OUT"/bench-*.err "$OUT/train.log")
shopt -u nullglob
echo "libtorch warnings on stderr: $(cat "${errs[@]}" 2>/dev/null | grep -c Warning)"
cat "${errs[@]}" 2>/dev/null | grep Warning | cut -c1-150 | sort | uniq -c | sort -rn | head -n 3
echo "gpu-check took ${SECONDS} s"
