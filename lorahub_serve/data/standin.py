"""A synthetic stand-in for the BIG-bench task files, for tests and offline runs.

PyPI no longer serves the `bigbench==1.0.0` sdist that holds the real task files. So that the
test suite runs anywhere (no network, no copy of the data), `write_standin(root)` writes a folder
of task folders (`<root>/<task>/task.json`, the layout `LORAHUB_BIGBENCH` accepts) whose files
follow the BIG-bench JSON schema but whose content is generated here, seeded by the task's name:
nothing in it is BIG-bench text. Every file says so: `"lorahub_serve_standin": true` and its
description.

What the loader and the tests rely on is reproduced: each BBH task's answer kind (word labels,
letters, labels that are letters, options that change per example listed right answer first,
counts spelt as words, word_sorting's own prefixes), the twins of the headroom suite (answers of
`plural_regular_json` inside `plural_json`'s), a two-option `fact_checker/politifact` of 400
examples, the hub build's short and too-long tasks. Every task follows one consistent rule
(generative ones: a copy, a plural with "s", a sum, ...; multiple choice: the largest number, the
member of a category, ...) so that a model can learn it. Numbers measured on it say nothing about
BIG-bench.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import sys
from pathlib import Path

from lorahub_serve import paths
from lorahub_serve.data import bigbench
from lorahub_serve.data.bbh import BBH_TASKS

MARKER = "lorahub_serve_standin"
N_EXAMPLES = 250  # enough for the suite's n_eval >= 100 (eval_size takes at most half)

# Task names the tests use literally, beyond the project's own task lists.
TEST_TASKS: tuple[str, ...] = (
    "fact_checker/politifact", "linguistic_mappings/plural_regular_json",
    "linguistic_mappings/past_tense_regular_json", "color/rgb", "arithmetic/2_digit_addition",
    "bbq_lite_json/age_disambig", "unit_conversion/si_conversion", "strategyqa", "tense",
    "cause_and_effect/one_sentence",
)

# ---------------------------------------------------------------------------------- word lists
# Our own short lists; pseudo-words come from syllables.

ANIMALS = ("cat", "dog", "horse", "rabbit", "tiger", "parrot", "goat", "sheep", "camel", "otter",
           "zebra", "mouse", "eagle", "shark", "whale", "frog", "lizard", "snail", "bear", "wolf")
FRUITS = ("apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "peach", "pear", "plum",
          "kiwi", "lime", "fig", "apricot", "papaya", "orange")
TOOLS = ("hammer", "saw", "wrench", "drill", "chisel", "pliers", "shovel", "rake", "ladder", "file")
INSTRUMENTS = ("violin", "piano", "flute", "drum", "trumpet", "guitar", "harp", "cello", "tuba", "oboe")
VEHICLES = ("car", "bus", "truck", "bicycle", "tram", "ferry", "scooter", "train", "van", "canoe")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "brown", "pink",
          "gray", "teal")
CATEGORIES = {"animal": ANIMALS, "fruit": FRUITS, "tool": TOOLS, "instrument": INSTRUMENTS,
              "vehicle": VEHICLES}
NOUNS = ("table", "window", "garden", "letter", "candle", "basket", "river", "pencil", "mirror",
         "bottle", "jacket", "lamp", "bridge", "kettle", "blanket", "ticket", "wallet", "ladder",
         "carpet", "button", "hat", "chair", "clock", "door", "book", "cup", "box", "key", "map", "road")
ADJECTIVES = ("small", "old", "quiet", "bright", "heavy", "soft", "warm", "tall", "round", "clean",
              "early", "brave", "gentle", "plain", "rapid", "calm")
VERBS = ("walk", "jump", "paint", "climb", "cook", "clean", "open", "watch", "push", "pull", "call",
         "visit", "play", "help", "carry", "wash", "fix", "count", "plant", "start")
NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hugo", "Iris", "Jonas", "Karl",
         "Lena", "Mila", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor")
FEMALE = frozenset({"Anna", "Clara", "Emma", "Greta", "Iris", "Lena", "Mila", "Olga", "Rosa", "Tina"})
PLACES = ("park", "library", "museum", "bakery", "station", "beach", "office", "market", "gym", "cafe")
SPORTS = {"soccer": ("scored a header", "took a corner kick", "made a sliding tackle"),
          "basketball": ("made a layup", "hit a three pointer", "grabbed a rebound"),
          "tennis": ("served an ace", "hit a backhand volley", "won the tiebreak"),
          "baseball": ("hit a home run", "stole second base", "threw a curveball"),
          "hockey": ("took a slapshot", "scored on the power play", "won the faceoff")}
_CONS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                 "eighteen", "nineteen", "twenty")


def _rng(key: str) -> random.Random:
    return random.Random(f"lorahub-serve-standin:{key}")  # str seeds are stable across runs


def _pseudo(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(syllables))


def _pseudo_words(key: str, n: int, syllables=(2, 3)) -> list[str]:
    rng, out, seen = _rng(key), [], set()
    while len(out) < n:
        w = _pseudo(rng, rng.choice(syllables))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def _a(word: str) -> str:
    return f"an {word}" if word[0] in _VOWELS else f"a {word}"


def _sentence(rng: random.Random) -> str:
    return (f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} is near the "
            f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}")


# ------------------------------------------------------------------------------- example makers
# Each maker takes an rng and returns an example dict, or None to draw again.

def _mc(question: str, correct: str, wrong: list[str]) -> dict:
    """Multiple choice, the right answer listed first (as many real files do)."""
    scores = {correct: 1}
    for w in wrong:
        scores.setdefault(w, 0)
    return {"input": question, "target_scores": scores}


def _labels(question: str, labels: tuple[str, ...], right: int) -> dict:
    """A fixed label set in a fixed order, one of them right."""
    return {"input": question, "target_scores": {lab: int(j == right) for j, lab in enumerate(labels)}}


def _gen(question: str, target) -> dict:
    return {"input": question, "target": target}


def _binary_rule(kind: int):
    """A yes/no rule: (rng) -> (question, answer is the first label)."""
    def greater(rng):
        a, b = rng.sample(range(1000), 2)
        return f"Is {a} greater than {b}?", a > b

    def even(rng):
        n = rng.randrange(10, 10000)
        return f"Is {n} an even number?", n % 2 == 0

    def vowel(rng):
        w = _pseudo(rng, rng.choice((2, 3))) if rng.random() < 0.5 else rng.choice("aeiou") + _pseudo(rng, 2)
        return f"Does the word {w} start with a vowel?", w[0] in _VOWELS

    def member(rng):
        items = rng.sample(ANIMALS + FRUITS, 5)
        probe = rng.choice(items) if rng.random() < 0.5 else rng.choice(ANIMALS + FRUITS)
        return f"Is {probe} in the list {', '.join(items)}?", probe in items

    def category(rng):
        cat = rng.choice(sorted(CATEGORIES))
        c = cat if rng.random() < 0.5 else rng.choice(sorted(set(CATEGORIES) - {cat}))
        w, tag = rng.choice(CATEGORIES[c]), rng.randrange(100)
        return f"Item {tag}: is {_a(w)} a kind of {cat}?", c == cat

    return (greater, even, vowel, member, category)[kind % 5]


def _letter_rule(kind: int, n_opts: tuple[int, ...] = (3, 4, 5)):
    """A multiple-choice rule with options that change per example: (rng) -> example."""
    def largest(rng):
        nums = rng.sample(range(1000), rng.choice(n_opts))
        return _mc(f"Which number is the largest of {', '.join(map(str, rng.sample(nums, len(nums))))}?",
                   str(max(nums)), [str(x) for x in nums if x != max(nums)])

    def first_alpha(rng):
        words = _pseudo_words(f"alpha{rng.random()}", rng.choice(n_opts))
        return _mc("Which word comes first in alphabetical order?", min(words),
                   [w for w in words if w != min(words)])

    def member(rng):
        cat = rng.choice(sorted(CATEGORIES))
        others = [w for c, ws in CATEGORIES.items() if c != cat for w in ws]
        return _mc(f"Which of these is {_a(cat)}?", rng.choice(CATEGORIES[cat]),
                   rng.sample(others, rng.choice(n_opts) - 1))

    def longest(rng):
        k = rng.choice(n_opts)
        lengths = rng.sample(range(2, 9), k)
        words = [_pseudo(rng, n)[: n + 1] for n in lengths]
        best = max(words, key=len)
        return _mc("Which word is the longest?", best, [w for w in words if w != best])

    def plus(rng):
        a, b = rng.randrange(1, 50), rng.randrange(1, 50)
        wrong = rng.sample([a + b + d for d in (-3, -2, -1, 1, 2, 3, 10)], rng.choice(n_opts) - 1)
        return _mc(f"What is {a} plus {b}?", str(a + b), [str(w) for w in wrong])

    return (largest, first_alpha, member, longest, plus)[kind % 5]


def _pig_latin(word: str) -> str:
    return word + "ay" if word[0] in _VOWELS else word[1:] + word[0] + "ay"


def _gen_rule(kind: int):
    """A generative rule: (rng) -> example."""
    def copy(rng):
        s = _sentence(rng)
        return _gen(s, s)

    def reverse(rng):
        words = _sentence(rng).split()
        return _gen(" ".join(words), " ".join(reversed(words)))

    def add(rng):
        a, b = rng.randrange(100), rng.randrange(100)
        return _gen(f"{a} + {b} =", str(a + b))

    def sort_words(rng):
        words = rng.sample(NOUNS, 4)
        return _gen(" ".join(words), " ".join(sorted(words)))

    def initials(rng):
        words = rng.sample(NOUNS + ANIMALS, 4)
        return _gen(" ".join(words), "".join(w[0] for w in words))

    def count(rng):
        words = rng.sample(NOUNS, rng.randrange(2, 9))
        return _gen(f"How many words: {' '.join(words)}", str(len(words)))

    def pig(rng):
        words = rng.sample(NOUNS + ANIMALS, 2)
        return _gen(" ".join(words), " ".join(map(_pig_latin, words)))

    def last(rng):
        words = rng.sample(NOUNS + FRUITS, 5)
        return _gen(" ".join(words), words[-1])

    return (copy, reverse, add, sort_words, initials, count, pig, last)[kind % 8]


# ------------------------------------------------------------------------------------ BBH tasks

def _causal_judgment(rng):
    who, machine = rng.choice(NAMES), rng.choice(("lamp", "fan", "radio", "heater", "pump"))
    when = _clock(rng.randrange(6, 22))
    if rng.random() < 0.5:
        story = f"At {when} the {machine} was off. {who} pressed its switch, and the {machine} turned on."
        yes = True
    else:
        story = (f"At {when} the {machine} was already on. {who} pressed a switch on the wall, and "
                 "nothing changed.")
        yes = False
    return _labels(f"{story} Did {who} cause the {machine} to be on?", ("Yes", "No"), 0 if yes else 1)


def _formal_fallacies(rng):
    a, b, c = _pseudo_words(f"ff{rng.random()}", 3)
    if rng.random() < 0.5:
        arg = f"Every {a} is a {b}. Every {b} is a {c}. Therefore, every {a} is a {c}."
        valid = True
    else:
        arg = f"Every {a} is a {b}. Some {c} is a {b}. Therefore, some {c} is a {a}."
        valid = False
    return _labels(f"Is the argument deductively valid or invalid? {arg}", ("valid", "invalid"),
                   0 if valid else 1)


def _navigate(rng):
    steps = [rng.randrange(1, 8) for _ in range(rng.randrange(1, 4))]
    back = sum(steps) if rng.random() < 0.5 else sum(steps) + rng.choice((-2, -1, 1, 2))
    moves = [f"Take {s} steps forward." for s in steps] + [f"Take {max(back, 1)} steps backward."]
    home = max(back, 1) == sum(steps)
    return _labels("If you follow these instructions, do you return to the starting point? "
                   f"Always face forward. {' '.join(moves)}", ("True", "False"), 0 if home else 1)


def _sports(rng):
    sport = rng.choice(sorted(SPORTS))
    player = f"{rng.choice(NAMES)} {_pseudo(rng, 2).capitalize()}"
    if rng.random() < 0.5:
        action, ok = rng.choice(SPORTS[sport]), True
    else:
        action, ok = rng.choice(SPORTS[rng.choice([s for s in SPORTS if s != sport])]), False
    return _labels(f"Is the following sentence plausible? \"{player}, the {sport} player, {action}.\"",
                   ("plausible", "implausible"), 0 if ok else 1)


def _date_understanding(rng):
    day = datetime.date(1990, 1, 1) + datetime.timedelta(days=rng.randrange(12000))
    shift = rng.choice((1, 2, 3, 7, 10, 14, 30))
    when = "later" if rng.random() < 0.5 else "earlier"
    right = day + datetime.timedelta(days=shift if when == "later" else -shift)
    fmt = "%m/%d/%Y"
    wrong = []
    for d in (1, -1, 31, 365, -365, shift * 2 + 1, -(shift * 2 + 1)):
        cand = (right + datetime.timedelta(days=d)).strftime(fmt)
        if cand != right.strftime(fmt) and cand not in wrong:
            wrong.append(cand)
    wrong = rng.sample(wrong, 5)
    return _mc(f"Today is {day.strftime(fmt)}. What is the date {shift} days {when} in MM/DD/YYYY?",
               right.strftime(fmt), wrong)


def _temporal_sequences(rng):
    who = rng.choice(NAMES)
    hours = sorted(rng.sample(range(5, 22), 5))
    slots = [f"{_clock(hours[j])} to {_clock(hours[j + 1])}" for j in range(4)]
    free = rng.randrange(4)
    places = rng.sample(PLACES, 4)
    seen = [f"From {slots[j]}, {who} was seen at the {places[j]}." for j in range(4) if j != free]
    goal = places[free]
    return _mc(f"{who} woke up at {_clock(hours[0])}. {' '.join(seen)} The {goal} closed after "
               f"{_clock(hours[4])}. Between what times could {who} have gone to the {goal}?",
               slots[free], [s for j, s in enumerate(slots) if j != free])


def _clock(h: int) -> str:
    return f"{h % 12 or 12}{'am' if h < 12 else 'pm'}"


def _disambiguation(rng):
    x, y = rng.sample(NAMES, 2)
    px, py = ("she" if x in FEMALE else "he"), ("she" if y in FEMALE else "he")
    pron = rng.choice((px, py))
    sentence = f"{x} told {y} that {pron} would be late."
    if px == py:
        right = "Ambiguous"
    else:
        right = f"{x} would be late" if pron == px else f"{y} would be late"
    opts = [f"{x} would be late", f"{y} would be late", "Ambiguous"]
    return _mc(f"In the following sentence, explain the antecedent of the pronoun. Sentence: {sentence}",
               right, [o for o in opts if o != right])


_CLOSE = {"(": ")", "[": "]", "{": "}", "<": ">"}


def _dyck(rng):
    stack = rng.choices(sorted(_CLOSE), k=rng.randrange(2, 6))
    right = " ".join(_CLOSE[c] for c in reversed(stack))
    wrong = set()
    while len(wrong) < 29:  # more options than letters: answered in text (as the real file's)
        cand = " ".join(rng.choices(sorted(_CLOSE.values()), k=rng.randrange(1, 7)))
        if cand != right:
            wrong.add(cand)
    return _mc(f"Complete the rest of the sequence, making sure that the parentheses are closed "
               f"properly. Input: {' '.join(stack)}", right, sorted(wrong))


_SHAPES = ("line", "triangle", "square", "pentagon", "hexagon", "heptagon", "octagon", "nonagon")


def _geometric_shapes(rng):
    n = rng.randrange(2, 10)
    pts = " ".join(f"({rng.randrange(90)},{rng.randrange(90)})" for _ in range(n))
    close = "" if n == 2 else " and back to the first"
    return _labels(f"A path joins the points {pts}{close}. What does it draw?", _SHAPES, n - 2)


def _hyperbaton(rng):
    size, color = rng.choice(("big", "small", "tall", "tiny")), rng.choice(COLORS)
    material, noun = rng.choice(("wooden", "plastic", "paper", "glass")), rng.choice(NOUNS)
    good = f"{size} {color} {material} {noun}"  # size, then color, then material
    bad = f"{material} {size} {color} {noun}" if rng.random() < 0.5 else f"{color} {material} {size} {noun}"
    right = rng.choice("ab")
    a, b = (good, bad) if right == "a" else (bad, good)
    return {"input": f"Which sentence has the correct adjective order: a \"a {a}\" b \"a {b}\"?",
            "target_scores": {"a": int(right == "a"), "b": int(right == "b")}}


def _snarks(rng):
    thing, place = rng.choice(NOUNS), rng.choice(PLACES)
    plain = f"I lost my {thing} at the {place} again, which is annoying."
    snark = f"Oh great, I lost my {thing} at the {place} again, just what I needed."
    right = rng.choice(("(a)", "(b)"))
    a, b = (snark, plain) if right == "(a)" else (plain, snark)
    return {"input": f"Which statement is sarcastic? Options: (a) {a} (b) {b}",
            "target_scores": {"(a)": int(right == "(a)"), "(b)": int(right == "(b)")}}


def _logical_deduction(n: int):
    def make(rng):
        objs = rng.sample(ANIMALS + FRUITS + TOOLS, n)
        clues = [f"The {objs[j]} is left of the {objs[j + 1]}." for j in range(n - 1)]
        rng.shuffle(clues)
        ask = rng.randrange(n)
        where = {0: "leftmost", n - 1: "rightmost"}.get(ask, f"number {ask + 1} from the left")
        opts = [f"The {o} is the {where}" for o in objs]
        return _mc(f"{n} objects stand on a shelf in a row. {' '.join(clues)} Which is {where}?",
                   opts[ask], [o for j, o in enumerate(opts) if j != ask])
    return make


def _tracking(n: int):
    def make(rng):
        people, balls = rng.sample(NAMES, n), rng.sample(COLORS, n)
        holding = dict(zip(people, balls))
        start = " ".join(f"{p} has a {b} ball." for p, b in holding.items())
        swaps = []
        for _ in range(n):
            p, q = rng.sample(people, 2)
            holding[p], holding[q] = holding[q], holding[p]
            swaps.append(f"{p} and {q} swap balls.")
        who = rng.choice(people)
        right = f"{holding[who]} ball"
        return _mc(f"{start} {' '.join(swaps)} At the end, what does {who} have?", right,
                   [f"{b} ball" for b in balls if f"{b} ball" != right])
    return make


def _movie(rng):
    nouns = rng.sample(NOUNS, 4)
    given = [f"The {a.capitalize()} {nouns[0].capitalize()}" for a in rng.sample(ADJECTIVES, 3)]
    right = f"The {rng.choice(ADJECTIVES).capitalize()} {nouns[0].capitalize()} Returns"
    wrong = [f"The {rng.choice(ADJECTIVES).capitalize()} {m.capitalize()}" for m in nouns[1:]]
    return _mc(f"Find a movie similar to {', '.join(given)}:", right, wrong)


def _penguins(rng):
    names = rng.sample(NAMES, 5)
    ages = rng.sample(range(1, 15), 5)
    rows = "\n".join(f"{n}, {a}, {rng.randrange(50, 90)}" for n, a in zip(names, ages))
    oldest = names[ages.index(max(ages))]
    return _mc(f"Here is a table of penguins (name, age, height):\n{rows}\nWhich penguin is the oldest?",
               oldest, [n for n in names if n != oldest])


def _colored_objects(rng):
    things = rng.sample(NOUNS, 3)
    colors = rng.sample(COLORS, 3)
    scene = ", ".join(f"a {c} {t}" for c, t in zip(colors, things))
    ask = rng.randrange(3)
    extra = rng.sample([c for c in COLORS if c not in colors], rng.randrange(1, 4))
    return _mc(f"On the desk, you see {scene}. What is the color of the {things[ask]}?", colors[ask],
               [c for c in colors if c != colors[ask]] + extra)


def _ruin_names(rng):
    name = " ".join(w.capitalize() for w in rng.sample(NOUNS, 2))
    right = name[:-1] + name[-1] * 2
    wrong = [" ".join(w.capitalize() for w in rng.sample(NOUNS, 2)) for _ in range(3)]
    return _mc(f"Which of the following is a humorous edit of this name: '{name}'?", right, wrong)


_ERRORS = ("Modifiers or Adjectives", "Numerical Values", "Negation or Antonyms", "Named Entities",
           "Dropped Content", "Facts")


def _salient(rng):
    who, adj, n, noun = rng.choice(NAMES), rng.choice(ADJECTIVES), rng.randrange(2, 20), rng.choice(NOUNS)
    src = f"{who} bought {n} {adj} {noun}s in the city."
    kind = rng.randrange(6)
    wrong = [f"{who} bought {n} {rng.choice([a for a in ADJECTIVES if a != adj])} {noun}s in the city.",
             f"{who} bought {n + rng.randrange(1, 9)} {adj} {noun}s in the city.",
             f"{who} did not buy {n} {adj} {noun}s in the city.",
             f"{rng.choice([m for m in NAMES if m != who])} bought {n} {adj} {noun}s in the city.",
             f"{who} bought {n} {noun}s.",
             f"{who} sold {n} {adj} {noun}s in the city."][kind]
    return _labels(f"Source: {src} Translation: {wrong} The translation contains an error of which type?",
                   _ERRORS, kind)


def _object_counting(rng):
    picked = rng.sample(FRUITS + ANIMALS, rng.randrange(3, 7))
    counts = [rng.randrange(1, 5) for _ in picked]
    ask = rng.choice(("fruits", "animals"))
    pool = FRUITS if ask == "fruits" else ANIMALS
    total = sum(c for w, c in zip(picked, counts) if w in pool)
    if total == 0 or total > 20:
        return None
    items = ", ".join(f"{_NUMBER_WORDS[c]} {w}" if c > 1 else f"a {w}" for w, c in zip(picked, counts))
    return _gen(f"I have {items}. How many {ask} do I have?", _NUMBER_WORDS[total])


def _word_sorting(rng):
    words = rng.sample(NOUNS + ANIMALS + FRUITS + TOOLS, rng.randrange(3, 10))
    return _gen(" ".join(words), " ".join(sorted(words)))


BBH_MAKERS = {
    "causal_judgment": _causal_judgment, "date_understanding": _date_understanding,
    "disambiguation_qa": _disambiguation, "dyck_languages": _dyck,
    "formal_fallacies_syllogisms_negation": _formal_fallacies, "geometric_shapes": _geometric_shapes,
    "hyperbaton": _hyperbaton, "movie_recommendation": _movie, "navigate": _navigate,
    "object_counting": _object_counting, "penguins_in_a_table": _penguins,
    "reasoning_about_colored_objects": _colored_objects, "ruin_names": _ruin_names,
    "salient_translation_error_detection": _salient, "snarks": _snarks,
    "sports_understanding": _sports, "temporal_sequences": _temporal_sequences,
    "word_sorting": _word_sorting,
    **{f"logical_deduction/{w}_objects": _logical_deduction(n) for w, n in (("three", 3), ("five", 5), ("seven", 7))},
    **{f"tracking_shuffled_objects/{w}_objects": _tracking(n) for w, n in (("three", 3), ("five", 5), ("seven", 7))},
}


# ----------------------------------------------------------------- the headroom suite's families

def _plural(word: str) -> str:
    if word.endswith("y"):
        return word[:-1] + "ies"
    if word.endswith(("x", "sh", "ch", "s")):
        return word + "es"
    return word + "s"


def _plural_nouns() -> list[str]:
    """300 pseudo-nouns: most take "s", some "es", some "y" -> "ies"."""
    rng = _rng("plural-nouns")
    out = []
    for w in _pseudo_words("plural", 300):
        r = rng.random()
        out.append(w + rng.choice(("x", "sh", "ch")) if r < 0.2 else w[:-1] + "y" if r < 0.35 else w)
    return out


def _past(verb: str) -> str:
    return verb + "d" if verb.endswith("e") else verb + "ed"


_DE_PRONOUNS = (("ich", "e", "te"), ("du", "st", "test"), ("wir", "en", "ten"))


def _de_pairs() -> list[tuple[str, str]]:
    """(present, past) of 100 pseudo-German stems with three pronouns each."""
    ends = _rng("de-ends").choices("lkmnr", k=100)
    stems = [w[:-1] + end for w, end in zip(_pseudo_words("de-stems", 100), ends)]
    return [(f"{p} {s}{now}", f"{p} {s}{then}") for s in stems for p, now, then in _DE_PRONOUNS]


def _linguistic(task: str) -> tuple[list[dict], dict]:
    """(examples, extra fields) of a linguistic_mappings task."""
    sub = task.split("/", 1)[1] if "/" in task else ""
    rng = _rng(task)
    if sub == "plural_json":
        return [_gen(w, _plural(w)) for w in _plural_nouns()], {}
    if sub == "plural_regular_json":  # the regular ones of plural_json's nouns, in another frame
        regular = [w for w in _plural_nouns() if _plural(w) == w + "s"]
        return ([_gen(w, w + "s") for w in regular[:200]],
                {"task_prefix": "Write the plural of the noun."})
    if sub in ("past_tense_json", "past_tense_regular_json"):
        verbs = [w + ("e" if j % 4 == 0 else "") for j, w in enumerate(_pseudo_words("past", 300))]
        if sub == "past_tense_regular_json":
            return [_gen(v, _past(v)) for v in verbs if not v.endswith("e")][:200], \
                {"task_prefix": "Write the verb in the past tense."}
        return [_gen(v, _past(v)) for v in verbs], {}
    if sub == "de_past_tense_json":
        return [_gen(now, then) for now, then in _de_pairs()], {}
    if sub == "de_past_tense_regular_json":  # a subset of de_past_tense_json, in another frame
        pairs = _rng("de-regular").sample(_de_pairs(), 200)
        return ([_gen(now, then) for now, then in pairs],
                {"task_prefix": "Put the German verb in the past tense."})
    if sub == "sentence_negation_json":
        out = []
        for _ in range(N_EXAMPLES):
            noun, adj = rng.choice(NOUNS + ANIMALS), rng.choice(ADJECTIVES + COLORS)
            out.append(_gen(f"the {noun} is {adj}.", f"the {noun} is not {adj}."))
        return out, {}
    if sub == "question_formation_json":
        sentences = [_sentence(rng) for _ in range(N_EXAMPLES)]  # "the X is near the Y"
        return [_gen(f"{s}.", "is " + s.replace(" is ", " ", 1) + "?") for s in sentences], {}
    if sub == "pronoun_replacement_json":
        out = []
        for _ in range(N_EXAMPLES):
            who, verb, thing = rng.choice(NAMES), rng.choice(VERBS), rng.choice(NOUNS)
            pron = "She" if who in FEMALE else "He"
            out.append(_gen(f"{who} {verb}s the {thing}.", f"{pron} {verb}s the {thing}."))
        return out, {}
    return [_gen_rule(_kind(task))(rng) for _ in range(N_EXAMPLES)], {}


_IO = {"example_input_prefix": "Input: ", "example_output_prefix": "\nOutput: "}


def _unnatural(task: str) -> list[dict]:
    sub = task.split("/", 1)[1] if "/" in task else ""
    rng = _rng(task)
    out = []
    for _ in range(N_EXAMPLES):
        day = datetime.date(1950, 1, 1) + datetime.timedelta(days=rng.randrange(30000))
        nxt = day + datetime.timedelta(days=1)
        iso = day.isoformat()
        if sub == "dates":
            out.append(_gen(iso, day.strftime("%m/%d/%Y")))
        elif sub == "dates_unnatural_form":
            out.append(_gen(iso, day.strftime("%d!%m!%Y")))
        elif sub == "dates_unnatural_content":
            out.append(_gen(iso, nxt.isoformat()))
        elif sub == "dates_unnatural_content_and_form":
            out.append(_gen(iso, nxt.strftime("%d!%m!%Y")))
        elif sub.startswith("unnatural_addition"):
            a, b = rng.randrange(10, 100), rng.randrange(10, 100)
            out.append(_gen(f"{a} + {b}", str(a + b + 1)))
        elif sub == "reverse_natural_content":
            words = _sentence(rng).split()
            out.append(_gen(" ".join(words), " ".join(reversed(words))))
        elif sub == "reverse_to_natural_content":
            words = _sentence(rng).split()
            out.append(_gen(" ".join(reversed(words)), " ".join(words)))
        else:  # identity and the rest: copy the input
            seq = " ".join(rng.sample(NOUNS + COLORS + ANIMALS, rng.randrange(2, 6)))
            out.append(_gen(seq, seq))
    return out


_DIGITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}


def _modified_arithmetic(task: str) -> list[dict]:
    """`<n>_digit_<op>_<control|plus_one>`: the sum/difference/product, plus one when asked."""
    sub = task.split("/", 1)[1] if "/" in task else "two_digit_addition_control"
    digits = next((v for k, v in _DIGITS.items() if sub.startswith(k)), 2)
    op = next((o for o in ("addition", "subtraction", "multiplication") if o in sub), "addition")
    plus = 1 if "plus_one" in sub else 0
    rng = _rng(task)
    out = []
    for _ in range(N_EXAMPLES):
        a, b = (rng.randrange(10 ** (digits - 1), 10 ** digits) for _ in range(2))
        sym, val = {"addition": ("+", a + b), "subtraction": ("-", a - b),
                    "multiplication": ("*", a * b)}[op]
        out.append(_gen(f"{a} {sym} {b} =", str(val + plus)))
    return out


def _arithmetic_mc(task: str):
    """arithmetic/<n>_digit_<op>: multiple choice over nearby numbers."""
    sub = task.split("/", 1)[1] if "/" in task else "1_digit_addition"
    digits = int(sub[0]) if sub[:1].isdigit() else 1
    op = next((o for o in ("addition", "subtraction", "multiplication", "division") if o in sub), "addition")

    def make(rng):
        a, b = (rng.randrange(10 ** (digits - 1) if digits > 1 else 1, 10 ** digits) for _ in range(2))
        sym, val = {"addition": ("plus", a + b), "subtraction": ("minus", a - b),
                    "multiplication": ("times", a * b), "division": ("times", a * b)}[op]
        wrong = rng.sample([val + d for d in (-3, -2, -1, 1, 2, 3, 10)], 4)
        return _mc(f"What is {a} {sym} {b}?", str(val), [str(w) for w in wrong])
    return make


def _word_unscrambling(rng):
    word = rng.choice(NOUNS + ANIMALS + FRUITS + TOOLS)
    letters = list(word)
    rng.shuffle(letters)
    return _gen(f"The word {''.join(letters)} is a scrambled version of the English word", word)


def _pig_latin_decode(rng):
    words = rng.sample(NOUNS + ANIMALS, 2)
    return _gen(" ".join(map(_pig_latin, words)), " ".join(words))


def _tense(rng):
    who, verb, place = rng.choice(("I", "We", "They")), rng.choice(VERBS), rng.choice(PLACES)
    return _gen(f"Change the sentence to the past tense: {who} {verb} at the {place}.",
                f"{who} {_past(verb)} at the {place}.")


def _intent(rng):
    """Long utterances: every example needs well over 100 tokens of the tests' tiny tokenizer."""
    intents = ("book a table", "play music", "check the weather", "set an alarm", "order food",
               "call a taxi", "find a hotel", "pay a bill")
    right = rng.choice(intents)
    filler = " ".join(rng.choice(NOUNS + ADJECTIVES + COLORS) for _ in range(70))
    return _mc(f"Utterance: well, {filler}, anyway I would like to {right} now. What is the intent?",
               right, rng.sample([i for i in intents if i != right], 3))


