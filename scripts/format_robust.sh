#!/usr/bin/env bash
# Does format-robust training help a composition (issue 19)? The 8 modules of
# scripts/module_strength.sh trained again at 24 steps, now with half the training examples in the
# generic `Q: ...\nA:` frame (`hub build --format-robust`), then LoraHub with K = 8 on the same
# headroom tasks, seeds and shots as strength_24; bench/headroom_dtype_check.py pairs the two runs
# (zero-shot and the oracle do not depend on the hub: their difference is the run-to-run noise).
# CPU: ~10 min of one core for the modules, ~3 min a task-seed for the evaluation. Resumable.
#   bash scripts/format_robust.sh      # needs bench/results/strength_24.json (module_strength.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODULES=(auto_categorization codenames qa_wikidata tense unnatural_in_context_learning/dates gem/common_gen
         word_unscrambling modified_arithmetic/three_digit_addition_control)
TASKS=(linguistic_mappings/past_tense_json linguistic_mappings/de_past_tense_json
       unnatural_in_context_learning/dates_unnatural_form unnatural_in_context_learning/dates_unnatural_content
       linguistic_mappings/plural_json linguistic_mappings/sentence_negation_json)
OUT=${OUT:-bench/results}; hub=${HUB_ROOT:-hubs}/strength-24-robust
$PY -m lorahub_serve.cli hub build --model smollm2-135m --out "$hub" --tasks "${MODULES[@]}" \
    --steps 24 --lr 2e-3 --max-length 128 --dtype bfloat16 --format-robust
$PY -m lorahub_serve.cli eval --suite headroom --hub "$hub" --modules 8 --methods lorahub \
    --tasks "${TASKS[@]}" --seeds "${SEEDS:-1-2}" --limit 100 --resume --out "$OUT" --name strength_24_robust
$PY bench/headroom_dtype_check.py "$OUT/strength_24.json" --vs "$OUT/strength_24_robust.json" \
    --methods lorahub,zero_shot,oracle --name format_robust_vs_natural
