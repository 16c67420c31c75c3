"""`lorahub-serve hub build` on a tiny Llama with reasoning-gym tasks: in process and on Ray.

Tokenized with the tiny word-level tokenizer, 1-digit sums and number sequences fit in 100 tokens
while every rectangle_count question (an ASCII drawing) is longer, so that task must be skipped
and replaced.
"""

import json

import pytest
import torch

from lorahub_serve.engine.hub import read_manifest, stack_modules
from lorahub_serve.hub import build as hub_build
from lorahub_serve.hub import train as hub_train
from lorahub_serve.hub.train import TrainConfig
from lorahub_serve.models import load_base
from lorahub_serve.prompting import pad_id

# 10 steps at lr 1e-2 lower the tiny model's held-out loss by ~0.45 (about 4.7 -> 4.25), in ~0.5 s a module
CFG = TrainConfig(rank=4, alpha=8, steps=10, lr=1e-2, batch_size=2, max_length=100)
MIN_HELDOUT_DROP = 0.2
HELDOUT = []  # filled by `built`, per module trained in order: (its held-out rows, the loss measured on them)


@pytest.fixture(scope="module")
def built(tiny_llama_dir, tmp_path_factory):
    """The default-list path: 2 modules wanted, the unusable task in between is replaced."""
    hub = tmp_path_factory.mktemp("built") / "hub"
    HELDOUT.clear()
    logs = []
    mp = pytest.MonkeyPatch()
    mp.setattr(hub_build, "DEFAULT_HUB_TASKS", ("rg/basic_arithmetic@add-1d", "rg/rectangle_count",
                                                "rg/number_sequence@short", "rg/products@1d"))
    mean_loss = hub_train.mean_loss

    def recorded(model, rows, pad, batch_size):  # what train_lora measures its held-out loss on
        loss = mean_loss(model, rows, pad, batch_size)
        HELDOUT.append((list(rows), loss))
        return loss

    mp.setattr(hub_train, "mean_loss", recorded)
    torch.set_num_threads(1)
    try:
        hub_build.build_hub(str(tiny_llama_dir), hub, n_modules=2, cfg=CFG, log=logs.append)
    finally:
        mp.undo()
    return hub, logs


def test_unusable_task_is_replaced_by_the_next(built):
    hub, logs = built
    manifest = json.loads((hub / "hub.json").read_text())
    assert [m["source_task"] for m in manifest["modules"]] == ["rg/basic_arithmetic@add-1d", "rg/number_sequence@short"]
    assert any("skipped rg/rectangle_count" in line and "usable examples" in line for line in logs)
    for m in manifest["modules"]:
        assert m["rank"] == 4 and m["steps"] == CFG.steps and m["final_loss"] > 0 and len(m["sha256"]) == 64


def test_built_hub_loads_as_a_stack_in_float16(built, tiny_llama_dir):
    hub, _ = built
    from safetensors.torch import load_file

    for m in read_manifest(hub):
        tensors = load_file(hub / "modules" / m.name / "adapter_model.safetensors")
        assert {t.dtype for t in tensors.values()} == {torch.float16}
    net, _ = load_base(tiny_llama_dir)
    stack = stack_modules(net, read_manifest(hub))
    assert all(stack.lora_b[layer].abs().sum() > 0 for layer in stack.layers)  # B moved off zero


def test_resume_trains_nothing_new(built, tiny_llama_dir):
    hub, _ = built
    before = (hub / "hub.json").read_text()
    logs = []
    hub_build.build_hub(str(tiny_llama_dir), hub, n_modules=2, cfg=CFG, log=logs.append)
    assert logs == [f"[hub] 2 modules present, 0 to train into {hub}"]
    assert (hub / "hub.json").read_text() == before


