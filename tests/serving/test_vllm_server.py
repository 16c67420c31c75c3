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
HUB_RANKS = (4, 4, 8, 16)  # task0..task3: a hub of mixed ranks
NEW_TOKENS = 24
PROMPT = "Q: what is the capital of France?\nA:"
EXAMPLES = [{"input": "Q: is the cat blue?\nA:", "output": " no"},
            {"input": "Q: 2 and 3?\nA:", "output": " 5"},
            {"input": "Q: sort the words: dog cat\nA:", "output": " cat dog"}]


def _composed_adapter(model, hub, out):
    """A LoraHub composition of three hub modules with fixed weights (the `lorahub` rule, rank 8)."""
    from lorahub_serve.engine.export import compose_factors, write_adapter
    from lorahub_serve.engine.hub import read_manifest, stack_modules

    stack = stack_modules(model, read_manifest(hub))
    return write_adapter(out, compose_factors(stack, [0, 1, 2], [0.9, -0.6, 0.7], "lorahub"), "tiny")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir, store = root / "model", root / "store"
    model, tok = testing.tiny_llama_for_vllm(model_dir)
    hub = testing.random_hub(model, root / "hub", n=4, ranks=HUB_RANKS, scale=3.0)
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
    return testing.greedy_ids(model, ids, NEW_TOKENS, adapter)


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


def _peft_composition(hub, weights: dict[str, float], rule: str, out):
    """The composition as a PEFT folder (alpha = r) written from the module files alone:
    "lorahub": A = Σ wA, B = Σ w·(alpha/r)·B, zero-padded to the largest rank;
    "linear": A = [A₁; …], B = [w₁(alpha/r)₁B₁ …], stacked."""
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file

    parts: dict[str, list[torch.Tensor]] = {}
    for name, w in weights.items():
        folder = hub / "modules" / name
        cfg = json.loads((folder / "adapter_config.json").read_text())
        for key, t in load_file(folder / "adapter_model.safetensors").items():
            is_a = ".lora_A." in key
            factor = (1.0 if rule == "linear" else w) if is_a else w * cfg["lora_alpha"] / cfg["r"]
            t = factor * t.float()
            parts.setdefault(key, []).append(t if is_a else t.T)  # each [r_k, d]
    tensors = {}
    for key, ts in parts.items():
        if rule == "linear":
            stacked = torch.cat(ts)
        else:
            r = max(t.shape[0] for t in ts)
            stacked = sum(torch.nn.functional.pad(t, (0, 0, 0, r - t.shape[0])) for t in ts)
        tensors[key] = stacked if ".lora_A." in key else stacked.T.contiguous()
    rank = next(t.shape[0] for k, t in tensors.items() if ".lora_A." in k)
    LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj"],
               lora_dropout=0.0).save_pretrained(out)
    save_file(tensors, out / "adapter_model.safetensors")
    return out


def test_mixed_rank_compositions_named_in_the_request(world):
    """Compositions of a mixed-rank hub, served at their own rank (`composed_rank`) under
    --max-lora-rank 16: linear 4 + 4 + 8 = 16 fits (not 3 x 8), and lorahub over ranks 4 and 16
    is rank 16; their greedy output is PEFT's on the same composition built independently."""
    client, model, tok = world["client"], world["model"], world["tok"]
    base, ids = str(world["model_dir"]), tok(PROMPT, add_special_tokens=False)["input_ids"]
    hub = world["root"] / "hub"
    for rule, weights in (("linear", {"task0": 0.9, "task1": -0.6, "task2": 0.7}),
                          ("lorahub", {"task1": 0.8, "task3": -0.5})):
        want = _greedy_reference(model, ids, _peft_composition(hub, weights, rule,
                                                               world["root"] / f"peft-{rule}"))
        out = client.completions.create(model=base, prompt=ids, max_tokens=NEW_TOKENS, temperature=0,
                                        extra_body={"ignore_eos": True, "return_token_ids": True,
                                                    "lorahub": {"modules": weights, "rule": rule}})
        assert list(out.choices[0].token_ids) == want, rule
        served = json.loads((world["store"] / out.model / "adapter_config.json").read_text())
        assert served["r"] == 16, rule
    with pytest.raises(openai.BadRequestError, match=r"rank 20 \(rule 'linear', 2 module\(s\) of rank "
                                                      r"up to 16\), above this server's --max-lora-rank 16"):
        client.completions.create(model=base, prompt="the", max_tokens=2, extra_body={
            "lorahub": {"modules": {"task0": 1.0, "task3": 1.0}, "rule": "linear"}})


def _greedy_peft(net, ids):
    """Greedy continuation of `ids` with a PeftModel as it stands (its active adapter)."""
    return testing.greedy_ids(net, ids, NEW_TOKENS)


@pytest.mark.filterwarnings("ignore:The density 1.0:UserWarning")  # PEFT's own, in the oracle
def test_peft_merges_named_in_the_request(world):
    """`"rule": "ties"` (and dare_linear, dare_ties, magnitude_prune) on the OpenAI routes: the
    greedy output is transformers' with PEFT's own add_weighted_adapter of the two rank-4 modules
    (DARE seeded alike); the rank stays the modules' 4; a bad density is a 400 naming it."""
    from lorahub_serve.engine.merge import MergeSpec

    client, model, tok = world["client"], world["model"], world["tok"]
    base, ids = str(world["model_dir"]), tok(PROMPT, add_special_tokens=False)["input_ids"]
    hub, weights = world["root"] / "hub", {"task0": 0.9, "task1": -0.6}  # both rank 4
    plain = _greedy_reference(model, ids)
    for spec in ({"rule": "ties", "density": 0.5, "majority_sign_method": "total"},
                 {"rule": "dare_linear", "seed": 2}, {"rule": "dare_ties", "density": 0.7},
                 {"rule": "magnitude_prune", "density": 0.3}):
        net, _ = testing.peft_weighted_adapter(model, {n: hub / "modules" / n for n in weights},
                                               list(weights.values()), MergeSpec(**spec))
        want = _greedy_peft(net.eval(), ids)
        net.unload()
        assert want != plain, f"{spec}: the merge should change the greedy output"
        out = client.completions.create(model=base, prompt=ids, max_tokens=NEW_TOKENS, temperature=0,
                                        extra_body={"ignore_eos": True, "return_token_ids": True,
                                                    "lorahub": {"modules": weights, **spec}})
        assert list(out.choices[0].token_ids) == want, spec
        meta = json.loads((world["store"] / out.model / "lorahub.json").read_text())
        assert meta["rule"] == spec["rule"] and meta["density"] == spec.get("density", 0.5)
        assert json.loads((world["store"] / out.model / "adapter_config.json").read_text())["r"] == 4
    chat = client.chat.completions.create(model=base, messages=[{"role": "user", "content": "cat"}],
                                          max_tokens=3, temperature=0, extra_body={
                                              "lorahub": {"modules": weights, "rule": "ties"}})
    assert chat.model.startswith("lh-") and chat.choices
    for bad, message in (({"rule": "ties", "density": 1.5}, r"density must be a number in \(0, 1\]"),
                         ({"rule": "magnitude_prune", "majority_sign_method": "total"},
                          "majority_sign_method does not apply to rule 'magnitude_prune'")):
        with pytest.raises(openai.BadRequestError, match=message) as e:
            client.completions.create(model=base, prompt="the", max_tokens=2,
                                      extra_body={"lorahub": {"modules": weights, **bad}})
        assert e.value.body["param"] == "lorahub" and e.value.body["code"] == 400


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
