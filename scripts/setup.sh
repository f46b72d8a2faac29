#!/usr/bin/env bash
# Everything vggtrain needs on a fresh machine, each step skipped when done:
#  1. PyTorch 2.11.0 (libtorch for tch 0.24) from PyPI into a cache folder
#     outside the repo, linked as .libtorch (see .cargo/config.toml), and
#     CUDA's CCCL and crt headers beside it (.cuda-headers), with which
#     build.rs compiles the c10d shim's NCCL backend;
#  2. the offline dataset: Debian's dataset-fashion-mnist; cmake and nasm,
#     which the build of libjpeg-turbo (the turbojpeg crate) needs; and
#     libgloo-dev, gloo's headers for the c10d shim (data parallelism);
#  3. with --for-tests: tmux and OpenSSH's server and client, for the
#     real-terminal tests (the SSH route); iproute2 (ip, tc), with which the
#     data-parallel tests make two hosts of network namespaces; strace, whose
#     syscall delays make a slow disk for them; and the Python
#     references the tests check against (torchvision 0.26.0 on that
#     PyTorch, TensorBoard's reader, and what they need), linked as .pyref.
# What it cannot install (no root, no sudo) is an error naming the command
# to run: the tests never pass by skipping what is missing.
set -euo pipefail
FOR_TESTS=0
case "${1:-}" in
  --for-tests) FOR_TESTS=1 ;;
  "") ;;
  *) printf 'usage: %s [--for-tests]\n' "$0" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
CACHE="${VGGTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vggtrain}"
TORCH_DIR="$CACHE/torch-$TORCH_VERSION"
say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

PY=$(command -v python3 || command -v python || true)
need_pip() {
  [ -n "$PY" ] || die "python3 is missing: install it (apt-get install python3 python3-pip) and run again"
  "$PY" -m pip --version >/dev/null 2>&1 \
    || die "pip is missing for $PY: install it (apt-get install python3-pip) and run again"
}

# 1. libtorch
if [ -f "$TORCH_DIR/.complete" ]; then
  say "PyTorch $TORCH_VERSION found in $TORCH_DIR"
else
  need_pip
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

# CUDA's C++ headers that the wheel leaves out (CCCL, crt), for the c10d
# shim's NCCL backend (build.rs compiles it where these are): 19 MB.
CUDA_HEADERS="$CACHE/cuda-headers-13.0"
if [ ! -f "$CUDA_HEADERS/.complete" ]; then
  need_pip
  say "installing CUDA 13.0's headers for NCCL into $CUDA_HEADERS"
  rm -rf "$CUDA_HEADERS.partial"
  "$PY" -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
    --no-deps --target "$CUDA_HEADERS.partial" "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-crt==13.0.88" \
    || die "pip could not install CUDA's headers (is PyPI reachable?)"
  rm -rf "$CUDA_HEADERS"
  mv "$CUDA_HEADERS.partial" "$CUDA_HEADERS"
  touch "$CUDA_HEADERS/.complete"
fi
ln -sfn "$CUDA_HEADERS" .cuda-headers

# The tests' Python reference, beside that PyTorch, without dependencies
# (these are all it needs): torchvision for the test protocol, TensorBoard's
# own reader for the event files.
REF_DIR="$CACHE/pyref-$TORCH_VERSION"
REF_PACKAGES="torchvision==0.26.0 safetensors==0.8.0 numpy==2.4.6 pillow==13.0.0 tensorboard==2.21.0 protobuf==7.36.2 absl-py==2.5.1 packaging==26.4"
if [ "$FOR_TESTS" = 1 ]; then
  if [ "$(cat "$REF_DIR/.complete" 2>/dev/null)" = "$REF_PACKAGES" ]; then
    say "the Python reference (torchvision, tensorboard) found in $REF_DIR"
  else
    need_pip
    say "installing the tests' Python reference ($REF_PACKAGES) into $REF_DIR"
    rm -rf "$REF_DIR.partial"
    # shellcheck disable=SC2086 # the list is words
    "$PY" -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      --no-deps --target "$REF_DIR.partial" $REF_PACKAGES \
      || die "pip could not install the Python reference (is PyPI reachable?)"
    rm -rf "$REF_DIR"
    mv "$REF_DIR.partial" "$REF_DIR"
    printf '%s' "$REF_PACKAGES" > "$REF_DIR/.complete"
  fi
  ln -sfn "$REF_DIR" .pyref
fi

# 2 and 3: Debian packages
missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v cmake >/dev/null || missing+=(cmake)
command -v nasm >/dev/null || missing+=(nasm)
[ -f /usr/include/gloo/algorithm.h ] || missing+=(libgloo-dev)
[ "$FOR_TESTS" = 0 ] || command -v tmux >/dev/null || missing+=(tmux)
[ "$FOR_TESTS" = 0 ] || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
[ "$FOR_TESTS" = 0 ] || command -v ssh >/dev/null || missing+=(openssh-client)
[ "$FOR_TESTS" = 0 ] || { command -v ip >/dev/null && command -v tc >/dev/null; } || missing+=(iproute2)
[ "$FOR_TESTS" = 0 ] || command -v strace >/dev/null || missing+=(strace)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
  if command -v apt-get >/dev/null && { [ ${#SUDO[@]} = 0 ] || sudo -n true 2>/dev/null; }; then
    say "installing ${missing[*]} with apt-get"
    "${SUDO[@]}" apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  else
    die "missing ${missing[*]}, and no root or password-less sudo to install it: run sudo apt-get install ${missing[*]}, then again"
  fi
else
  say "Fashion-MNIST, cmake, nasm and libgloo-dev present$([ "$FOR_TESTS" = 0 ] || echo ', tmux, OpenSSH, iproute2 and strace present')"
fi
