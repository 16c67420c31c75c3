"""A task outside the hub whose answers are words: the adapted SmolLM2-135M answers in the task's
format and beats zero-shot (slow: needs the model in the cache and the committed default hub;
`pytest -m slow tests/test_smollm2_word_answers.py`).

The task is generated here ("is X a fruit or an animal?"), so no hub module has seen it. The base
model knows the categories but, zero-shot, answers in sentences ("Apple is a fruit."); five
examples and the search over the hub must teach it the one-word format.
"""

import random

import numpy as np
import pytest

from lorahub_serve import paths
from lorahub_serve.data.examples import Example
from lorahub_serve.models import ModelNotFoundError, resolve_model

pytestmark = [pytest.mark.slow, pytest.mark.model]

FRUITS = ["apple", "banana", "cherry", "mango", "pear", "peach", "plum", "grape", "lemon", "orange",
          "kiwi", "melon", "apricot", "papaya", "lime", "fig", "coconut", "pineapple", "raspberry", "strawberry"]
ANIMALS = ["horse", "tiger", "rabbit", "eagle", "shark", "elephant", "zebra", "monkey", "wolf", "camel",
           "dolphin", "lion", "sheep", "goat", "bear", "mouse", "giraffe", "parrot", "turtle", "snake"]
LABELS = ("fruit", "animal")


def word_task(seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    items = [(w, "fruit") for w in FRUITS] + [(w, "animal") for w in ANIMALS]
    rng.shuffle(items)
    out = []
    for word, label in items:
        opts = list(LABELS)
        rng.shuffle(opts)
        out.append(Example(f"Q: Is \"{word}\" a fruit or an animal?\nOptions: {', '.join(opts)}\nA:",
                           f" {label}", tuple(opts), "text"))
    return out


def first_word(answer: str) -> str:
    words = answer.strip().lower().replace(".", " ").replace(",", " ").split()
    return words[0] if words else ""


@pytest.fixture(scope="module")
def engine():
    try:
        resolve_model("smollm2-135m")
    except ModelNotFoundError:
        pytest.skip("SmolLM2-135M is not in the cache (lorahub-serve model fetch smollm2-135m)")
    from lorahub_serve.engine.adapt import Engine

    eng = Engine("smollm2-135m", paths.repo_root() / "hubs" / "smollm2-135m")
    yield eng
    eng.close()


def test_adapted_model_answers_in_the_tasks_words_and_beats_zero_shot(engine):
    from lorahub_serve.engine.generate import generate
    from lorahub_serve.engine.search import SearchConfig

    exs = word_task()
    shots, evalset = exs[:5], exs[5:]
    res = engine.adapt(shots, task="fruit-or-animal", config=SearchConfig(budget=40, seed=1), progress=False)
    idx = engine.module_indices([m.name for m in res.modules], 1)
    weights = np.stack([np.zeros(len(idx)), res.weights]).astype(np.float32)
    prompts = [e.input for e in evalset] * 2
    cands = [0] * len(evalset) + [1] * len(evalset)
    answers = generate(engine.evaluator, prompts, cands, np.tile(idx, (2, 1)), weights, max_new_tokens=6)
    zero, adapted = answers[:len(evalset)], answers[len(evalset):]
    golds = [e.output.strip() for e in evalset]
    in_format = np.mean([first_word(a) in LABELS for a in adapted])
    acc = {name: np.mean([first_word(a) == g for a, g in zip(ans, golds)])
           for name, ans in (("zero-shot", zero), ("adapted", adapted))}
    print(f"in format {in_format:.2f}, accuracy {acc}, zero-shot e.g. {zero[:3]}, adapted e.g. {adapted[:3]}")
    assert in_format >= 0.9, adapted
    assert acc["adapted"] > acc["zero-shot"], (acc, zero[:5], adapted[:5])