def test_bad_task_lists_are_refused_before_training(tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="held out for evaluation"):
        hub_build.build_hub(str(tiny_llama_dir), tmp_path / "h", tasks=["bbh/navigate"], cfg=CFG)
    with pytest.raises(ValueError, match="held out for evaluation"):  # BBH as BIG-bench names it
        hub_build.build_hub(str(tiny_llama_dir), tmp_path / "h", tasks=["navigate"], cfg=CFG)
    for reserved in ("rg/chain_sum", "rg/family_relationships", "rg/aiw", "arithmetic/1_digit_addition"):
        with pytest.raises(ValueError, match="reserved for an independent check"):
            hub_build.build_hub(str(tiny_llama_dir), tmp_path / "h", tasks=["rg/gcd@le20", reserved], cfg=CFG)
    with pytest.raises(ValueError, match="unknown tasks"):
        hub_build.build_hub(str(tiny_llama_dir), tmp_path / "h", tasks=["rg/no_such_task"], cfg=CFG)
    with pytest.raises(ValueError, match="curated list has"):
        hub_build.build_hub(str(tiny_llama_dir), tmp_path / "h", n_modules=10_000, cfg=CFG)
    assert not (tmp_path / "h").exists()


@pytest.mark.ray
def test_ray_actors_add_modules_to_an_existing_hub(built, tiny_llama_dir, tmp_path):
    import functools
    import shutil

    import ray

    from lorahub_serve.cluster.hub_trainers import trainer_pool

    hub = tmp_path / "hub"
    shutil.copytree(built[0], hub)
    logs = []
    trainers = functools.partial(trainer_pool, str(tiny_llama_dir), 2)
    try:
        hub_build.build_hub(str(tiny_llama_dir), hub, tasks=["rg/basic_arithmetic@add-1d", "rg/products@1d",
                                                             "rg/basic_arithmetic@add3-1d"],
                            cfg=CFG, log=logs.append, trainers=trainers)
    finally:
        ray.shutdown()
    assert logs[0] == f"[hub] 2 modules present, 2 to train into {hub} (on 2 Ray actors)"
    names = sorted(m.source_task for m in read_manifest(hub))
    assert names == ["rg/basic_arithmetic@add-1d", "rg/basic_arithmetic@add3-1d", "rg/number_sequence@short",
                     "rg/products@1d"]
    net, _ = load_base(tiny_llama_dir)
    stack = stack_modules(net, read_manifest(hub))
    assert all(len(stack.lora_a[layer]) == 4 for layer in stack.layers)


def test_modules_record_answer_format_held_out_loss_and_provenance(built):
    from lorahub_serve.data import rg

    hub, _ = built
    for m in json.loads((hub / "hub.json").read_text())["modules"]:
        assert m["answer_style"] == ""  # generated tasks answer in free text
        assert m["heldout_examples"] > 0 and m["heldout_loss"] > 0 and m["heldout_accuracy"] is not None
        dataset, config = m["source_task"].removeprefix("rg/").split("@")
        assert m["task_source"] == "rg" and m["provenance"]["dataset"] == dataset
        assert m["provenance"]["config"] == config and m["provenance"]["seed"] == rg.DATA_SEED
        assert m["provenance"]["version"] == rg.VERSION and m["provenance"]["params"]


def test_training_lowers_the_held_out_loss_below_the_base_model(built, tiny_llama_dir):
    """Each module's recorded held-out loss is below the base model's loss on the same rows
    (rows the module never trained on), by at least MIN_HELDOUT_DROP."""
    hub, _ = built
    modules = json.loads((hub / "hub.json").read_text())["modules"]
    assert len(HELDOUT) == len(modules)  # one held-out measurement per module trained
    net, tok = load_base(tiny_llama_dir)
    for m, (rows, loss) in zip(modules, HELDOUT):
        assert m["heldout_loss"] == round(loss, 4) and m["heldout_examples"] == len(rows)  # these rows
        base = hub_train.mean_loss(net, rows, pad_id(tok), CFG.batch_size)
        assert m["heldout_loss"] < base - MIN_HELDOUT_DROP, (m["source_task"], m["heldout_loss"], base)


