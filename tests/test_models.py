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
