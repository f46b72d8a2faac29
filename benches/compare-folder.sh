#!/usr/bin/env bash
# The JPEG pipeline side by side on one folder, in one run: torchvision's
# ImageFolder + DataLoader (benches/torchvision_folder.py, num_workers 0, 1,
# 2) and vggtrain bench --folder (data only per thread count, then end to end
# with a narrow net at 224), and the ratio per core.
# Usage: benches/compare-folder.sh [DIR]   (default: a folder of photographs
# that benches/make_photos.py writes to /tmp/vggtrain-photos)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp/vggtrain-photos}
BIN=target/release/vggtrain
[ -x $BIN ] || cargo build --release
export PYTHONPATH=${PYTHONPATH:-$(readlink -f .pyref):$(readlink -f .libtorch)/..}
[ -d "$DIR/train" ] || python3 benches/make_photos.py --out "$DIR"
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
{
  python3 benches/torchvision_folder.py "$DIR" | sed 's/^/torchvision /'
  $BIN bench --model A --width 8 --input 224 --batch 32 --steps 10 --warmup 2 --device cpu \
    --folder "$DIR" --json | sed 's/^/vggtrain /'
} > "$OUT"
python3 - "$OUT" <<'PY'
import sys, json
tv, ours = [], None
for line in open(sys.argv[1]):
    name, js = line.split(" ", 1)
    if name == "torchvision":
        tv.append(json.loads(js))
    else:
        ours = json.loads(js)
f = ours["folder"]
print(f"{f['images']} images, {f['mean_file_kb']:.0f} kB mean, S = {f['scale']}, crop 224, {ours['device']}")
print(f"{'pipeline':<34}{'cores':>6}{'img/s':>10}{'img/s a core':>14}")
for r in tv:
    name = f"torchvision, num_workers {r['num_workers']}"
    print(f"{name:<34}{r['cores']:>6}{r['images_per_sec']:>10.0f}{r['images_per_sec'] / r['cores']:>14.0f}")
for t in f["threads"]:
    name = f"vggtrain, {t['threads']} thread(s)"
    print(f"{name:<34}{t['threads']:>6}{t['images_per_sec']:>10.0f}{t['images_per_sec'] / t['threads']:>14.0f}")
tv1 = next(r for r in tv if r["num_workers"] == 0)["images_per_sec"]
v1 = f["threads"][0]["images_per_sec"]
print(f"vggtrain / torchvision, one core: {v1 / tv1:.2f}x")
print(f"end to end / compute only (VGG A 1/8 width at 224): {f['end_to_end_over_compute']:.3f}")
PY
