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
                        "--max-loras", 2, "--", "--max-model-len", CONTEXT],
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
    model, _ = testing.tiny_llama_for_vllm(world["model_dir"])
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
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


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
