"""`serve --ray-address local`: the adaptation worker is a Ray actor; its adapter is served."""

import time

import httpx
import openai
import pytest

from lorahub_serve import testing
from lorahub_serve.serving.process import ServeProcess, free_port

pytest.importorskip("vllm", reason="vLLM is not installed here")
pytest.importorskip("ray", reason="Ray is not installed here")
pytestmark = [pytest.mark.vllm, pytest.mark.ray]


def test_job_on_a_ray_actor_is_served(tmp_path):
    model, _ = testing.tiny_llama_for_vllm(tmp_path / "model")
    hub = testing.random_hub(model, tmp_path / "hub", n=3, scale=3.0)
    (tmp_path / "store").mkdir()
    srv = ServeProcess(["--model", tmp_path / "model", "--store", tmp_path / "store", "--hub", hub,
                        "--port", free_port(), "--ray-address", "local",
                        "--", "--max-model-len", 128], tmp_path / "serve.log")
    with srv:
        url = srv.url
        body = {"name": "viaray", "examples": [{"input": "Q: 2 and 3?\nA:", "output": " 5"}],
                "budget": 6}
        assert httpx.post(f"{url}/v1/adapters", json=body, timeout=60).status_code == 202
        deadline = time.monotonic() + 240
        while (job := httpx.get(f"{url}/v1/adapters/viaray", timeout=30).json())["state"] in (
                "queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job["state"] == "succeeded" and job["evaluations"] == 6, job
        assert "AdaptWorkerCore" in srv.log_path.read_text()  # the job ran in a Ray actor
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", timeout=60, max_retries=0)
        assert client.completions.create(model="viaray", prompt="the cat", max_tokens=3).choices
    assert srv.returncode == 0, srv.log_tail()
