#!/usr/bin/env bash
# CPU compute-only throughput, vggtrain against PyTorch eager on the same
# model, batch and threads, interleaved over several rounds (these machines
# are noisy: compare medians of one run). Usage: benches/compare.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
ARGS=(--model D --width 4 --input 32 --batch 128)
BIN=${CARGO_TARGET_DIR:-target}/release/vggtrain
[ -x $BIN ] || cargo build --release
export PYTHONPATH=${PYTHONPATH:-$(readlink -f .libtorch)/..}
for r in $(seq "$ROUNDS"); do
  $BIN bench "${ARGS[@]}" --steps 15 --device cpu --json | sed 's/^/vggtrain-nhwc /'
  $BIN bench "${ARGS[@]}" --steps 15 --device cpu --channels-last false --json | sed 's/^/vggtrain-nchw /'
  python3 benches/pytorch_vgg.py "${ARGS[@]}" --steps 15 2>/dev/null | sed 's/^/pytorch-nchw /'
  python3 benches/pytorch_vgg.py "${ARGS[@]}" --steps 15 --channels-last 2>/dev/null | sed 's/^/pytorch-nhwc /'
done | python3 -c '
import sys, json, statistics as st
runs = {}
for line in sys.stdin:
    name, js = line.split(" ", 1)
    r = json.loads(js)
    runs.setdefault(name, []).append(r)
med = lambda name, key: st.median(r[key] for r in runs[name])
c = {n: med(n, "compute_images_per_sec" if n.startswith("vggtrain") else "pytorch_images_per_sec") for n in runs}
for n, v in c.items():
    print(f"{n:<14} compute only {v:8.1f} img/s (median of {len(runs[n])})")
e2e = med("vggtrain-nhwc", "end_to_end_over_compute")
print(f"vggtrain-nhwc end to end / compute only: {e2e:.3f}")
ours, theirs = c["vggtrain-nhwc"], c["pytorch-nchw"]
print(f"vggtrain-nhwc / pytorch-nchw: {ours / theirs:.3f}")
'
