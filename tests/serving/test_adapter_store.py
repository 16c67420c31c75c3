"""Adapter names and store vetting, without a server."""

import json
import os

import pytest

from lorahub_serve import testing
from lorahub_serve.serving.names import AdapterNameError, adapter_dir, check_name
from lorahub_serve.serving.store import AdapterRefused, AdapterStore, BaseModelShapes


@pytest.mark.parametrize("name", ["a", "task_1", "my-adapter.v2", "A" * 64, "9lives"])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", ".hidden", "a" * 65, "x y", "é",
                                  "a\\b", "a\x00", None, 3])
def test_bad_names(name):
    with pytest.raises(AdapterNameError, match="adapter name"):
        check_name(name)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store holding: ok (rank 4), big (rank 32), alien (other base), pickled, escape (symlink)."""
    root = tmp_path_factory.mktemp("store_unit")
    base_dir, other_dir = root / "base", root / "other"
    model, _ = testing.tiny_llama(base_dir, hidden=128)
    other, _ = testing.tiny_llama(other_dir, hidden=64)
    store = root / "store"
    testing.random_adapter(model, store / "ok", rank=4)
    testing.random_adapter(model, store / "big", rank=32)
    testing.random_adapter(other, store / "alien", rank=4)
    testing.random_adapter(model, root / "outside", rank=4)
    pickled = testing.random_adapter(model, store / "pickled", rank=4)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    os.symlink(root / "outside", store / "escape")
    (store / ".jobs").mkdir()
    return AdapterStore(store, BaseModelShapes.from_folder(base_dir), max_rank=16)


def test_inspect_servable(store):
    info = store.inspect("ok")
    assert info.rank == 4 and len(info.modules) == 4  # q, v in 2 layers
    assert store.inspect("missing") is None
    assert store.names() == ["alien", "big", "ok", "pickled"]  # not .jobs, not escape
    assert [i.name for i in store.servable()] == ["ok"]


@pytest.mark.parametrize("name, message", [
    ("big", r"rank 32, above this server's --max-lora-rank 16"),
    ("alien", r"made for another base model"),
    ("pickled", r"only adapter_model.bin \(pickle\)"),
])
def test_refusals(store, name, message):
    with pytest.raises(AdapterRefused, match=message):
        store.inspect(name)


def test_no_path_leaves_the_store(store):
    with pytest.raises(AdapterNameError, match="outside the adapter store"):
        store.inspect("escape")
    with pytest.raises(AdapterNameError):
        adapter_dir(store.root, "../ok")


def test_fingerprint_mismatch(store):
    (store.root / "ok" / "lorahub.json").write_text(json.dumps(
        {"base_model": "someone-else", "base_model_sha256": "0" * 64}))
    try:
        with pytest.raises(AdapterRefused, match="someone-else"):
            store.inspect("ok")
        (store.root / "ok" / "lorahub.json").write_text(json.dumps(
            {"base_model_sha256": store.base.fingerprint, "best_loss": 1.5}))
        assert store.inspect("ok").rank == 4
    finally:
        (store.root / "ok" / "lorahub.json").unlink()
