#!/usr/bin/env bash
# Puts what scripts/gpu-check.sh needs into .device/ (ignored by git, carried
# to the device machine): the release binary and the Fashion-MNIST files.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
mkdir -p .device/fashion-mnist
cp target/release/vggtrain .device/
cp /usr/share/datasets/fashion-mnist/*.gz .device/fashion-mnist/
du -sh .device
