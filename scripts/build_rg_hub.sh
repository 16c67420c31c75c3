#!/usr/bin/env bash
# Builds (or resumes) the reasoning-gym modules of the default SmolLM2-135M hub
# (hub.build.RG_HUB_TASKS, beside its 120 BIG-bench modules) and commits them as they finish.
# Safe to kill and start again: `lorahub-serve hub build` skips finished modules.
# Recipe (bench/results/rg_schedule-*): rank-8 q,v, STEPS steps of 8, lr 2e-3, bf16 autocast.
set -uo pipefail
cd "$(dirname "$0")/.."
HUB=hubs/smollm2-135m
commit() {
    git add "$HUB" 2>/dev/null && git commit -q -m "hub: reasoning-gym modules, $(grep -c '"rg/' $HUB/hub.json) so far" -- "$HUB" 2>/dev/null
}
( while sleep "${COMMIT_EVERY:-300}"; do commit; done ) &
committer=$!
trap 'kill $committer 2>/dev/null' EXIT
OMP_NUM_THREADS=${HUB_THREADS:-1} .venv/bin/lorahub-serve hub build --model smollm2-135m --out "$HUB" \
    --reasoning-gym --steps "${STEPS:-120}" --lr 2e-3 --max-length 256 --dtype bfloat16
# centroids for `adapt --select retrieve` of the modules that have none yet (resumable, ~3 s a module)
OMP_NUM_THREADS=${HUB_THREADS:-1} .venv/bin/lorahub-serve hub centroids --hub "$HUB" --model smollm2-135m
commit
