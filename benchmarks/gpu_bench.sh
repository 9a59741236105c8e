#!/usr/bin/env bash
# Scoring and training speed on one GPU, as one prepared run of at most 10 minutes:
#   1. bench_infer at xlm-roberta-base size, fp32 and bf16, autext_jax (packed rows, scanned layers,
#      jax.nn.dot_product_attention → cuDNN) vs the PyTorch model-card pipeline on the same GPU;
#   2. the same fp32 with one text per row (--no-pack), to show what packing buys there;
#   3. bench_train bf16 MFU for xlm-roberta-base (batch 32 × 128 tokens).
#
# Prepare where ../shared is (copies the real tokenizer and texts, ~24 MB, into the ignored folder
# .gpu_bench/), then copy the checkout with .gpu_bench/ to the GPU machine and run it there:
#     bash benchmarks/gpu_bench.sh --prepare        # beside ../shared
#     OUT=DIR bash benchmarks/gpu_bench.sh           # on the GPU machine; log in DIR/gpu_bench.log (/tmp)
# The GPU machine needs jax with CUDA, flax, optax, orbax, torch and transformers (not datasets).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=.gpu_bench

if [[ "${1:-}" == "--prepare" ]]; then
    shared=${2:-../shared}
    [[ -d /work/shared ]] && shared=${2:-/work/shared}
    mkdir -p "$STAGE/data/autextification/subtask_1/en" "$STAGE/data/autextification/subtask_1/es"
    grep -qx "/$STAGE/" .git/info/exclude 2>/dev/null || echo "/$STAGE/" >> "$(git rev-parse --git-path info/exclude)"
    cp -r "$shared/xlmr-tokenizer" "$STAGE/"
    for lang in en es; do
        cp "$shared/data/autextification/subtask_1/$lang/train.tsv.gz" "$STAGE/data/autextification/subtask_1/$lang/"
    done
    du -sh "$STAGE"
    exit 0
fi

LOG=${OUT:-/tmp}/gpu_bench.log
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45  # leave the other half of the GPU to torch in the same process
PY=${PYTHON:-python3}
step() {  # step SECONDS DESCRIPTION COMMAND...: a bounded step; a failure is logged, the next step runs
    local limit=$1 what=$2
    shift 2
    echo "=== $what ($(date -u +%T), limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "=== exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)"; } 2>&1 | tee "$LOG"
step 170 "bench_infer fp32 (2048 texts)" $PY benchmarks/bench_infer.py --shared "$STAGE" --texts 2048 --rounds 2
step 150 "bench_infer bf16 (2048 texts)" $PY benchmarks/bench_infer.py --shared "$STAGE" --texts 2048 --rounds 2 --dtype bfloat16
step 90 "bench_infer fp32, one text per row" $PY benchmarks/bench_infer.py --shared "$STAGE" --texts 2048 --no-pack --skip-reference
step 130 "bench_train bf16 MFU" $PY benchmarks/bench_train.py --models xlm-roberta-base --dtype bfloat16 --batch 32 --length 128 --steps 10 --warmup 2
