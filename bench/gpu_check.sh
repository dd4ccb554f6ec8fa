#!/usr/bin/env bash
# The prepared GPU check: QLoRA vs bf16 LoRA (peak VRAM, tokens/s), then the demo pipeline with CUDA
# bench targets. Fits in 8 minutes on one H200. The report lands in ${OUT:-bench/gpu_check}/.
#
#   bash bench/gpu_check.sh             # on a CUDA machine
#   bash bench/gpu_check.sh --receive   # on the device machine: which carried wheel folders arrived
#   bash bench/gpu_check.sh --dry-run   # on a CPU: the same steps with a tiny model (CI runs this)
#
# The device machine has no package index: `bench/gpu_wheels.py pack` puts the wheels it needs into
# .gpu/1..N (carried in consecutive calls, see .gpu/N/CALLS.md), and they are installed into
# /tmp/site here first. edgetune itself is used from this checkout. GPU_WHEELS=1 installs them for
# a dry run too (a rehearsal in the device's Python, see bench/gpu_rehearsal.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "--receive" ]; then
  exec "$PY" bench/gpu_wheels.py receive
fi
if [ -d .gpu ] && { [ "${1:-}" != "--dry-run" ] || [ -n "${GPU_WHEELS:-}" ]; }; then
  site="${GPU_SITE:-/tmp/site}"
  "$PY" bench/gpu_wheels.py install "$site" --sources "$site-src"
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if [ -f "$site-src/smollm2-tokenizer.tar.gz" ]; then  # the first step's tokenizer (see gpu_wheels.py)
    tar xzf "$site-src/smollm2-tokenizer.tar.gz" -C "$site-src"
    export GPU_CHECK_TOKENIZER="$site-src/smollm2-tokenizer"
  fi
  src=$(ls "$site-src"/llama_cpp_python-*.tar.gz 2>/dev/null | head -n 1 || true)
  nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
  if [ "${1:-}" != "--dry-run" ] && [ -n "$src" ] && [ -n "$nvcc" ]; then
    export CUDACXX="$nvcc" PATH="$(dirname "$nvcc"):$PATH"
    # llama.cpp with CUDA, built while the first step trains (in its own session, so that
    # gpu_check.py can stop it whole); the demo pipeline uses it if it is ready by then
    build=/tmp/llama-cuda
    mkdir -p "$build"
    date +%s >"$build/started"
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native" \
      CMAKE_BUILD_PARALLEL_LEVEL=$(( $(nproc) > 4 ? $(nproc) - 2 : 2 )) \
      setsid bash -c 'nice -n 19 "$0" -m pip wheel --no-deps --no-build-isolation --no-index -w "$1" "$2" \
        >"$1/build.log" 2>&1; echo $? >"$1/rc"' "$PY" "$build" "$src" &
    echo $! >"$build/pid"
    export GPU_LLAMA_CUDA="$build"
  fi
fi
if [ "${1:-}" = "--dry-run" ]; then
  exec "$PY" bench/gpu_check.py --dry-run --out "${OUT:-$(mktemp -d)}"
fi
exec timeout 480 "$PY" bench/gpu_check.py --out "${OUT:-bench/gpu_check}"
