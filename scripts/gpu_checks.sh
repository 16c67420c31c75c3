#!/usr/bin/env bash
# Issue 12's GPU checks in one device call, for the next session that is lent a GPU.
#
#   bash scripts/gpu_checks.sh prepare     # here: wheels, SmolLM2's config + tokenizer, task data
#   # then, through the device tool, carrying gpu_payload:
#   #   run(command="bash scripts/gpu_checks.sh run", carry=["gpu_payload"], timeout_s=540)
#
# `run` installs the carried pure-Python wheels and the project into /tmp/lhs (the device image
# has torch, triton and transformers but no index: ../shared/notes/environment.md), builds a
# random-weight model with SmolLM2-135M's architecture and tokenizer (speed does not depend on
# the values), and runs: the -m gpu tests, bench_lora_delta, adapt_speed on cuda (warm engine,
# evaluations/s, whole process, against the reference loop on the same card) and adapt_many
# (64 tasks). Every figure lands in bench/results/ and is copied to $OUT. Each step is timed
# and a failing step does not stop the next. RUN_STEPS="tests speed many kernels" picks steps.
# On a machine without CUDA `run` still works (the GPU tests skip, the benchmarks run on CPU):
# check it here with `LHS_ROOT=/tmp/lhs-dry RUN_STEPS=speed SPEED_ARGS="--budget 8 --repeats 1"
# bash scripts/gpu_checks.sh run`.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PAYLOAD=$REPO/gpu_payload

prepare() {
    set -e
    local py=.venv/bin/python home
    home=$($py -c "from lorahub_serve import paths; print(paths.home())")
    rm -rf "$PAYLOAD" && mkdir -p "$PAYLOAD/wheels" "$PAYLOAD/model" "$PAYLOAD/rg" "$PAYLOAD/bbh"
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$PAYLOAD/wheels" \
        nevergrad==1.0.12 cma==4.5.0 bayesian-optimization==1.4.0 directsearch==1.1 peft==0.21.2
    for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
        cp "$home/models/smollm2-135m/$f" "$PAYLOAD/model/"
    done
    # The speed benchmarks' tasks: bbh/navigate (adapt_speed) from the official file, and the
    # generated reasoning-gym tasks of adapt_batch/adapt_many as cached JSONL (the device image has
    # no reasoning-gym; a cached task reads without it).
    $py - "$PAYLOAD" <<'PY'
import shutil, sys
from pathlib import Path
sys.path.insert(0, "bench")
from adapt_batch import TASKS
from lorahub_serve.data import bbh_official, rg, tasks
out = Path(sys.argv[1])
shutil.copy(bbh_official.folder() / "navigate.json", out / "bbh" / "navigate.json")
for t in TASKS:
    tasks.load_task(t)
    dataset, config = rg.parse(t)
    shutil.copy(rg._cache_file(dataset, config, rg.DEFAULT_SIZE), out / "rg")
PY
    du -sh "$PAYLOAD"
}

step() {  # step NAME COMMAND...: run, time, log; never stop the script
    local name=$1 t0 rc
    shift
    echo "=== $name: $*" | tee -a "$LOG"
    t0=$(date +%s)
    "$@" >>"$LOG" 2>&1
    rc=$?
    echo "=== $name: rc=$rc in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
}

run() {
    local root=${LHS_ROOT:-/tmp/lhs} py=${PY:-python3} steps=${RUN_STEPS:-"tests kernels speed many"}
    local out=${OUT:-$root/out}
    mkdir -p "$root" "$out"
    LOG=$out/gpu_checks.log
    : >"$LOG"
    nvidia-smi -L >>"$LOG" 2>&1 || echo "no nvidia-smi: CPU run" >>"$LOG"
    if [ ! -d "$root/deps" ]; then  # kept between back-to-back calls
        step install-wheels $py -m pip install -q --no-index --no-deps --target "$root/deps" "$PAYLOAD"/wheels/*.whl
    fi
    rm -rf "$root/pkg"
    step install-project $py -m pip install -q --no-deps --no-build-isolation --target "$root/pkg" "$REPO"
    export PYTHONPATH=$root/pkg:$root/deps LORAHUB_HOME=$root/home
    export LORAHUB_BBH=$PAYLOAD/bbh
    mkdir -p "$LORAHUB_HOME/downloads/reasoning_gym" && cp "$PAYLOAD"/rg/*.jsonl "$LORAHUB_HOME/downloads/reasoning_gym/"
    local model=$root/model
    if [ ! -f "$model/model.safetensors" ]; then
        step random-model $py -c "
import shutil, sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src)).save_pretrained(dst)
for f in src.iterdir():
    if f.name != 'config.json':
        shutil.copy(f, dst / f.name)
" "$PAYLOAD/model" "$model"
    fi
    local before
    before=$(ls "$REPO/bench/results" | sort)
    cd /tmp  # from the repo root, `python -m lorahub_serve.cli` would import the uninstalled folder
    for s in $steps; do
        case $s in
            tests) (step gpu-tests $py -m pytest "$REPO/tests/kernels" "$REPO/tests/engine" -m gpu \
                        -c "$REPO/pyproject.toml" --rootdir "$REPO" -o addopts="" -q -p no:cacheprovider) ;;
            kernels) step bench-lora-delta $py "$REPO/bench/bench_lora_delta.py" ;;
            speed) step adapt-speed $py "$REPO/bench/adapt_speed.py" --model "$model" ${SPEED_ARGS:-"--repeats 2"} ;;
            many) step adapt-many $py "$REPO/bench/adapt_many.py" --model "$model" --hub random \
                        ${MANY_ARGS:-"--tasks 64 --actors 0"} ;;
        esac
    done
    comm -13 <(echo "$before") <(ls "$REPO/bench/results" | sort) | while read -r f; do
        cp "$REPO/bench/results/$f" "$out/"
    done
    cd "$REPO"
    tail -40 "$LOG"
}

case ${1:-} in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
