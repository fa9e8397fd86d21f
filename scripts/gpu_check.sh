#!/usr/bin/env bash
# GPU check of issue 23 (and issue 12's TTFT rows), one prepared run: every GPU must-show in one call.
#
# Run from the repository root on a GPU machine whose `python` has torch + transformers (torch
# 2.11 / transformers 5.17 tested by the bench authors' slots; no ROS, no internet, nothing
# installed: the source tree is put on PYTHONPATH and a throw-away ament prefix under "$OUT"
# points at the tree's config/, launch/, episodes/). matplotlib optional. Results under "$OUT":
#   env.txt, stages.txt, selftest.json/.txt, ttft_gpu.json/.log, evict_gpu.json/.log,
#   multitask_gpu.json/.log, summary.txt, checks.json (one PASS/FAIL/MISSING line per must-show).
# Stages (8B shape, bf16, random weights initialised on the GPU; limits in seconds):
#   selftest 100  split-KV (Triton) vs SDPA vs packed GQA, correctness + one layer's time at
#                 4K/120K (split-KV is used below only if correct and fastest at 120K);
#                 padded bucket appends == exact (fp32, graphs); greedy graphs == eager;
#                 stream priorities + a small GEMM beside a saturated low-priority stream
#   ttft     150  N = 8192, 65536, 122880; query lengths 17, 45, 80 vs 32/64/96
#   evict    235  budget 4096, 25 increments/s, 5 questions/s: ASR up to 100 cycles (130 s),
#                 then the synchronous baseline (45 s), rebuild on a low-priority stream
#   multitask 95  shared mode, 10 Hz, policy every frame, 4 open answers x 5 tokens per frame
# Wall time ~7-8 min on an H100/H200 (--quick: ~4 min). Peak GPU memory ~50 GB (ttft at 122880).
#
#   bash scripts/gpu_check.sh             # the full check
#   bash scripts/gpu_check.sh --quick     # a rerun: N = 122880 only, shorter evict/multitask
#   bash scripts/gpu_check.sh --dry-run   # CPU, tiny shape, small N: checks the script (~2 min)
# Knobs (environment): PYTHON (python), GPU_CHECK_BUDGET_S (480: no stage starts after it),
# GPU_CHECK_SHAPE, GPU_CHECK_N, GPU_CHECK_EVICT_CYCLES.
set -uo pipefail

MODE=full
case "${1:-}" in --quick) MODE=quick ;; --dry-run) MODE=dry ;; "") ;; *) echo "unknown option $1"; exit 2 ;; esac
OUT="${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-480}"
if [[ $MODE == dry ]]; then
  SHAPE=tiny DEVICE=cpu DTYPE=float32 GRAPHS=explicit NS="${GPU_CHECK_N:-256,512}" REPS=1
  EVICT=(--budget 1024 --increment-hz 40 --query-hz 20 --cycles "${GPU_CHECK_EVICT_CYCLES:-3}" --max-s 40
         --baseline-cycles 2 --baseline-max-s 30 --chunk-tokens 256)
  MULTI=(--state-tokens 300 --warmup-s 1 --duration-s 3 --threads 1)
else
  SHAPE="${GPU_CHECK_SHAPE:-llama-3.1-8b}" DEVICE=cuda DTYPE=bfloat16 GRAPHS=on
  if [[ $MODE == quick ]]; then
    NS="${GPU_CHECK_N:-122880}" REPS=2
    EVICT=(--cycles "${GPU_CHECK_EVICT_CYCLES:-50}" --max-s 70 --baseline-cycles 50 --baseline-max-s 30)
    MULTI=(--warmup-s 3 --duration-s 10)
  else
    NS="${GPU_CHECK_N:-8192,65536,122880}" REPS=3
    EVICT=(--cycles "${GPU_CHECK_EVICT_CYCLES:-100}" --max-s 130 --baseline-cycles 100 --baseline-max-s 45)
    MULTI=(--warmup-s 5 --duration-s 20)
  fi
  EVICT+=(--budget 4096 --increment-hz 25 --query-hz 5 --chunk-tokens 512)
  MULTI+=(--state-tokens 2048 --threads 0)
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
# shipped files (config/actions.yaml, ...) from the source tree through a throw-away ament prefix
PREFIX="$OUT/prefix"
mkdir -p "$PREFIX/share/ament_index/resource_index/packages" "$PREFIX/share/csr_ros"
touch "$PREFIX/share/ament_index/resource_index/packages/csr_ros"
for d in config launch episodes; do [[ -e "$PWD/$d" ]] && ln -sfn "$PWD/$d" "$PREFIX/share/csr_ros/$d"; done
export AMENT_PREFIX_PATH="$PREFIX${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
START=$SECONDS
: > "$OUT/stages.txt"

