"""`lorahub-serve serve` on the real Gemma 3 270M with a LoRA: the served greedy continuation equals
PEFT's (slow: fetches the model if needed, and a vLLM start on CPU takes a minute or two;
`pytest -m slow tests/serving/test_gemma3_serving.py`)."""

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


def test_served_gemma3_with_a_lora_equals_peft(tmp_path):
    from lorahub_serve.models import load_base, resolve_model
    from lorahub_serve.prompting import prompt_ids

    folder = resolve_model("gemma3-270m", fetch=True)
    model, tok = load_base(folder)
    store = tmp_path / "store"
    testing.random_adapter(model, store / "lora", rank=8, seed=3, scale=2.0, base_name="gemma3-270m")
    ids = prompt_ids(tok, PROMPT)
    assert ids[0] == tok.bos_token_id
    want, base = _greedy_peft(model, ids, store / "lora"), _greedy_peft(model, ids)
    assert want != base, "the adapter should change the greedy output"
    srv = ServeProcess(["--model", "gemma3-270m", "--store", store, "--port", free_port(),
                        "--api-key", KEY, "--max-loras", 1, "--max-lora-rank", 8,
                        "--", "--max-model-len", 256], tmp_path / "serve.log", start_timeout_s=600)
    srv.start()
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, timeout=300, max_retries=0)

        def served(name):
            out = client.completions.create(model=name, prompt=ids, max_tokens=NEW_TOKENS, temperature=0,
                                            extra_body={"ignore_eos": True, "return_token_ids": True})
            return list(out.choices[0].token_ids)

        got_base, got = served("gemma3-270m"), served("lora")
    finally:
        status = srv.stop()
    print(f"PEFT {tok.decode(want)!r} served {tok.decode(got)!r}; base {tok.decode(base)!r}")
    assert got_base == base, f"base: served {tok.decode(got_base)!r}, transformers {tok.decode(base)!r}"
    assert got == want, f"LoRA: served {tok.decode(got)!r}, PEFT {tok.decode(want)!r}"
    assert status == 0, srv.log_tail()
