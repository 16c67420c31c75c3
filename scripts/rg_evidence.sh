#!/usr/bin/env bash
# The evidence of issues 34 and 35 on the reasoning-gym headroom suite, resumable and committed as
# it goes: every method and lever on every kept task, 3 seeds, 100 evaluation examples per task
# (fixed across seeds and methods; the seeds draw the shots), one shard per seed so two cores run
# two shards. Each shard writes its report after every task-seed (`eval --suite headroom --resume`
# keeps what is done); the joined report (`--merge ... --report-only`) is bench/results/rg_evidence.*.
#   bash scripts/rg_evidence.sh            # SEEDS="1 2 3" (default), METHODS=... to narrow
# Cost, measured on one task-seed (rg/lcm@le20, 100 examples, 141-module hub, load 4 on 2 cores):
# 1420 s wall, of which the levers 637 s (weights refinement 288 s at N = 20, hence N = 10 here),
# arrow_hub 406 s (now once per task: it takes no shots), lorahub + engine scoring 154 s.
# Run it once the hub build (scripts/build_rg_hub.sh) and the suite gate (scripts/build_rg_suite.sh)
# are done: LoraHub composes from the hub as it is when a row runs.
set -uo pipefail
cd "$(dirname "$0")/.."
SUITE=suites/headroom-rg-smollm2-135m.json
METHODS=${METHODS:-zero_shot,icl,lorahub,lorahub_random,lorahub_ngopt,best_single,soup,lorahub_icl,lora_ft,oracle,lorahub_export,lorahub_refine_w,lorahub_refine_f,lorahub_g2,lorahub_g4,lorahub_g4_x2,arrow,arrow_hub}
commit() {
    git add bench/results/rg_evidence* 2>/dev/null
    git commit -q -m "rg evidence: $(cat bench/results/rg_evidence_s*.json 2>/dev/null | grep -c '"task":') task-seed rows so far" \
        -- bench/results/rg_evidence* 2>/dev/null
}
( while sleep "${COMMIT_EVERY:-300}"; do commit; done ) &
committer=$!
trap 'kill $committer 2>/dev/null' EXIT
pids=()
for seed in ${SEEDS:-1 2 3}; do
    OMP_NUM_THREADS=1 .venv/bin/lorahub-serve eval --suite headroom --suite-file "$SUITE" --hub hubs/smollm2-135m \
        --seeds "$seed" --limit 100 --methods "$METHODS" --refine-steps "${REFINE_STEPS:-10}" \
        --out bench/results --name "rg_evidence_s$seed" --resume \
        > "/tmp/rg_evidence_s$seed.log" 2>&1 &
    pids+=($!)
    if [ ${#pids[@]} -ge "${PARALLEL:-2}" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
wait
.venv/bin/lorahub-serve eval --suite headroom --suite-file "$SUITE" --hub hubs/smollm2-135m --out bench/results \
    --name rg_evidence --merge bench/results/rg_evidence_s*.json --report-only > /dev/null
commit