left() { echo $((BUDGET_S - (SECONDS - START))); }
stage() {  # stage NAME LIMIT_S LOG CMD...: run (cut at LIMIT_S or what is left), time, log to stages.txt
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS rc room
  room=$(left)
  if ((room < 30)); then echo "skip $name: ${room}s left of ${BUDGET_S}s" | tee -a "$OUT/stages.txt"; return 0; fi
  ((limit > room)) && limit=$room
  echo "=== $name (limit ${limit}s, at +$((SECONDS - START))s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$log"; rc=${PIPESTATUS[0]}
  printf '%-12s rc=%-4s %5ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$OUT/stages.txt"
}

# 1. environment
{
  echo "mode $MODE, shape $SHAPE, device $DEVICE, dtype $DTYPE, N $NS"
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: no (split-KV falls back to SDPA)"
  "$PY" -c "import matplotlib" 2>/dev/null && echo "matplotlib: yes" || echo "matplotlib: no (no PNG)"
} 2>&1 | tee "$OUT/env.txt"
PLOT=()
"$PY" -c "import matplotlib" 2>/dev/null && PLOT=(--plot)

# 2. self-test: decides split-KV and packed GQA for the runs below
stage selftest 100 selftest.txt "$PY" -m csr_ros.cli.bench.gpu_must_show selftest "$OUT" "$DEVICE"
SPLIT=$(grep -o 'SPLIT_KV=[a-z]*' "$OUT/selftest.txt" | tail -1 | cut -d= -f2); SPLIT=${SPLIT:-off}
PACK=$(grep -o 'PACKED_GQA=[a-z]*' "$OUT/selftest.txt" | tail -1 | cut -d= -f2); PACK=${PACK:-off}
GPU=(--cuda-graphs "$GRAPHS" --split-kv "$SPLIT")
echo "split-KV $SPLIT, packed GQA $PACK" | tee -a "$OUT/stages.txt"

# 3. TTFT at long context, and queries of lengths that are no old captured size
stage ttft 150 ttft_gpu.log "$PY" -m csr_ros.cli bench ttft --device "$DEVICE" --shape "$SHAPE" --dtype "$DTYPE" \
  --n "$NS" --reps "$REPS" --full-reps 1 --full-budget-s 12 --query-lengths 17,45,80 --packed-gqa "$PACK" \
  "${GPU[@]}" --json "$OUT/ttft_gpu.json" ${PLOT:+--plot "$OUT/ttft_gpu.png"}

# 4. reconciliation through eviction cycles: ASR (rebuild on a low-priority stream, hot path on a
#    high-priority one, the build paced to one chunk in flight and parked while a query runs), then sync
stage evict 235 evict_gpu.log "$PY" -m csr_ros.cli bench evict --device "$DEVICE" --shape "$SHAPE" --dtype "$DTYPE" \
  --high-water 0.6 --evict-frac 0.8 --hot-stream on "${EVICT[@]}" "${GPU[@]}" \
  --json "$OUT/evict_gpu.json" ${PLOT:+--plot "$OUT/evict_gpu.png"}

# 5. the real frame scheduler + language lane: 10 Hz actions, a decision every frame, 4 open answers
stage multitask 95 multitask_gpu.log "$PY" -m csr_ros.cli bench multitask --device "$DEVICE" --shape "$SHAPE" \
  --dtype "$DTYPE" --modes shared --rounds 1 --control-rate-hz 10 --policy-period-s 0.1 --tokens-per-frame 5 \
  --requests 4 --max-new-tokens 48 --hot-stream on "${MULTI[@]}" "${GPU[@]}" --json "$OUT/multitask_gpu.json"

# 6. the must-show lines
"$PY" -m csr_ros.cli.bench.gpu_must_show summary "$OUT" 2>&1 | tee "$OUT/summary.txt"
[[ $MODE == dry ]] && echo "(dry run on the CPU with the tiny shape: the figures are not the GPU's; only the code paths are checked)" | tee -a "$OUT/summary.txt"
echo "total wall: $((SECONDS - START))s; results in $OUT"
cat "$OUT/stages.txt"