_SENTIMENT = {"positive": ("lovely", "great", "wonderful"), "negative": ("awful", "dirty", "rude"),
              "neutral": ("ordinary", "standard", "average"), "ambivalent": ("mixed", "uneven", "so-so")}


def _multiemo(rng):
    labels = tuple(_SENTIMENT)
    right = rng.randrange(4)
    thing = rng.choice(("room", "staff", "breakfast", "view", "service", "price"))
    word = rng.choice(_SENTIMENT[labels[right]])
    return _labels(f"Review: the {thing} was {word}, {rng.choice(NOUNS)} {rng.randrange(100)}. "
                   "What is the sentiment?", labels, right)


# ------------------------------------------------------------------------------- every other task

TEXT_FAMILIES = frozenset({"fact_checker", "intersect_geometry", "multiemo"})
TEXT_TASKS = frozenset({
    "abstract_narrative_understanding/99_distractors", "anachronisms", "analytic_entailment",
    "dark_humor_detection", "empirical_judgments", "entailed_polarity", "entailed_polarity_hindi",
    "epistemic_reasoning", "fantasy_reasoning", "hinglish_toxicity", "implicatures",
    "irony_identification", "logical_fallacy_detection", "mathematical_induction", "metaphor_boolean",
    "misconceptions", "moral_permissibility", "movie_dialog_same_or_different",
    "periodic_elements/subtask_0", "presuppositions_as_nli", "sentence_ambiguity", "social_support",
    "strange_stories/boolean", "strategyqa", "vitaminc_fact_verification", "winowhy",
    "cs_algorithms/valid_parentheses",
})
GEN_FAMILIES = frozenset({
    "linguistic_mappings", "unnatural_in_context_learning", "modified_arithmetic", "natural_instructions",
    "language_games", "gem", "list_functions", "simp_turing_concept", "chess_state_tracking",
    "mult_data_wrangling", "undo_permutation",
})
GEN_TASKS = frozenset({
    "ascii_word_recognition", "auto_categorization", "auto_debugging", "bridging_anaphora_resolution_barqa",
    "chinese_remainder_theorem", "codenames", "cryptonite", "few_shot_nlg", "gender_inclusive_sentences_german",
    "hindi_question_answering", "international_phonetic_alphabet_transliterate",
    "kanji_ascii/kanji_ascii_pronunciation", "matrixshapes", "operators", "periodic_elements/subtask_1",
    "physics_questions", "qa_wikidata", "rephrase", "scientific_press_release", "sufficient_information",
    "tense", "topical_chat", "word_unscrambling", "parsinlu_reading_comprehension",
})
N_EXAMPLES_OF = {"fact_checker/politifact": 400}  # its test wants 200 + 200 (eval_size's cap is 250)


