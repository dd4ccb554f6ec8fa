#!/usr/bin/env bash
# The prepared GPU check: QLoRA vs bf16 LoRA (peak VRAM, tokens/s), then the demo pipeline with CUDA
# bench targets. Fits in 8 minutes on one H200. The report lands in ${OUT:-bench/gpu_check}/.
#
#   bash bench/gpu_check.sh             # on a CUDA machine
#   bash bench/gpu_check.sh --dry-run   # on a CPU: the same steps with a tiny model (CI runs this)
#
# On a machine without network access, carry wheels in .whl/ (see the device tool's notes): they are
# installed into /tmp/site first. edgetune itself is used from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "--dry-run" ]; then
  exec "$PY" bench/gpu_check.py --dry-run --out "${OUT:-$(mktemp -d)}"
fi
exec timeout 480 "$PY" bench/gpu_check.py --out "${OUT:-bench/gpu_check}"
