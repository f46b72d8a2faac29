#!/usr/bin/env bash
# Everything vggtrain needs on a fresh machine, each step skipped when done:
#  1. PyTorch 2.11.0 (libtorch for tch 0.24) from PyPI into a cache folder
#     outside the repo, linked as .libtorch (see .cargo/config.toml);
#  2. the offline dataset: Debian's dataset-fashion-mnist;
#  3. tmux, for the real-terminal tests.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
CACHE="${VGGTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vggtrain}"
TORCH_DIR="$CACHE/torch-$TORCH_VERSION"
say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# 1. libtorch
if [ -f "$TORCH_DIR/.complete" ]; then
  say "PyTorch $TORCH_VERSION found in $TORCH_DIR"
else
  PY=$(command -v python3 || command -v python || true)
  [ -n "$PY" ] || die "python3 is missing: install it (apt-get install python3 python3-pip) and run again"
  "$PY" -m pip --version >/dev/null 2>&1 \
    || die "pip is missing for $PY: install it (apt-get install python3-pip) and run again"
  say "installing PyTorch $TORCH_VERSION (about 4.5 GB) into $TORCH_DIR; this takes a few minutes, once"
  mkdir -p "$CACHE"
  rm -rf "$TORCH_DIR.partial"
  "$PY" -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
    --target "$TORCH_DIR.partial" "torch==$TORCH_VERSION" \
    || die "pip could not install torch==$TORCH_VERSION (is PyPI reachable?)"
  rm -rf "$TORCH_DIR"
  mv "$TORCH_DIR.partial" "$TORCH_DIR"
  touch "$TORCH_DIR/.complete"
  say "PyTorch $TORCH_VERSION installed"
fi
grep -q "__version__ = '$TORCH_VERSION" "$TORCH_DIR/torch/version.py" \
  || die "$TORCH_DIR holds another PyTorch version: remove that folder and run again"
ln -sfn "$TORCH_DIR/torch" .libtorch

# 2 and 3: Debian packages
missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v tmux >/dev/null || missing+=(tmux)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  else
    say "warning: missing ${missing[*]}; run: sudo apt-get install ${missing[*]}"
  fi
else
  say "Fashion-MNIST and tmux present"
fi
