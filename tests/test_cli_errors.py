"""Every command, given a missing model, a broken hub or a bad examples file, prints one line that
names the problem and exits 2: no traceback. Each case runs the real `lorahub-serve` as a user would."""

import json
import subprocess
import sys

import pytest

EXE = [sys.executable, "-m", "lorahub_serve.cli"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_llama_dir, tiny_llama_hub):
    d = tmp_path_factory.mktemp("cli_errors")
    good = d / "good.jsonl"
    good.write_text("\n".join(json.dumps({"input": f"q{i} ->", "output": " a"}) for i in range(3)) + "\n")
    bad = d / "bad.jsonl"
    bad.write_text('{"input": "q ->", "output": " a"}\n{"input": "no output"}\n')
    broken = d / "broken_hub"
    broken.mkdir()
    (broken / "hub.json").write_text("{ not json")
    tasks = d / "tasks.jsonl"
    tasks.write_text(json.dumps({"name": "t", "examples_path": str(good)}) + "\n{ not json\n")
    good_tasks = d / "good_tasks.jsonl"
    good_tasks.write_text(json.dumps({"name": "t", "examples_path": str(good)}) + "\n")
    return {"good": good, "bad": bad, "broken": broken, "model": tiny_llama_dir, "hub": tiny_llama_hub,
            "tasks": tasks, "good_tasks": good_tasks, "out": d / "out", "missing": d / "no-such-model"}


CASES = {
    "adapt, missing model": (["adapt", "--model", "{missing}", "--hub", "{hub}", "--examples", "{good}",
                              "--out", "{out}/a"], "no-such-model"),
    "adapt, broken hub": (["adapt", "--model", "{model}", "--hub", "{broken}", "--examples", "{good}",
                           "--out", "{out}/a"], "hub.json"),
    "adapt, bad examples": (["adapt", "--model", "{model}", "--hub", "{hub}", "--examples", "{bad}",
                             "--out", "{out}/a"], "bad.jsonl:2"),
    "adapt --actors, broken hub": (["adapt", "--actors", "1", "--model", "{model}", "--hub", "{broken}",
                                    "--examples", "{good}", "--out", "{out}/a"], "hub.json"),
    "adapt-batch, bad tasks file": (["adapt-batch", "{tasks}", "--model", "{model}", "--hub", "{hub}",
                                   "--out", "{out}/b", "--actors", "1"], "tasks.jsonl"),
    "adapt-batch, broken hub": (["adapt-batch", "{good_tasks}", "--model", "{model}", "--hub", "{broken}",
                                 "--out", "{out}/b", "--actors", "1"], "hub.json"),
    "eval, broken hub": (["eval", "--model", "{model}", "--hub", "{broken}", "--tasks", "bbh/navigate",
                          "--out", "{out}/e"], "hub.json"),
    "eval headroom, missing suite": (["eval", "--suite", "headroom", "--suite-file", "{out}/none.json",
                                      "--model", "{model}", "--hub", "{hub}"], "none.json"),
    "hub build, missing model": (["hub", "build", "--model", "{missing}", "--out", "{out}/h",
                                  "--tasks", "rg/gcd@le20"], "no-such-model"),
    "hub centroids, broken hub": (["hub", "centroids", "--model", "{model}", "--hub", "{broken}"], "hub.json"),
    "model fetch, unknown name": (["model", "fetch", "no-such-model"], "no-such-model"),
    "serve, missing model": (["serve", "--model", "{missing}", "--store", "{out}/s"], "no-such-model"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_and_exit_2(case, inputs):
    args, needle = CASES[case]
    argv = [a.format(**inputs) for a in args]
    r = subprocess.run(EXE + argv, capture_output=True, text=True, timeout=240, check=False)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn(" not in ln]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [ln for ln in lines if ln.startswith("lorahub-serve ")]
    assert len(errors) == 1 and needle in errors[0], lines[-5:]
