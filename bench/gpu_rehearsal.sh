#!/usr/bin/env bash
# A rehearsal of the GPU check on this CPU machine, in the device machine's software: Python 3.12
# with the device image's versions of torch (2.11.0, its CUDA 13 build, which imports without a GPU),
# transformers 5.17 and the rest (as read on the device in 2026-11), the carried wheels from .gpu/
# installed over them exactly as gpu_check.sh installs them there, then the check's dry run. It shows
# that the wheels install, import and run edgetune on that stack before a device minute is spent.
# Not part of `make test`: the first run downloads about 4 GB into ~/.cache/edgetune.
#
#   .venv/bin/python bench/gpu_wheels.py pack && bash bench/gpu_rehearsal.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY312="${PY312:-$(command -v python3.12 || ls "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)}"
[ -n "$PY312" ] || { echo "gpu_rehearsal: no Python 3.12 here (set PY312)" >&2; exit 2; }
[ -d .gpu ] || { echo "gpu_rehearsal: no .gpu/; run .venv/bin/python bench/gpu_wheels.py pack first" >&2; exit 2; }
VENV="${REHEARSAL_VENV:-$HOME/.cache/edgetune/rehearsal-py312}"
# the device image's packages that edgetune uses (its own versions where they were read there)
DEVICE_IMAGE=(torch==2.11.0 transformers==5.17.0 tokenizers==0.23.2 huggingface_hub==1.33.0
  accelerate==1.15.0 safetensors==0.8.0 onnx==1.23.1 onnxruntime==1.30.0 onnx-ir==1.0.0
  sentencepiece==0.2.2 peft numpy pyarrow pyyaml click rich jinja2 matplotlib protobuf packaging
  psutil nvidia-ml-py)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY312" -m venv "$VENV.tmp"
  "$VENV.tmp/bin/python" -m pip install --quiet "${DEVICE_IMAGE[@]}"
  mv "$VENV.tmp" "$VENV"
fi
# what the carried wheels require and do not carry themselves (requests, tqdm, regex, ...): the
# device image has every one of these (checked against its package list); here they are installed
"$VENV/bin/python" - <<'PY' >"$VENV/carried-needs.txt"
import re, zipfile
from pathlib import Path
wheels = sorted(Path(".gpu").glob("*/*.whl"))
carried = {re.split(r"-\d", w.name)[0].lower().replace("_", "-") for w in wheels}
needs = set()
for w in wheels:
    meta = next(n for n in zipfile.ZipFile(w).namelist() if n.endswith(".dist-info/METADATA"))
    for line in zipfile.ZipFile(w).read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            needs.add(re.split(r"[ ;<>=!~\[(]", line.split(":", 1)[1].strip())[0].lower().replace("_", "-"))
print("\n".join(sorted(needs - carried - {"torch"})))
PY
"$VENV/bin/python" -m pip install --quiet -r "$VENV/carried-needs.txt"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
GPU_WHEELS=1 GPU_SITE="$site" PYTHON="$VENV/bin/python" OUT="${OUT:-/tmp/gpu-rehearsal}" \
  bash bench/gpu_check.sh --dry-run
