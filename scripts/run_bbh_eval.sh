#!/usr/bin/env bash
# The committed BBH table (bench/results/bbh_smollm2.*): 8 held-out tasks x SEEDS seeds, rows
# written after every task-seed and committed every 5 minutes, so a stopped run keeps its rows.
set -uo pipefail
cd "$(dirname "$0")/.."
NAME=${NAME:-bbh_smollm2}
( while sleep 300; do
    git add bench/results/"$NAME".* 2>/dev/null && git commit -q -m "bench: BBH evaluation (in progress)" -- bench/results/"$NAME".* 2>/dev/null
  done ) &
committer=$!
trap 'kill $committer 2>/dev/null' EXIT
.venv/bin/lorahub-serve eval --suite bbh --model smollm2-135m --hub hubs/smollm2-135m \
    --tasks sports_understanding navigate hyperbaton date_understanding \
    logical_deduction/three_objects disambiguation_qa snarks object_counting \
    --seeds "${SEEDS:-1-3}" --limit "${LIMIT:-50}" ${RC_LIMIT:+--rc-limit "$RC_LIMIT"} \
    --out bench/results --name "$NAME" "$@"
git add bench/results/"$NAME".* && git commit -q -m "bench: BBH evaluation, 8 tasks" -- bench/results/"$NAME".*
