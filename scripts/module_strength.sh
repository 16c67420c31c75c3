#!/usr/bin/env bash
# Do stronger modules matter (issue 19)? The same 8 upstream tasks trained at STEPS_SHORT (24,
# the hub's schedule) and STEPS_LONG (128) steps in bf16 autocast; each module scored on its own
# held-out split (hub.json); then LoraHub with K = 8 from each hub on the headroom suite
# (zero-shot, LoraHub and the oracle only), paired by task and seed; bench/module_strength.py
# writes the comparison to bench/results/. The 8 are the modules the headroom searches weighted
# most (unit_conversion, reserved, left out).
# CPU: ~10 min (24 steps) and ~50 min (128 steps) of one core for the modules, ~3 min a
# task-seed for the evaluation. Resumable: `hub build` skips modules already trained, and
# `eval --resume` keeps finished task-seeds.
#   bash scripts/module_strength.sh     # SEEDS=1 TASKS="..." LIMIT=100 to change the evaluation
set -euo pipefail
cd "$(dirname "$0")/.."
MODULES=(auto_categorization codenames qa_wikidata tense unnatural_in_context_learning/dates gem/common_gen
         word_unscrambling modified_arithmetic/three_digit_addition_control)
read -r -a TASKS <<< "${TASKS:-linguistic_mappings/pronoun_replacement_json unnatural_in_context_learning/reverse_to_natural_content}"
S=${STEPS_SHORT:-24}; L=${STEPS_LONG:-128}; OUT=${OUT:-bench/results}
for steps in "$S" "$L"; do
    hub=${HUB_ROOT:-hubs}/strength-$steps
    .venv/bin/lorahub-serve hub build --model smollm2-135m --out "$hub" --tasks "${MODULES[@]}" \
        --steps "$steps" --lr 2e-3 --max-length 128 --dtype bfloat16
    .venv/bin/lorahub-serve eval --suite headroom --hub "$hub" --modules 8 --methods lorahub \
        --tasks "${TASKS[@]}" --seeds "${SEEDS:-1-3}" --limit "${LIMIT:-100}" --resume \
        --out "$OUT" --name "strength_${steps}"
done
.venv/bin/python bench/module_strength.py --short "${HUB_ROOT:-hubs}/strength-$S" --long "${HUB_ROOT:-hubs}/strength-$L" \
    --headroom "$OUT/strength_$S.json" "$OUT/strength_$L.json"
