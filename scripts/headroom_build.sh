#!/usr/bin/env bash
# Issue 19's training, resumable, committed as it goes: the headroom suite (an oracle per
# candidate, gated) and the broader hub (hub.build.BROAD_HUB_TASKS), side by side, one CPU
# thread each (two spinning OpenMP threads in one process collapse on a shared 2-core machine).
# Safe to kill and start again: both skip what is done.
#   bash scripts/headroom_build.sh            # PY=... to use another interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HUB=$PWD/hubs/smollm2-135m
ORACLES=$PWD/hubs/smollm2-135m-oracles
SUITE=$PWD/suites/headroom-smollm2-135m.json
mkdir -p suites
( while sleep 300; do
    git add "$HUB" "$ORACLES" "$SUITE" 2>/dev/null
    git commit -q -m "headroom build: $(ls $HUB/modules | wc -l) hub modules, $(ls $ORACLES/modules 2>/dev/null | wc -l) oracles so far" -- "$HUB" "$ORACLES" "$SUITE" 2>/dev/null
  done ) &
committer=$!
trap 'kill $committer 2>/dev/null' EXIT
# Likely learnable first (generative mappings), so a partial build already holds a suite.
ORDER=${SUITE_ORDER:-"linguistic_mappings/plural_json linguistic_mappings/past_tense_json
  unnatural_in_context_learning/identity unnatural_in_context_learning/reverse_natural_content
  linguistic_mappings/sentence_negation_json linguistic_mappings/question_formation_json
  periodic_elements/subtask_1 modified_arithmetic/three_digit_subtraction_control
  modified_arithmetic/two_digit_multiplication_control multiemo/reviews_sentence_en
  language_identification intent_recognition cs_algorithms/valid_parentheses fact_checker/fever
  kanji_ascii/kanji_ascii_pronunciation natural_instructions/subtask039_qasc_find_overlapping_words
  natural_instructions/subtask033_winogrande_answer_generation simp_turing_concept/witness_set
  chess_state_tracking/real_short matrixshapes hinglish_toxicity kannada parsinlu_qa
  goal_step_wikihow/step_inference goal_step_wikihow/step_ordering elementary_math_qa/question_only
  fact_checker/politifact list_functions/00_shot_baseline chinese_remainder_theorem cryptonite"}
OMP_NUM_THREADS=1 $PY -m lorahub_serve.cli suite build --hub "$HUB" --oracles "$ORACLES" --out "$SUITE" \
    --tasks $ORDER --steps 24 --lr 2e-3 --max-length 128 --dtype bfloat16 > "${LOG_DIR:-/tmp}/suite_build.log" 2>&1 &
suite=$!
OMP_NUM_THREADS=1 nice -n 5 $PY -m lorahub_serve.cli hub build --out "$HUB" --broad --steps 24 --lr 2e-3 \
    --max-length 128 --dtype bfloat16 > "${LOG_DIR:-/tmp}/hub_build.log" 2>&1 &
hub=$!
wait $suite $hub
git add "$HUB" "$ORACLES" "$SUITE" && git commit -q -m "headroom build done" -- "$HUB" "$ORACLES" "$SUITE"
