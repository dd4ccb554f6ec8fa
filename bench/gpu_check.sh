#!/usr/bin/env bash
# The prepared GPU check: QLoRA vs bf16 LoRA (peak VRAM, tokens/s), where a training step's time
# goes, then the demo pipeline with CUDA bench targets. Planned for 8 minutes on one H200; the first
# run there (bench/baselines/gpu-h200) needed more, before the pipeline's exports were trimmed.
# The report lands in ${OUT:-bench/gpu_check}/.
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
# llama.cpp with CUDA, built in the background (in its own session, so that it outlives the call
# that started it and gpu_check.py can stop it whole): started by the first call whose folder holds
# its source, so that it compiles through the calls that follow; the bench uses it if it is ready
start_llama_cuda_build() {
  local src="$1" build=/tmp/llama-cuda nvcc
  nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
  [ -n "$src" ] && [ -n "$nvcc" ] || return 0
  export GPU_LLAMA_CUDA="$build"
  [ -f "$build/started" ] && return 0  # an earlier call started it
  mkdir -p "$build"
  cp "$src" "$build/"
  date +%s >"$build/started"
  CUDACXX="$nvcc" PATH="$(dirname "$nvcc"):$PATH" \
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(( $(nproc) > 4 ? $(nproc) - 2 : 2 )) \
    setsid bash -c 'nice -n 19 "$0" -m pip wheel --no-deps --no-build-isolation --no-index -w "$1" "$2" \
      >"$1/build.log" 2>&1; echo $? >"$1/rc"' "$PY" "$build" "$build/$(basename "$src")" \
    </dev/null >/dev/null 2>&1 &
  echo $! >"$build/pid"
  echo "gpu_check: building llama.cpp with CUDA in the background ($build/build.log)"
}
dry=""  # --dry-run anywhere among the flags (`--only sharded --dry-run` had taken the GPU branch)
for arg in "$@"; do [ "$arg" = "--dry-run" ] && dry=1; done
if [ "${1:-}" = "--receive" ]; then
  "$PY" bench/gpu_wheels.py receive
  start_llama_cuda_build "$(ls .gpu/*/llama_cpp_python-*.tar.gz 2>/dev/null | head -n 1 || true)"
  exit 0
fi
if [ -d .gpu ] && { [ -z "$dry" ] || [ -n "${GPU_WHEELS:-}" ]; }; then
  site="${GPU_SITE:-/tmp/site}"
  "$PY" bench/gpu_wheels.py install "$site" --sources "$site-src"
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if [ -f "$site-src/smollm2-tokenizer.tar.gz" ]; then  # the first step's tokenizer (see gpu_wheels.py)
    tar xzf "$site-src/smollm2-tokenizer.tar.gz" -C "$site-src"
    export GPU_CHECK_TOKENIZER="$site-src/smollm2-tokenizer"
  fi
  if [ -z "$dry" ]; then
    start_llama_cuda_build "$(ls "$site-src"/llama_cpp_python-*.tar.gz 2>/dev/null | head -n 1 || true)"
  fi
fi
if [ -n "$dry" ]; then  # the flags after it too (--only, --shape, --checkpointing)
  exec "$PY" bench/gpu_check.py --out "${OUT:-$(mktemp -d)}" "$@"
fi
# GPU_CHECK_TIMEOUT: the seconds the whole check may take (the device call's limit, less the start)
limit="${GPU_CHECK_TIMEOUT:-480}"
exec timeout "$limit" "$PY" bench/gpu_check.py --budget-s $((limit - 10)) --out "${OUT:-bench/gpu_check}" "$@"
