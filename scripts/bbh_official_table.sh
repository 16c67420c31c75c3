#!/usr/bin/env bash
# The 8-task BBH table from the official BBH files (issue 33), resumable and committed as it goes:
# one `eval --suite bbh` shard per task and seed (250 examples, or all a task has), the oracle rows
# (bench/bbh_floor.py: an oracle per task trained on the half of its examples outside the oracle's
# evaluation half), then the joined table (bench/bbh_table.py).
# Each shard scores the task's own metric only (`--metrics task`: RC where the task has options,
# else EM), the one the table reads; the first s1 shards scored both, with the same numbers.
# The hub is the committed 120-module BIG-bench hub as of ad2a77b (frozen, so every shard composes
# from the same modules while the reasoning-gym modules are being added to hubs/smollm2-135m).
#   SEEDS="1 2 3" bash scripts/bbh_official_table.sh     # needs LORAHUB_BBH or `data fetch bbh`
set -uo pipefail
cd "$(dirname "$0")/.."
HUB_COMMIT=${HUB_COMMIT:-ad2a77b}
HUB=${BBH_HUB:-/tmp/lorahub-hub-$HUB_COMMIT}
TASKS=$(.venv/bin/python -c "from lorahub_serve.eval.run import BBH_TABLE_TASKS as t; print(' '.join(t))")
if [ ! -f "$HUB/hub.json" ]; then
    mkdir -p "$HUB.tmp" && git archive "$HUB_COMMIT" hubs/smollm2-135m | tar -x -C "$HUB.tmp"
    mv "$HUB.tmp/hubs/smollm2-135m" "$HUB" && rm -rf "$HUB.tmp"
fi
commit() { git add "$@" 2>/dev/null && git commit -q -m "$MSG" -- "$@" 2>/dev/null; }
for seed in ${SEEDS:-1 2 3}; do
    for task in $TASKS; do  # one shard per task-seed (~10 min each here): a stopped run loses one at most
        name=bbh_official_s${seed}_${task#bbh/}
        if [ -f "bench/results/$name.json" ]; then echo "[bbh] $name done"; continue; fi
        OMP_NUM_THREADS=${THREADS:-1} .venv/bin/lorahub-serve eval --suite bbh --model smollm2-135m --hub "$HUB" \
            --tasks "$task" --seeds "$seed" --limit 250 --rc-limit 250 --no-ngopt --generator engine --metrics task \
            --out bench/results --name "$name" || exit 1
        MSG="BBH from the official files: $task, seed $seed ($name)" commit bench/results/$name.*
    done
done
if [ -n "${FLOOR:-1}" ]; then
    OMP_NUM_THREADS=${THREADS:-1} .venv/bin/python bench/bbh_floor.py --tasks $TASKS --n-eval 250 \
        --oracles hubs/smollm2-135m-bbh-official-oracles --name bbh_official_floor
    MSG="BBH from the official files: oracle rows" commit bench/results/bbh_official_floor-* hubs/smollm2-135m-bbh-official-oracles
fi
