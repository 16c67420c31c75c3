"""`serve --replicas 2`: a real local Ray cluster, Ray Serve, two replicas of the project's vLLM
server over one store, a tiny model. Any replica serves an adapter written after start and a
composition named in the request (asked on both at once: one stored adapter); a job posted to
the endpoint runs once and is served by both; one replica SIGKILLed under a bounded request loop
leaves every later request answered and the store clean."""

import json
import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from lorahub_serve import testing
from lorahub_serve.serving.process import ServeProcess, free_port
from lorahub_serve.serving.store import AdapterStore, BaseModelShapes

pytest.importorskip("vllm", reason="vLLM is not installed here")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed here")
pytestmark = [pytest.mark.vllm, pytest.mark.ray]

NEW_TOKENS = 8
PROMPT = "Q: what is the capital of France?\nA:"
EXAMPLES = [{"input": "Q: 2 and 3?\nA:", "output": " 5"}]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    model_dir, store = root / "model", root / "store"
    store.mkdir()
    model, tok = testing.tiny_llama_for_vllm(model_dir)
    hub = testing.random_hub(model, root / "hub", n=3, scale=3.0)
    srv = ServeProcess(["--model", model_dir, "--store", store, "--hub", hub, "--port", free_port(),
                        "--replicas", 2, "--", "--max-model-len", 128], root / "serve.log",
                       start_timeout_s=600)
    srv.start()
    logs = Path(re.search(r"replica logs (\S+?)\)", srv.log_path.read_text()).group(1))
    yield {"srv": srv, "model": model, "tok": tok, "model_dir": model_dir, "store": store,
           "hub": hub, "logs": logs, "root": root}
    status = srv.stop()
    assert status == 0, f"serve --replicas did not stop cleanly (status {status}):\n{srv.log_tail()}"
    time.sleep(2)
    servers = [json.loads(p.read_text())["server_pid"] for p in logs.glob("replica-*.json")]
    assert not [pid for pid in servers if _alive(pid)], "a replica's server outlived serve"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def _replicas(world) -> list[dict]:
    """The live replicas' {pid, server_pid, url} (each writes its file once its server is up)."""
    found = [json.loads(p.read_text()) for p in sorted(world["logs"].glob("replica-*.json"))]
    return [r for r in found if _alive(r["pid"])]


def _complete(url: str, model: str, ids, extra=None, timeout=120) -> httpx.Response:
    body = {"model": model, "prompt": ids, "max_tokens": NEW_TOKENS, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True, **(extra or {})}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=timeout)


def _ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["token_ids"]


def _store_is_clean(world) -> None:
    store = world["store"]
    hidden = [p.name for p in store.iterdir() if p.name.startswith(".") and p.name != ".jobs"]
    assert hidden == [], f"temporaries left in the store: {hidden}"
    checked = AdapterStore(store, BaseModelShapes.from_folder(world["model_dir"]), 16)
    for name in checked.names():
        assert checked.inspect(name) is not None, name  # whole and servable
    for record in (store / ".jobs").glob("adapt-*/job.json"):
        json.loads(record.read_text())  # every record readable


def test_an_adapter_written_after_start_is_served_by_both_replicas(world):
    replicas = _replicas(world)
    assert len(replicas) == 2, replicas
    model, tok = world["model"], world["tok"]
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    late = testing.random_adapter(model, world["store"] / "late", rank=4, seed=3, scale=2.0)
    want = testing.greedy_ids(model, ids, NEW_TOKENS, late)
    assert want != testing.greedy_ids(model, ids, NEW_TOKENS), "the adapter should change the output"
    for r in replicas:
        assert _ids(_complete(r["url"], "late", ids)) == want, r
    assert _ids(_complete(world["srv"].url, "late", ids)) == want  # and through the endpoint


