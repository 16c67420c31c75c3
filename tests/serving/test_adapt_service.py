"""Adaptation as a service against a real `lorahub-serve serve`: bad input, job routes, kill -9.

One server per module (vLLM start-up is the cost); the last test kills it with SIGKILL and
restarts it on the same store. A tiny random Llama and hub keep the jobs to seconds.
"""

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest

from lorahub_serve import testing
from lorahub_serve.serving.process import ServeProcess, free_port
from lorahub_serve.serving.routes import MAX_BODY_BYTES

pytest.importorskip("vllm", reason="vLLM is not installed here")
pytestmark = pytest.mark.vllm

KEY = "svc-key-456"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = [{"input": "Q: is the cat blue?\nA:", "output": " no"},
            {"input": "Q: 2 and 3?\nA:", "output": " 5"}]
CONTEXT = 128  # --max-model-len


def _start(world, log_name):
    port = free_port()
    srv = ServeProcess(["--model", world["model_dir"], "--store", world["store"], "--hub",
                        world["hub"], "--port", port, "--api-key", KEY, "--adapt-queue", 2,
                        "--max-loras", 2, "--max-lora-rank", 8, "--", "--max-model-len", CONTEXT],
                       world["root"] / log_name, start_timeout_s=300)
    srv.start()
    world["srv"], world["url"] = srv, srv.url
    world["client"] = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, timeout=120,
                                    max_retries=0)
    return srv


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    world = {"root": root, "model_dir": root / "model", "store": root / "store"}
    model, tok = testing.tiny_llama_for_vllm(world["model_dir"])
    world["model"], world["tok"] = model, tok
    world["hub"] = testing.random_hub(model, root / "hub", n=4, scale=3.0)
    testing.random_adapter(model, world["store"] / "stored", rank=8, seed=3)
    _start(world, "serve-1.log")
    yield world
    world["srv"].stop()


def _post(world, body=None, **kw):
    return httpx.post(f"{world['url']}/v1/adapters", headers={**AUTH, **kw.pop("headers", {})},
                      json=body, timeout=60, **kw)


def _job(world, name):
    return httpx.get(f"{world['url']}/v1/adapters/{name}", headers=AUTH, timeout=30).json()


