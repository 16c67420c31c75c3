#!/usr/bin/env bash
# Do stronger modules matter (issue 11)? The same 8 upstream tasks trained at the default
# schedule (STEPS_SHORT, 24 steps) and longer (STEPS_LONG, default 128), then LoraHub with K = 8 on
# the BBH table's tasks. The 8 are the default hub's modules that the BBH searches weighted most
# (sum of |w| over the 24 task-seeds of bench/results/bbh_smollm2.json).
# Hours on a 2-core CPU (a module: 30-230 s per 24 steps), minutes on a GPU. Resumable: `hub
# build` skips modules already trained, and each eval writes its rows after every task-seed.
#   bash scripts/module_strength.sh            # SEEDS=1-3 LIMIT=50 BBH_TASKS="..." to narrow it
set -euo pipefail
cd "$(dirname "$0")/.."
UPSTREAM=(strange_stories/multiple_choice elementary_math_qa/language_hint_only
          fact_checker/covid19_scientific bbq_lite_json/age_ambig misconceptions implicatures
          periodic_elements/subtask_0 dark_humor_detection)
read -r -a BBH <<< "${BBH_TASKS:-sports_understanding navigate hyperbaton date_understanding logical_deduction/three_objects disambiguation_qa snarks object_counting}"
OUT=${OUT:-bench/results}
for steps in "${STEPS_SHORT:-24}" "${STEPS_LONG:-128}"; do
    hub=${HUB_ROOT:-hubs}/strength-$steps
    .venv/bin/lorahub-serve hub build --model smollm2-135m --out "$hub" --tasks "${UPSTREAM[@]}" --steps "$steps"
    .venv/bin/lorahub-serve eval --suite bbh --model smollm2-135m --hub "$hub" --modules 8 \
        --tasks "${BBH[@]}" --seeds "${SEEDS:-1-3}" --limit "${LIMIT:-50}" --rc-limit "${RC_LIMIT:-20}" \
        --no-ngopt --out "$OUT" --name "module_strength_${steps}_steps"
done
echo "compare: $OUT/module_strength_${STEPS_SHORT:-24}_steps.md against $OUT/module_strength_${STEPS_LONG:-128}_steps.md"