def test_heldout_backfill_rebuilds_the_training_split(built, tiny_llama_dir, tmp_path):
    """A hub recorded without held-out accuracy gets it from `hub heldout`: the rebuilt split's loss
    matches the loss recorded at training time, so the accuracy is measured on the same rows the
    module never trained on. A recorded loss that does not match is reported and nothing is written."""
    import shutil

    from lorahub_serve.hub.heldout import backfill_heldout

    hub, _ = built
    old = tmp_path / "old"
    shutil.copytree(hub, old)
    manifest = json.loads((old / "hub.json").read_text())
    trained = {m["name"]: dict(m) for m in manifest["modules"]}
    for m in manifest["modules"]:
        m.pop("heldout_accuracy"), m.pop("heldout_metric")
    manifest["modules"][1]["heldout_loss"] += 1.0  # as if its task's data had changed since
    (old / "hub.json").write_text(json.dumps(manifest))
    report = backfill_heldout(str(tiny_llama_dir), old, log=lambda *_: None, progress=False)
    first, second = (m["name"] for m in manifest["modules"])
    assert report.measured == [first] and report.mismatched == [second]
    after = {m["name"]: m for m in json.loads((old / "hub.json").read_text())["modules"]}
    assert after[first]["heldout_backfilled"] is True
    assert after[first]["heldout_metric"] == trained[first]["heldout_metric"]
    # float16 storage after training moves an answer or two at most on these ~20 held-out examples
    assert abs(after[first]["heldout_accuracy"] - trained[first]["heldout_accuracy"]) <= 10.0
    assert "heldout_accuracy" not in after[second]
    again = backfill_heldout(str(tiny_llama_dir), old, log=lambda *_: None, progress=False)
    assert again.measured == [] and again.mismatched == [second]  # resumable: measured ones stay
    # a module trained on every example (held-out rows included) is refused, whatever its loss
    manifest = json.loads((old / "hub.json").read_text())
    manifest["modules"][1]["heldout_loss"] -= 1.0
    manifest["modules"][1]["train_examples"] += manifest["modules"][1]["heldout_examples"]
    (old / "hub.json").write_text(json.dumps(manifest))
    logs = []
    third = backfill_heldout(str(tiny_llama_dir), old, log=logs.append, progress=False)
    assert third.mismatched == [second] and any("saw its held-out rows" in line for line in logs)


@pytest.mark.usefixtures("bigbench_fixtures")  # a BIG-bench task with its own frame (Input:/Output:)
def test_format_robust_training_swaps_a_seeded_share_of_rows_to_the_generic_frame(tiny_llama_dir):
    from lorahub_serve.data import bigbench

    _, tok = load_base(tiny_llama_dir)
    task = "unnatural_in_context_learning/dates"
    natural, generic = bigbench.load_task(task)[:80], bigbench.load_task(task, generic=True)[:80]
    cfg = TrainConfig(max_length=100, generic_share=0.5)
    rows, held, held_examples, sources = hub_train._split(tok, natural, cfg)
    assert (rows, held, held_examples) == hub_train.heldout_split(tok, natural, cfg)
    as_generic = {i: hub_train.encode_rows(tok, [generic[i]], 100)[0] for i in sources}
    assert all(as_generic[s] != r for s, r in zip(sources, rows))  # the two frames encode differently

    mixed, swapped = hub_train.format_mixed_rows(tok, rows, sources, generic, cfg)
    assert 0.3 * len(rows) < swapped < 0.7 * len(rows)
    assert sum(m == as_generic[s] for m, s in zip(mixed, sources)) == swapped
    assert sum(m == r for m, r in zip(mixed, rows)) == len(rows) - swapped
    assert hub_train.format_mixed_rows(tok, rows, sources, generic, cfg) == (mixed, swapped)  # seeded
    everything = TrainConfig(max_length=100, generic_share=1.0)
    assert hub_train.format_mixed_rows(tok, rows, sources, generic, everything)[1] == len(rows)
    with pytest.raises(ValueError, match="generic_share"):
        TrainConfig(generic_share=1.5)


