"""`serve --replicas`: each replica's server gets the same options (no server, no Ray), and
requests are routed by the adapter they name."""

import json

import pytest

from lorahub_serve.cli import build_parser
from lorahub_serve.serving.cli import serve_config
from lorahub_serve.serving.replicas import child_options, route_key


def test_a_replica_server_gets_every_option_but_its_address(tmp_path):
    (tmp_path / "hub").mkdir()
    given = ["serve", "--model", "m", "--store", str(tmp_path / "s"), "--hub", str(tmp_path / "hub"),
             "--host", "0.0.0.0", "--port", "9000", "--api-key", "k", "--max-loras", "3",
             "--max-lora-rank", "32", "--adapt-timeout", "60", "--adapt-workers", "2",
             "--adapt-queue", "5", "--replicas", "4", "--dtype", "float32", "--token-budget", "512",
             "--truncate", "--rule", "linear", "--", "--max-model-len", "256"]
    a = build_parser().parse_args(given)
    assert a.replicas == 4
    cfg = serve_config(a)
    child = serve_config(build_parser().parse_args(["serve", *child_options(cfg, 4321, "10.0.0.1:6379")]))
    want = {**vars(cfg), "host": "127.0.0.1", "port": 4321, "ray_address": "10.0.0.1:6379",
            "store": (tmp_path / "s").resolve(), "hub": (tmp_path / "hub").resolve()}
    assert {k: getattr(child, k) for k in want} == want
    assert child.engine == cfg.engine and child.vllm_args == ("--max-model-len", "256")


@pytest.mark.parametrize("path, body, key", [
    ("/v1/completions", {"model": "base", "prompt": "x"}, ""),
    ("/v1/completions", {"model": "my-task", "prompt": "x"}, "my-task"),
    ("/v1/chat/completions", {"model": "my-task", "messages": []}, "my-task"),
    ("/v1/adapters", {"name": "my-task", "examples": []}, ""),
    ("/v1/completions", None, ""),
    ("/v1/completions", [1, 2], ""),
])
def test_requests_are_routed_by_the_adapter_they_name(path, body, key):
    raw = json.dumps(body).encode() if body is not None else b"{not json"
    assert route_key("base", path, raw) == key


def test_a_composition_is_routed_by_its_content():
    one = {"model": "base", "lorahub": {"modules": {"a": 0.5, "b": -1.0}}}
    same = {"lorahub": {"modules": {"b": -1.0, "a": 0.5}}, "model": "base", "prompt": "y"}
    other = {"model": "base", "lorahub": {"modules": {"a": 0.5, "b": -1.0}, "rule": "linear"}}
    keys = [route_key("base", "/v1/completions", json.dumps(b).encode()) for b in (one, same, other)]
    assert keys[0] == keys[1] != keys[2] and keys[0].startswith("lorahub:")