def _kind(task: str) -> int:
    return _rng(f"kind:{task}").randrange(1000)


def kind_of(task: str) -> str:
    """"text" (a fixed, small label set), "letter" (options per example) or "generative"."""
    fam = task.split("/")[0]
    if task in BBH_MAKERS:
        return "bbh"
    if task in GEN_TASKS or fam in GEN_FAMILIES:
        return "generative"
    if task in TEXT_TASKS or fam in TEXT_FAMILIES:
        return "text"
    return "letter"


def _examples_and_extra(task: str) -> tuple[list[dict], dict]:
    fam, n = task.split("/")[0], N_EXAMPLES_OF.get(task, N_EXAMPLES)
    if fam == "linguistic_mappings":
        return _linguistic(task)
    if fam == "unnatural_in_context_learning":
        return _unnatural(task), dict(_IO)
    if fam == "modified_arithmetic":
        return _modified_arithmetic(task), {}
    extra: dict = {}
    if task in BBH_MAKERS:
        maker = BBH_MAKERS[task]
        if task == "word_sorting":
            extra = {"task_prefix": "Sort the following words alphabetically:",
                     "example_input_prefix": "\nList: ", "example_output_prefix": "\nSorted: "}
    elif fam == "arithmetic":
        maker = _arithmetic_mc(task)
    elif task == "intent_recognition":
        maker = _intent
    elif fam == "multiemo":
        maker = _multiemo
    elif task == "word_unscrambling":
        maker = _word_unscrambling
    elif task == "language_games/pig_latin_decode":
        maker = _pig_latin_decode
    elif task == "language_games/pig_latin_encode":
        maker = _gen_rule(6)
    elif task == "tense":
        maker = _tense
    elif kind_of(task) == "generative":
        maker = _gen_rule(_kind(task))
    elif kind_of(task) == "text":
        rule = _binary_rule(_kind(task))
        labels = ("true", "false") if fam == "fact_checker" else ("Yes", "No")

        def maker(rng, rule=rule, labels=labels):
            question, first = rule(rng)
            return _labels(question, labels, 0 if first else 1)
    else:
        maker = (_letter_rule(0, (11,)) if task == "language_identification"  # eleven options
                 else _letter_rule(_kind(task)))
    return _draw(maker, _rng(task), n), extra


