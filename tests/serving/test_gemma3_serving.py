"""`lorahub-serve serve` on the real Gemma 3 270M with a LoRA: the served greedy continuation equals
PEFT's, for a random LoRA and for the composition `adapt` finds on the committed Gemma hub (slow:
fetches the model if needed, and a vLLM start on CPU takes a minute or two;
`pytest -m slow tests/serving/test_gemma3_serving.py`)."""

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from lorahub_serve import testing
from lorahub_serve.serving.process import ServeProcess, free_port

pytest.importorskip("vllm", reason="vLLM is not installed here")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

KEY = "test-key-123"
NEW_TOKENS = 16
PROMPT = "Q: What is the capital of France?\nA:"


def _greedy_peft(model, ids, adapter=None):
    return testing.greedy_ids(model, ids, NEW_TOKENS, adapter)


def _serve_and_compare(store: Path, name: str, tmp_path: Path, model, tok, prompt: str = PROMPT):
    """Greedy tokens of the base model and of adapter `name` from PEFT and from a served vLLM."""
    from lorahub_serve.prompting import prompt_ids

    ids = prompt_ids(tok, prompt)
    assert ids[0] == tok.bos_token_id
    want, base = _greedy_peft(model, ids, store / name), _greedy_peft(model, ids)
    srv = ServeProcess(["--model", "gemma3-270m", "--store", store, "--port", free_port(),
                        "--api-key", KEY, "--max-loras", 1, "--max-lora-rank", 8,
                        "--", "--max-model-len", 256], tmp_path / "serve.log", start_timeout_s=600)
    srv.start()
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, timeout=300, max_retries=0)

        def served(model_name):
            out = client.completions.create(model=model_name, prompt=ids, max_tokens=NEW_TOKENS, temperature=0,
                                            extra_body={"ignore_eos": True, "return_token_ids": True})
            return list(out.choices[0].token_ids)

        got_base, got = served("gemma3-270m"), served(name)
    finally:
        status = srv.stop()
    print(f"PEFT {tok.decode(want)!r} served {tok.decode(got)!r}; base {tok.decode(base)!r}")
    assert got_base == base, f"base: served {tok.decode(got_base)!r}, transformers {tok.decode(base)!r}"
    assert got == want, f"{name}: served {tok.decode(got)!r}, PEFT {tok.decode(want)!r}"
    assert status == 0, srv.log_tail()
    return want, base


def test_served_gemma3_with_a_lora_equals_peft(tmp_path):
    from lorahub_serve.models import load_base, resolve_model

    model, tok = load_base(resolve_model("gemma3-270m", fetch=True))
    store = tmp_path / "store"
    testing.random_adapter(model, store / "lora", rank=8, seed=3, scale=2.0, base_name="gemma3-270m")
    want, base = _serve_and_compare(store, "lora", tmp_path, model, tok)
    assert want != base, "the adapter should change the greedy output"


def test_adapt_on_the_gemma_hub_then_serve_equals_peft(tmp_path):
    """The issue's chain: model fetch -> adapt with the committed Gemma hub -> serve."""
    from lorahub_serve.data import tasks
    from lorahub_serve.data.examples import write_jsonl
    from lorahub_serve.models import load_base, resolve_model
    from lorahub_serve.paths import repo_root

    hub = repo_root() / "hubs" / "gemma3-270m"
    if not (hub / "hub.json").exists():
        pytest.skip("no committed Gemma hub (lorahub-serve hub build --model gemma3-270m)")
    model, tok = load_base(resolve_model("gemma3-270m", fetch=True))
    shots, evalset = tasks.split(tasks.load_task("linguistic_mappings/past_tense_json"), 5, 50, seed=1)
    write_jsonl(tmp_path / "ex.jsonl", shots)
    store = tmp_path / "store"
    subprocess.run([sys.executable, "-m", "lorahub_serve.cli", "adapt", "--model", "gemma3-270m",
                    "--hub", str(hub), "--examples", str(tmp_path / "ex.jsonl"), "--out", str(store / "task"),
                    "--budget", "12", "--seed", "1"], check=True)
    meta = json.loads((store / "task" / "lorahub.json").read_text())
    assert "gemma3-270m" in meta["base_model"] and len(meta["modules"]) >= 2
    want, base = _serve_and_compare(store, "task", tmp_path, model, tok, prompt=evalset[0].input)
    assert want != base, "the composition should change the greedy output"
