#!/usr/bin/env bash
# Gates the reasoning-gym headroom suite's candidates (eval.suite.RG_SUITE_CANDIDATES, interleaved
# by distance label so a partial build covers all three) and commits the manifest and the oracles
# as they land. Resumable: gated candidates and trained oracles are kept.
# Oracle recipe: rank-8 q,v LoRA, 120 steps of 8, lr 2e-3, bf16, max_length 256 (the hub's).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=suites/headroom-rg-smollm2-135m.json
ORACLES=hubs/smollm2-135m-rg-oracles
commit() {
    git add "$OUT" "$ORACLES" 2>/dev/null && git commit -q -m "suite: reasoning-gym headroom suite, $(grep -c '"kept"' $OUT 2>/dev/null) candidates gated so far" -- "$OUT" "$ORACLES" 2>/dev/null
}
( while sleep "${COMMIT_EVERY:-300}"; do commit; done ) &
committer=$!
trap 'kill $committer 2>/dev/null' EXIT
TASKS=$(.venv/bin/python -c "
from itertools import zip_longest
from lorahub_serve.eval.suite import RG_SUITE_CANDIDATES, closeness
from lorahub_serve.hub.build import RG_HUB_TASKS
by = {}
for t in RG_SUITE_CANDIDATES:
    by.setdefault(closeness(t, set(RG_HUB_TASKS)), []).append(t)
print(' '.join(t for row in zip_longest(*by.values()) for t in row if t))")
OMP_NUM_THREADS=${THREADS:-1} .venv/bin/lorahub-serve suite build --model smollm2-135m --hub hubs/smollm2-135m \
    --oracles "$ORACLES" --out "$OUT" --tasks $TASKS --steps 120 --lr 2e-3 --max-length 256 --dtype bfloat16
commit
