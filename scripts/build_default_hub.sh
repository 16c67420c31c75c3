#!/usr/bin/env bash
# Builds (or resumes) the committed default hub for SmolLM2-135M and commits it as it grows.
# Safe to kill and start again: `lorahub-serve hub build` skips finished modules.
set -uo pipefail
cd "$(dirname "$0")/.."
HUB=hubs/smollm2-135m
MODULES=${MODULES:-48}
( while sleep 300; do
    git add "$HUB" 2>/dev/null && git commit -q -m "hub: default SmolLM2-135M hub, $(ls $HUB/modules 2>/dev/null | wc -l) modules so far" -- "$HUB" 2>/dev/null
  done ) &
committer=$!
trap 'kill $committer 2>/dev/null' EXIT
# HUB_ACTORS Ray actors train modules side by side, one CPU thread each (on a shared 2-core
# machine two spinning OpenMP threads in one process collapse under contention).
OMP_NUM_THREADS=${HUB_THREADS:-1} .venv/bin/lorahub-serve hub build --model smollm2-135m --out "$HUB" \
    --modules "$MODULES" --actors "${HUB_ACTORS:-2}" --steps 24 --lr 2e-3 --max-length 128
git add "$HUB" && git commit -q -m "hub: default SmolLM2-135M hub ($(ls $HUB/modules | wc -l) modules)" -- "$HUB"