def test_a_composition_asked_on_both_replicas_at_once_is_stored_once(world):
    replicas, ids = _replicas(world), [5, 6, 7]
    spec = {"lorahub": {"modules": {"task0": 0.8, "task1": -0.4, "task2": 0.6}}}
    base = str(world["model_dir"])
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda url: _complete(url, base, ids, spec),
                                [r["url"] for r in replicas] * 2))
    outputs = {tuple(_ids(a)) for a in answers}
    names = {a.json()["model"] for a in answers}
    assert len(outputs) == 1 and len(names) == 1, (outputs, names)
    stored = [p.name for p in world["store"].iterdir() if p.name.startswith("lh-")]
    assert stored == [names.pop()], stored
    assert _ids(_complete(world["srv"].url, base, ids, spec)) == list(outputs.pop())
    _store_is_clean(world)


def test_a_job_posted_to_the_endpoint_runs_once_and_is_served_by_both(world):
    url = world["srv"].url
    body = {"name": "posted", "examples": EXAMPLES, "budget": 6, "modules": 3}
    assert httpx.post(f"{url}/v1/adapters", json=body, timeout=60).status_code == 202
    again = httpx.post(f"{url}/v1/adapters", json=body, timeout=60)
    assert again.status_code == 409, again.text  # whichever replica took it, the name is busy
    deadline = time.monotonic() + 300
    while (job := httpx.get(f"{url}/v1/adapters/posted", timeout=30).json())["state"] in (
            "queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job["state"] == "succeeded" and job["attempts"] == 1 and job["evaluations"] == 6, job
    records = list((world["store"] / ".jobs").glob("adapt-*/job.json"))
    assert len(records) == 1, records
    for r in _replicas(world):
        assert _complete(r["url"], "posted", [5, 6]).status_code == 200, r
    ran_on_ray = [p for p in world["logs"].glob("replica-*.log") if "AdaptWorkerCore" in p.read_text()]
    assert ran_on_ray, "the replicas' adaptation workers should be Ray actors"
    metrics = httpx.get(f"{url}/metrics", timeout=30)
    assert metrics.status_code == 200 and 'lorahub_adapt_jobs{state="succeeded"} 1.0' in metrics.text


def test_the_endpoint_refuses_a_huge_body_before_reading_it(world):
    """A declared body over the Ingress's limit is a 413 in OpenAI's format, answered before the
    body is sent (the client here sends none of it)."""
    from lorahub_serve.cluster.serve_replicas import MAX_BODY_BYTES

    host, port = world["srv"].url.removeprefix("http://").rsplit(":", 1)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head + b'{"model": ')
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status, body = int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]
    assert status == 413, data[:300]
    assert json.loads(body)["error"]["code"] == 413 and b"larger than" in body


def test_a_replica_killed_under_load_costs_no_later_request(world):
    url, ids = world["srv"].url, [5, 6, 7]
    replicas = _replicas(world)
    assert len(replicas) == 2, replicas
    victim = replicas[0]
    results, lock = [], threading.Lock()
    killed_at = []

    def client(n: int) -> None:
        for i in range(12):
            started = time.monotonic()
            model = "late" if (n + i) % 2 else str(world["model_dir"])
            try:
                status = _complete(url, model, ids, timeout=120).status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            with lock:
                results.append((started, status))
            if n == 0 and i == 3:
                os.kill(victim["pid"], signal.SIGKILL)
                killed_at.append(time.monotonic())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert killed_at, "the replica was never killed"
    later = [s for started, s in results if started > killed_at[0]]
    assert len(later) >= 20 and all(s == 200 for s in later), later
    deadline = time.monotonic() + 20
    while _alive(victim["server_pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(victim["server_pid"]), "the killed replica's server outlived it"
    _store_is_clean(world)


@pytest.mark.slow
def test_ray_serve_replaces_the_killed_replica(world):
    """After the SIGKILL above, Ray Serve starts a replacement (a fresh vLLM: a minute or two on
    a 2-core CPU), and it serves what the store holds: the late adapter and the job's."""
    deadline = time.monotonic() + 420
    while len(replicas := _replicas(world)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(replicas) == 2, f"no replacement replica within 420 s: {replicas}"
    newest = max(world["logs"].glob("replica-*.json"), key=lambda p: p.stat().st_mtime)
    fresh = json.loads(newest.read_text())
    assert fresh in replicas
    for model in ("late", "posted"):
        assert _complete(fresh["url"], model, [5, 6]).status_code == 200, model
    _store_is_clean(world)
