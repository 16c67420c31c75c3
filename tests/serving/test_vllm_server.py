"""A real `lorahub-serve serve` (vLLM's server and engine) on a tiny random Llama, via `openai`.

One server per module (start-up is the cost: ~40 s on a 2-core CPU). The model is built with
head_dim 32 (`hidden=128`): vLLM's CPU attention supports head sizes from 32 up, and its weights
are re-drawn with std 0.1 so that greedy output varies from token to token.
"""

import json
import os
import time

import httpx
import openai
import pytest
import torch

from lorahub_serve import testing
from lorahub_serve.serving.process import ServeProcess, free_port

pytest.importorskip("vllm", reason="vLLM is not installed here")
pytestmark = pytest.mark.vllm

KEY = "test-key-123"
NEW_TOKENS = 24
PROMPT = "Q: what is the capital of France?\nA:"
EXAMPLES = [{"input": "Q: is the cat blue?\nA:", "output": " no"},
            {"input": "Q: 2 and 3?\nA:", "output": " 5"},
            {"input": "Q: sort the words: dog cat\nA:", "output": " cat dog"}]


def _composed_adapter(model, hub, out):
    """A LoraHub composition of three hub modules with fixed weights (the `lorahub` rule)."""
    from lorahub_serve.engine.export import compose_factors, write_adapter
    from lorahub_serve.engine.hub import read_manifest, stack_modules

    stack = stack_modules(model, read_manifest(hub))
    return write_adapter(out, compose_factors(stack, [0, 1, 2], [0.9, -0.6, 0.7], "lorahub"), "tiny")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir, store = root / "model", root / "store"
    model, tok = testing.tiny_llama_for_vllm(model_dir)
    hub = testing.random_hub(model, root / "hub", n=4, scale=3.0)
    _composed_adapter(model, hub, store / "composed")
    testing.random_adapter(model, store / "big", rank=32, seed=5)
    other, _ = testing.tiny_llama(root / "other", hidden=64)
    testing.random_adapter(other, store / "alien", rank=4, seed=6)
    port = free_port()
    srv = ServeProcess(["--model", model_dir, "--store", store, "--hub", hub, "--port", port,
                        "--api-key", KEY, "--max-loras", 2, "--max-lora-rank", 16,
                        "--", "--max-model-len", 256], root / "serve.log", start_timeout_s=300)
    srv.start()
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, timeout=120, max_retries=0)
    yield {"srv": srv, "client": client, "model": model, "tok": tok, "model_dir": model_dir,
           "store": store, "root": root}
    status = srv.stop()
    assert status == 0, f"serve did not shut down cleanly on SIGTERM (status {status}):\n{srv.log_tail()}"


def _greedy_reference(model, ids, adapter=None):
    """Greedy continuation of `ids` with transformers (+ PEFT), no EOS stop: `NEW_TOKENS` ids."""
    from peft import PeftModel

    net = PeftModel.from_pretrained(model, adapter).eval() if adapter else model
    seq = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(NEW_TOKENS):
            seq = torch.cat([seq, net(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    if adapter:
        net.unload()
    return seq[0, len(ids):].tolist()


def _served_ids(client, model, ids):
    out = client.completions.create(model=model, prompt=ids, max_tokens=NEW_TOKENS, temperature=0,
                                    extra_body={"ignore_eos": True, "return_token_ids": True})
    return list(out.choices[0].token_ids)


def test_greedy_matches_transformers_peft(world):
    client, model, tok = world["client"], world["model"], world["tok"]
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    want = _greedy_reference(model, ids, world["store"] / "composed")
    base = _greedy_reference(model, ids)
    assert want != base, "the composed adapter should change the greedy output"
    assert len(set(want)) > 4, f"degenerate reference output {want}"
    got = _served_ids(client, "composed", ids)
    assert got == want, f"first mismatch at token {next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)}"
    assert _served_ids(client, str(world["model_dir"]), ids) == base


def test_adapter_written_after_start_is_served(world):
    client, store = world["client"], world["store"]
    assert "hot" not in {m.id for m in client.models.list().data}
    tmp = testing.random_adapter(world["model"], store / ".incoming-hot", rank=8, seed=7)
    os.rename(tmp, store / "hot")  # appear whole, as `adapt` writes
    assert "hot" in {m.id for m in client.models.list().data}
    out = client.chat.completions.create(model="hot", messages=[{"role": "user", "content": "the cat"}],
                                         max_tokens=4, temperature=0)
    assert out.model == "hot" and out.choices[0].message.content is not None


def test_refusals_and_errors(world):
    client, url = world["client"], world["srv"].url
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-adapter", **chat)
    assert e.value.body["type"] == "NotFoundError" and e.value.body["code"] == 404
    with pytest.raises(openai.BadRequestError, match=r"rank 32, above this server's --max-lora-rank 16"):
        client.completions.create(model="big", prompt="the", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="made for another base model"):
        client.chat.completions.create(model="alien", **chat)
    with pytest.raises(openai.BadRequestError, match="invalid adapter name"):
        client.chat.completions.create(model="../composed", **chat)
    assert client.chat.completions.create(model="composed", **chat).choices  # others still served
    listed = {m.id for m in client.models.list().data}
    assert "composed" in listed and not listed & {"big", "alien"}

    nokey = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", timeout=30, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        nokey.models.list()
    for path in ("/health", "/v1/adapters/composed", "/metrics"):
        r = httpx.get(url + path, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == 401, path
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{url}/v1/load_lora_adapter", headers=auth, timeout=30,
                   json={"lora_name": "x", "lora_path": str(world["root"])})
    assert r.status_code == 404  # vLLM's load-any-path route is removed


def test_adaptation_endpoint(world):
    client, url = world["client"], world["srv"].url
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{url}/v1/adapters", headers=auth, timeout=30,
                   json={"name": "made", "examples": EXAMPLES + [{"input": "x"}]})
    assert r.status_code == 400 and "examples[3]: missing field 'output'" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/adapters", headers=auth, timeout=30,
                   json={"name": "made", "examples": EXAMPLES, "budget": 6, "modules": 3, "seed": 1})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["id"].startswith("adapt-") and job["state"] in ("queued", "running")
    deadline = time.monotonic() + 240
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
        job = httpx.get(f"{url}/v1/adapters/made", headers=auth, timeout=30).json()
    assert job["state"] == "succeeded", json.dumps(job, indent=1)
    assert isinstance(job["loss"], float)
    out = client.chat.completions.create(model="made", messages=[{"role": "user", "content": "2 and 3?"}],
                                         max_tokens=4, temperature=0)
    assert out.model == "made"
    assert client.completions.create(model="made", prompt="Q: 2 and 3?\nA:", max_tokens=4).choices
    assert httpx.get(f"{url}/v1/adapters/nope", headers=auth, timeout=30).status_code == 404
