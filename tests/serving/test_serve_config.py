"""`serve` options and the vLLM arguments built from them (no server)."""

from pathlib import Path

import pytest

from lorahub_serve.cli import build_parser
from lorahub_serve.serving.server import ServeConfig, vllm_argv


def test_cpu_arguments_and_passthrough_last(tmp_path):
    cfg = ServeConfig(model="m", store=tmp_path, max_loras=3, max_lora_rank=32,
                      vllm_args=("--dtype", "bfloat16"))
    argv = vllm_argv(cfg, Path("/models/m"), on_cpu=True)
    assert argv[:2] == ["--model", "/models/m"]
    assert "--enable-lora" in argv and argv[argv.index("--max-lora-rank") + 1] == "32"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # local only unless told otherwise
    assert argv[argv.index("--worker-extension-cls") + 1].endswith("vllm_cpu_fix.CpuLoraIndexFix")
    assert argv.index("float32") < argv.index("bfloat16")  # vLLM's parser: the last one wins
    assert "--dtype" not in vllm_argv(ServeConfig(model="m", store=tmp_path), Path("/m"), on_cpu=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_lora_rank": 12}, "--max-lora-rank must be one of"),
    ({"max_loras": 0}, "--max-loras must be >= 1"),
    ({"port": 70000}, "--port"),
    ({"api_key": " "}, "--api-key is empty"),
    ({"hub": Path("/no/such/hub")}, "is not a folder"),
])
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(model="m", store=tmp_path, **kwargs)


def test_cli_passes_arguments_after_double_dash():
    a = build_parser().parse_args(["serve", "--model", "m", "--store", "s", "--api-key", "k",
                                   "--", "--max-model-len", "128"])
    assert (a.host, a.port, a.api_key) == ("127.0.0.1", 8000, "k")
    assert a.vllm_args == ["--", "--max-model-len", "128"]