@pytest.mark.usefixtures("bigbench_fixtures")
def test_a_format_robust_module_records_its_share_and_keeps_the_natural_held_out_split(tiny_llama_dir, tmp_path):
    cfg = TrainConfig(rank=4, alpha=8, steps=4, lr=1e-2, batch_size=2, max_length=100, generic_share=0.5)
    hub = tmp_path / "hub"
    hub_build.build_hub(str(tiny_llama_dir), hub, tasks=["unnatural_in_context_learning/dates"], cfg=cfg,
                        log=lambda *_: None)
    (entry,) = json.loads((hub / "hub.json").read_text())["modules"]
    assert entry["generic_share"] == 0.5
    assert 0.3 * entry["train_examples"] < entry["generic_rows"] < 0.7 * entry["train_examples"]
    assert entry["heldout_examples"] == min(32, (entry["train_examples"] + entry["heldout_examples"]) // 5)
    assert entry["heldout_loss"] > 0 and entry["task_source"] == "bigbench"


def test_a_hub_from_your_own_examples_needs_no_big_bench(tiny_llama_dir, tmp_path):
    """`hub build --examples-dir DIR`: one module per DIR/NAME.jsonl, trained and recorded like a
    BIG-bench module (held-out loss, answer format), with BIG-bench unreachable; a second run
    resumes (nothing left), and the hub loads as a stack."""
    import os
    import random
    import subprocess
    import sys

    words = ["cat", "dog", "red", "blue", "green", "left", "right", "up", "down", "the"]
    rng = random.Random(0)
    own = tmp_path / "own"
    own.mkdir()
    with open(own / "copy.jsonl", "w") as f:
        for _ in range(60):
            xs = " ".join(rng.sample(words, 3))
            f.write(json.dumps({"input": f"Q: {xs}\nA:", "output": f" {xs}"}) + "\n")
    with open(own / "is_red.jsonl", "w") as f:
        for _ in range(60):
            w = rng.choice(words)
            f.write(json.dumps({"input": f"Q: is {w} red?\nOptions: yes, no\nA:",
                                "output": " yes" if w == "red" else " no", "options": ["yes", "no"]}) + "\n")
    hub = tmp_path / "hub"
    env = {**os.environ, "LORAHUB_BIGBENCH": str(tmp_path / "no-big-bench-here")}
    cmd = [sys.executable, "-m", "lorahub_serve.cli", "hub", "build", "--model", str(tiny_llama_dir),
           "--out", str(hub), "--examples-dir", str(own), "--rank", "4", "--steps", "10", "--lr", "1e-2",
           "--max-length", "100"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    modules = {m["source_task"]: m for m in json.loads((hub / "hub.json").read_text())["modules"]}
    assert set(modules) == {"copy", "is_red"}
    assert modules["copy"]["answer_style"] == "" and modules["is_red"]["answer_style"] == "text"
    for m in modules.values():
        assert m["task_source"] == "examples" and m["heldout_examples"] > 0 and m["heldout_loss"] > 0
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and "0 to train" in again.stdout + again.stderr
    model, _ = load_base(tiny_llama_dir)
    stack = stack_modules(model, read_manifest(hub))
    assert len(stack.modules) == 2 and all(stack.lora_b[layer].abs().sum() > 0 for layer in stack.layers)

    centroids = subprocess.run([sys.executable, "-m", "lorahub_serve.cli", "hub", "centroids", "--model",
                                str(tiny_llama_dir), "--hub", str(hub), "--examples-dir", str(own)],
                               env=env, capture_output=True, text=True, timeout=300, check=False)
    assert centroids.returncode == 0 and "2 centroids computed" in centroids.stdout, centroids.stderr[-1000:]

    no_files = [str(tmp_path) if x == str(own) else x for x in cmd]  # a folder without NAME.jsonl
    bad = subprocess.run(no_files, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "no NAME.jsonl files" in bad.stderr