def _draw(maker, rng: random.Random, n: int) -> list[dict]:
    """n distinct examples where the maker can give them (tries a bounded number)."""
    out, seen = [], set()
    for _ in range(20 * n):
        ex = maker(rng)
        key = None if ex is None else (ex["input"], tuple(ex.get("target_scores", ())), str(ex.get("target")))
        if key is None or key in seen:
            continue
        seen.add(key)
        out.append(ex)
        if len(out) == n:
            break
    return out


def make_task(task: str) -> dict:
    """The stand-in task.json of `task` (any name: unknown ones get a generic task of their kind)."""
    examples, extra = _examples_and_extra(task)
    mc = any("target_scores" in e for e in examples)
    return {
        "name": task,
        "description": (f"Synthetic stand-in for the BIG-bench task {task}, generated by "
                        "lorahub_serve.data.standin (seeded by the task's name). It is not BIG-bench "
                        "data: use it for tests, never for results."),
        MARKER: True,
        "keywords": ["synthetic stand-in"],
        "metrics": ["multiple_choice_grade"] if mc else ["exact_str_match"],
        "preferred_score": "multiple_choice_grade" if mc else "exact_str_match",
        **extra,
        "examples": examples,
    }


def default_tasks() -> tuple[str, ...]:
    """BBH, the tests' own task names and any committed suite manifest's tasks. The hub's and the
    suite's candidate lists live above this layer (hub/, eval/ import data/, not the reverse):
    whoever needs them passes them to `write_standin` (tests/conftest.py does)."""
    names = set(BBH_TASKS) | set(TEST_TASKS)
    suites = paths.repo_root() / "suites"
    for manifest in sorted(suites.glob("*.json")) if suites.is_dir() else ():
        try:
            names.update(c["task"] for c in json.loads(manifest.read_text())["candidates"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return tuple(sorted(names))


def write_standin(root: Path, tasks=None) -> Path:
    """Write `<root>/<task>/task.json` for `tasks` (default: `default_tasks()`); returns `root`,
    a folder `LORAHUB_BIGBENCH` can name. Same names, same bytes, on every run."""
    root = Path(root)
    for task in sorted(set(default_tasks() if tasks is None else tasks)):
        folder = root / task
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "task.json").write_text(json.dumps(make_task(task), ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    return root


def is_standin(task: str) -> bool:
    """True when `task` is read from a stand-in file (its marker), as the loader reads it now."""
    return bigbench.read_task_json(task).get(MARKER) is True


def standin_active() -> bool:
    """True when `LORAHUB_BIGBENCH` names a stand-in. Never downloads: without the variable the
    data is the cache's copy of the sdist, real by construction."""
    source = os.environ.get(bigbench.SOURCE_ENV)
    if not source:
        return False
    try:
        tasks = bigbench.list_tasks()
        return bool(tasks) and is_standin(tasks[0])
    except (bigbench.BigBenchUnavailable, OSError, ValueError):
        return False


def warn_if_active(command: str) -> bool:
    """One warning line on stderr when a command that trains modules or makes figures reads the
    stand-in (a LORAHUB_BIGBENCH left pointing at it, e.g. at the demo's copy); True then."""
    if not standin_active():
        return False
    print(f"[{command}] warning: {bigbench.SOURCE_ENV}={os.environ[bigbench.SOURCE_ENV]} is the "
          "generated stand-in, not BIG-bench: what this run makes says nothing about BIG-bench",
          file=sys.stderr)
    return True


__all__ = ["MARKER", "default_tasks", "is_standin", "kind_of", "make_task", "standin_active",
           "warn_if_active", "write_standin"]

