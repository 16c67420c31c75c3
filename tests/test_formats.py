"""The on-disk formats module: light, one definition of each name, clear errors."""

import json
import subprocess
import sys

import pytest

from lorahub_serve import formats
from lorahub_serve.formats import HubError


def test_importing_it_imports_neither_torch_nor_ray():
    code = "import sys, lorahub_serve.formats, lorahub_serve.serving.store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_peft_keys_round_trip():
    layer = "model.layers.0.self_attn.q_proj"
    assert formats.peft_key(layer, "A") == f"base_model.model.{layer}.lora_A.weight"
    assert formats.peft_layer(formats.peft_key(layer, "B")) == (layer, "B")
    assert formats.peft_layer("base_model.model.lm_head.weight") == ("", "")


@pytest.mark.parametrize(("name", "ok"), [("task-1.v2", True), ("a" * 64, True), ("a" * 65, False),
                                          (".jobs", False), ("..", False), ("a/b", False), ("", False),
                                          (3, False)])
def test_name_rule(name, ok):
    assert formats.valid_name(name) is ok


def test_hub_json_read_write_and_errors(tmp_path):
    assert formats.read_hub_json(tmp_path) is None
    assert formats.read_hub_json(tmp_path, missing_ok=True) == {"format": formats.HUB_FORMAT, "modules": []}
    manifest = {"format": 1, "modules": [{"name": "a", "path": "modules/a"}]}
    formats.write_hub_json(tmp_path, manifest)
    assert formats.read_hub_json(tmp_path) == manifest
    for text, message in [("{", "is not readable JSON"), ("[]", 'no "modules" list'),
                          ('{"modules": [{"name": "a"}]}', r"modules\[0\] lacks \['path'\]")]:
        (tmp_path / formats.HUB_FILE).write_text(text)
        with pytest.raises(HubError, match=message):
            formats.read_hub_json(tmp_path)


def test_lorahub_json_is_provenance_only(tmp_path):
    assert formats.read_lorahub_json(tmp_path) is None
    (tmp_path / formats.LORAHUB_FILE).write_text("not json")
    assert formats.read_lorahub_json(tmp_path) is None  # unreadable: ignored, never fatal
    formats.write_lorahub_json(tmp_path, {"weights": [0.5]})
    assert json.loads((tmp_path / formats.LORAHUB_FILE).read_text()) == {"weights": [0.5]}
    assert not formats.is_adapter(tmp_path)