def _wait(world, name, until=("succeeded", "failed", "cancelled"), timeout=240, check=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(world, name)
        if job.get("state") in until and (check is None or check(job)):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {name} did not reach {until} in {timeout} s: {job}")


def _raw_post(url, head: bytes, body: bytes) -> tuple[int, bytes]:
    """Send a request by hand (headers, then `body`, and no more) and read the status line."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while not _complete(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def _complete(data: bytes) -> bool:
    """Whether `data` holds a whole response (headers and Content-Length bytes of body)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def _error(r):
    return r.json()["error"]


def test_bad_input_is_refused_and_the_server_keeps_serving(world):
    long_name = "x" * 10_000
    cases = [
        ({"name": "many", "examples": EXAMPLES * 5000}, 400, "at most 1000"),
        ({"name": long_name, "examples": EXAMPLES}, 400, "invalid adapter name"),
        ({"name": "adaptér-ünïcode", "examples": EXAMPLES}, 400, "invalid adapter name"),
        ({"name": "..", "examples": EXAMPLES}, 400, "invalid adapter name"),
        ({"name": "../stored", "examples": EXAMPLES}, 400, "invalid adapter name"),
        ({"name": "stored", "examples": EXAMPLES}, 409, "already exists in the store"),
        ({"name": "toolong", "examples": EXAMPLES + [{"input": "the cat " * 100, "output": " no"}]},
         400, rf"examples\[2\]: example of \d+ tokens exceeds the model's context of {CONTEXT}"),
    ]
    for body, code, message in cases:
        r = _post(world, body)
        assert r.status_code == code, (body["name"][:20], r.text[:300])
        assert _error(r)["code"] == code and __import__("re").search(message, _error(r)["message"])
    r = _post(world, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in _error(r)["message"]

    # 50 MB declared: the 413 comes back although only 1 KiB of the body was ever sent.
    url = world["url"]
    head = (f"POST /v1/adapters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {50 << 20}\r\n\r\n").encode()
    code, data = _raw_post(url, head, b"[" * 1024)
    assert code == 413 and str(MAX_BODY_BYTES).encode() in data, data[:300]
    # Chunked, no length: refused once the limit is passed.
    head = (f"POST /v1/adapters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    piece = b"[" * (1 << 20)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    code, _ = _raw_post(url, head, chunk * (MAX_BODY_BYTES // len(piece) + 1))
    assert code == 413

    # A job with duplicate names: the second POST while the first is active is a 409.
    r = _post(world, {"name": "dup", "examples": EXAMPLES, "budget": 4, "modules": 2})
    assert r.status_code == 202, r.text
    r2 = _post(world, {"name": "dup", "examples": EXAMPLES})
    assert r2.status_code == 409 and _error(r2)["code"] == 409
    assert _wait(world, "dup")["state"] == "succeeded"

    out = world["client"].completions.create(model="stored", prompt="the cat", max_tokens=3)
    assert out.choices and out.model == "stored"  # still serving


def test_job_routes_list_cancel_delete(world):
    url, client = world["url"], world["client"]
    r = _post(world, {"name": "made", "examples": EXAMPLES, "budget": 6, "modules": 3, "seed": 1})
    assert r.status_code == 202, r.text
    job = _wait(world, "made")
    assert job["state"] == "succeeded" and isinstance(job["loss"], float) and job["evaluations"] == 6
    assert client.completions.create(model="made", prompt="Q: 2 and 3?\nA:", max_tokens=3).choices
    listing = httpx.get(f"{url}/v1/adapters", headers=AUTH, timeout=30).json()
    assert "made" in {j["name"] for j in listing["jobs"]}
    assert {"made", "stored"} <= {a["name"] for a in listing["data"]}

    assert httpx.delete(f"{url}/v1/adapters/made", timeout=30).status_code == 401
    assert httpx.delete(f"{url}/v1/adapters/nope", headers=AUTH, timeout=30).status_code == 404
    assert httpx.delete(f"{url}/v1/adapters/b%C3%A4d", headers=AUTH, timeout=30).status_code == 400
    r = httpx.delete(f"{url}/v1/adapters/made", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert not (world["store"] / "made").exists()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="made", prompt="the", max_tokens=2)
    assert "made" not in {m.id for m in client.models.list().data}

    # A running job and a bounded queue (--adapt-queue 2).
    assert _post(world, {"name": "long", "examples": EXAMPLES, "budget": 100_000}).status_code == 202
    _wait(world, "long", until=("running",), check=lambda j: j["evaluations"] > 0)
    assert _post(world, {"name": "q1", "examples": EXAMPLES, "budget": 4}).status_code == 202
    assert _post(world, {"name": "q2", "examples": EXAMPLES, "budget": 4}).status_code == 202
    r = _post(world, {"name": "q3", "examples": EXAMPLES})
    assert r.status_code == 429 and "queue is full" in _error(r)["message"]
    r = httpx.delete(f"{url}/v1/adapters/q1", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = httpx.delete(f"{url}/v1/adapters/long", headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    assert _wait(world, "q2")["state"] == "succeeded"
    assert not (world["store"] / "long").exists() and not (world["store"] / "q1").exists()


def _independent_composition(hub: Path, weights: dict[str, float], out: Path) -> Path:
    """A = Σ wA, B = Σ w·(alpha/r)·B from the hub's module files, as a PEFT folder (alpha = r)."""
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file

    a_sum, b_sum = {}, {}
    for name, w in weights.items():
        folder = hub / "modules" / name
        cfg = json.loads((folder / "adapter_config.json").read_text())
        scale = cfg["lora_alpha"] / cfg["r"]
        for key, t in load_file(folder / "adapter_model.safetensors").items():
            acc, factor = (a_sum, w) if ".lora_A." in key else (b_sum, w * scale)
            acc[key] = acc.get(key, 0) + factor * t.float()
    rank = next(iter(a_sum.values())).shape[0]
    LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj"],
               lora_dropout=0.0).save_pretrained(out)
    save_file({**a_sum, **b_sum}, out / "adapter_model.safetensors")
    return out


def _greedy(model, ids, adapter, n):
    import torch
    from peft import PeftModel

    net = PeftModel.from_pretrained(model, adapter).eval()
    seq = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(n):
            seq = torch.cat([seq, net(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    net.unload()
    return seq[0, len(ids):].tolist()


def test_composition_named_in_the_request(world):
    client, base = world["client"], str(world["model_dir"])
    weights = {"task0": 0.9, "task1": -0.6, "task2": 0.7}
    ids = world["tok"]("Q: what is the capital of France?\nA:", add_special_tokens=False)["input_ids"]
    want = _greedy(world["model"], ids, _independent_composition(
        world["hub"], weights, world["root"] / "independent"), 16)
    spec = {"lorahub": {"modules": weights, "rule": "lorahub"}}
    out = client.completions.create(model=base, prompt=ids, max_tokens=16, temperature=0,
                                    extra_body={"ignore_eos": True, "return_token_ids": True, **spec})
    assert list(out.choices[0].token_ids) == want
    name = out.model
    assert name.startswith("lh-") and name in {m.id for m in client.models.list().data}
    chat = client.chat.completions.create(model=base, messages=[{"role": "user", "content": "cat"}],
                                          max_tokens=3, temperature=0, extra_body=spec)
    assert chat.model == name  # the same content, the same cached composition

    bad = [({"modules": {"nope": 1.0}}, "unknown hub module"),
           ({"modules": {"task0": 50}}, "finite number"),
           ({"modules": {f"m{i}": 0.1 for i in range(40)}}, "give 1 to 32"),
           ({"modules": weights, "rule": "linear"}, "rank 12 .* above this server's --max-lora-rank 8"),
           ({"modules": weights, "rule": "sum"}, "'lorahub' or 'linear'")]
    for spec_bad, message in bad:
        with pytest.raises(openai.BadRequestError, match=message) as e:
            client.completions.create(model=base, prompt="the", max_tokens=2,
                                      extra_body={"lorahub": spec_bad})
        assert e.value.body["param"] == "lorahub"
    for literal in ("NaN", "Infinity"):  # JSON extensions the openai client will not send
        r = httpx.post(f"{world['url']}/v1/completions", headers={**AUTH, "content-type":
                       "application/json"}, timeout=30, content=(
            f'{{"model": "{base}", "prompt": "the", "max_tokens": 2, '
            f'"lorahub": {{"modules": {{"task0": {literal}}}}}}}').encode())
        assert r.status_code == 400 and "finite number" in _error(r)["message"], r.text
    with pytest.raises(openai.BadRequestError, match="must be the base model's name"):
        client.completions.create(model="stored", prompt="the", max_tokens=2, extra_body=spec)
    assert _post(world, {"name": "lh-mine", "examples": EXAMPLES}).status_code == 400


def _scrape(world) -> dict[str, float]:
    """`/metrics` as {series: value} (Prometheus text format)."""
    r = httpx.get(f"{world['url']}/metrics", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:200]
    series = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def test_metrics_hold_the_adaptation_jobs_and_compositions(world):
    """After a job and a composition (made once, then a cache hit), `/metrics` counts them, in
    Prometheus format, beside vLLM's own metrics."""
    before = _scrape(world)
    assert _post(world, {"name": "metered", "examples": EXAMPLES, "budget": 4}).status_code == 202
    assert _wait(world, "metered")["state"] == "succeeded"
    spec = {"lorahub": {"modules": {"task2": 0.3, "task3": 0.9}}}
    for _ in range(2):
        world["client"].completions.create(model=str(world["model_dir"]), prompt="the",
                                           max_tokens=2, extra_body=spec)
    after = _scrape(world)

    def grew(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    assert grew('lorahub_adapt_jobs{state="succeeded"}') == 1
    assert after['lorahub_adapt_jobs{state="running"}'] == 0
    assert grew('lorahub_adapt_jobs_finished_total{state="succeeded"}') == 1
    assert grew('lorahub_adapt_job_duration_seconds_count{state="succeeded"}') == 1
    assert grew("lorahub_adapt_search_evaluations_per_second_count") == 1
    assert grew("lorahub_adapt_search_evaluations_per_second_sum") > 0
    assert grew("lorahub_compositions_made_total") == 1
    assert grew("lorahub_composition_cache_hits_total") == 1
    assert any(k.startswith("vllm:") for k in after), "vLLM's own metrics should be there too"


LOAD_PROMPTS = ["Q: what is the capital of France?\nA:", "Q: is the cat blue?\nA:",
                "Q: sort the words: dog cat\nA:"]
COMPOSED = {"lorahub": {"modules": {"task1": 0.8, "task3": -0.5}}}


def _load_round(world, clients: int, requests: int, tokens: int = 8) -> dict:
    """`clients` threads x `requests` greedy completions over base / stored / composition while two
    adaptation jobs are in flight; every answer must equal the same request sent alone."""
    from concurrent.futures import ThreadPoolExecutor

    client, base = world["client"], str(world["model_dir"])
    kinds = {"base": (base, {}), "stored": ("stored", {}), "composed": (base, COMPOSED)}
    prompts = [world["tok"](p, add_special_tokens=False)["input_ids"] for p in LOAD_PROMPTS]

    def ask(kind, prompt):
        model, extra = kinds[kind]
        t0 = time.perf_counter()
        out = client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0,
                                        extra_body={"ignore_eos": True, "return_token_ids": True,
                                                    **extra})
        return list(out.choices[0].token_ids), time.perf_counter() - t0

    alone = {(k, i): ask(k, p)[0] for k in kinds for i, p in enumerate(prompts)}
    for name in ("load-a", "load-b"):
        assert _post(world, {"name": name, "examples": EXAMPLES, "budget": 100_000}).status_code == 202
    _wait(world, "load-a", until=("running",), check=lambda j: j["evaluations"] > 0)
    plan = [(list(kinds)[(c + r) % 3], (c * requests + r) % len(prompts))
            for c in range(clients) for r in range(requests)]
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda kp: ask(kp[0], prompts[kp[1]]), plan))
    states = [_job(world, n)["state"] for n in ("load-a", "load-b")]
    for name in ("load-a", "load-b"):
        assert httpx.delete(f"{world['url']}/v1/adapters/{name}", headers=AUTH, timeout=60).status_code == 200
    assert states == ["running", "queued"], states  # both jobs in flight for the whole round
    wrong = [(k, i) for (k, i), (ids, _) in zip(plan, answers) if ids != alone[(k, i)]]
    assert not wrong, f"{len(wrong)} of {len(plan)} answers differ from the same request alone: {wrong}"
    lat = sorted(t for _, t in answers)
    return {"clients": clients, "requests": len(plan), "tokens": tokens,
            "p50_s": lat[len(lat) // 2], "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def test_concurrent_clients_mix_models_while_jobs_run(world):
    figures = _load_round(world, clients=4, requests=3)
    print(f"load: {figures}")


@pytest.mark.slow
def test_load_long_variant_records_latency(world):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from _meta import write_result

    figures = _load_round(world, clients=8, requests=12, tokens=16)
    md = (f"{figures['clients']} concurrent `openai` clients, {figures['requests']} greedy "
          f"completions of {figures['tokens']} tokens over the base model, a stored adapter and a "
          "composition named in the request, while two adaptation jobs were in flight (one "
          "running, one queued); tiny random Llama (tests/serving/test_adapt_service.py). Every "
          f"answer equalled the same request sent alone.\n\np50 {figures['p50_s']:.3f} s, "
          f"p99 {figures['p99_s']:.3f} s")
    write_result("serve_load", figures, md)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), so that none of a killed server's is left."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_kill_9_during_a_job_then_restart(world):
    store = world["store"]
    assert _post(world, {"name": "kept", "examples": EXAMPLES, "budget": 4}).status_code == 202
    assert _wait(world, "kept")["state"] == "succeeded"
    assert _post(world, {"name": "cut", "examples": EXAMPLES, "budget": 100_000}).status_code == 202
    assert _post(world, {"name": "after", "examples": EXAMPLES, "budget": 4}).status_code == 202
    _wait(world, "cut", until=("running",), check=lambda j: j["evaluations"] > 0)

    srv = world["srv"]
    below = _descendants(srv.proc.pid)
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(30)
    deadline = time.monotonic() + 60
    while [p for p in below if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {p: _cmdline(p) for p in below if _alive(p)}
    for pid in left:  # started by this test's server: never leave them running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # The adaptation worker dies with the server (EOF on its stdin, PR_SET_PDEATHSIG); vLLM's
    # engine core does not watch the API server, and the reaper (serving/reaper.py) kills it.
    assert not left, f"processes outlived the killed server: {left}"
    (store / ".kept.tmp-deadbeef").mkdir()  # what a kill during an atomic write leaves
    (store / ".kept.tmp-deadbeef" / "adapter_config.json").write_text("{}")

    _start(world, "serve-2.log")
    assert not (store / ".kept.tmp-deadbeef").exists()
    kept, cut = _job(world, "kept"), _job(world, "cut")
    assert kept["state"] == "succeeded" and isinstance(kept["loss"], float)
    assert cut["state"] in ("queued", "running") and cut["attempts"] in (1, 2), cut
    assert "server stopped during attempt 1" in cut["note"], cut
    _wait(world, "cut", until=("running",), check=lambda j: j["attempts"] == 2)
    r = httpx.delete(f"{world['url']}/v1/adapters/cut", headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert _wait(world, "after")["state"] == "succeeded"
    out = world["client"].completions.create(model="after", prompt="the cat", max_tokens=3)
    assert out.model == "after"
    for child in store.iterdir():  # no half adapter: every visible folder is servable
        assert child.name == ".jobs" or not child.name.startswith("."), child
        if not child.name.startswith("."):
            assert (child / "adapter_model.safetensors").is_file(), child
    records = [json.loads(p.read_text()) for p in (store / ".jobs").glob("*/job.json")]
    assert all(r["state"] in ("succeeded", "failed", "cancelled") for r in records), records
