#!/usr/bin/env bash
# ASR on a GPU (issue 5's "second CUDA stream"): `csr-ros bench evict` with an 8B-shaped model
# (random bf16 weights initialised on the GPU; latency does not depend on them), the rebuild on
# a side stream of the same device, both modes in one run. One prepared run, ~5 min on an H100.
# Run from the repository root with a `python` that has torch + transformers. Results in "$OUT":
# evict_gpu.json (+ .png with matplotlib), evict_gpu.log, env.txt.
#   Knobs (environment, for the CPU dry run): GPU_EVICT_SHAPE, GPU_EVICT_DEVICE, GPU_EVICT_DTYPE,
#   GPU_EVICT_CYCLES, PYTHON.
set -uo pipefail
OUT="${OUT:-$(mktemp -d /tmp/gpu_evict.XXXXXX)}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1
PLOT=()
"$PY" -c "import matplotlib" 2>/dev/null && PLOT=(--plot "$OUT/evict_gpu.png")
# byte tokens (~100 per increment): budget 8192 (high water 0.6), 10 increments/s, 5 questions/s: a cycle every ~3 s
"$PY" -m csr_ros.cli bench evict --shape "${GPU_EVICT_SHAPE:-llama-3.1-8b}" --device "${GPU_EVICT_DEVICE:-cuda}" \
  --dtype "${GPU_EVICT_DTYPE:-bfloat16}" --budget 8192 --high-water 0.6 --evict-frac 0.8 \
  --increment-hz 10 --query-hz 5 --cycles "${GPU_EVICT_CYCLES:-30}" --max-s 150 --chunk-tokens 1024 \
  --json "$OUT/evict_gpu.json" "${PLOT[@]}" 2>&1 | tee "$OUT/evict_gpu.log"
