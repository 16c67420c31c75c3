"""Adaptation requests and jobs, with a stand-in for `lorahub-serve adapt` (no server)."""

import asyncio
import shutil
import sys
import textwrap

import pytest

from lorahub_serve import testing
from lorahub_serve.serving.jobs import AdaptJobs, RequestError, parse_request
from lorahub_serve.serving.store import AdapterStore, BaseModelShapes

GOOD = [{"input": "Q: 2 and 3?\nA:", "output": " 5"}]


@pytest.mark.parametrize("body, param, message", [
    ([], None, "JSON object"),
    ({"examples": GOOD}, "name", "missing field 'name'"),
    ({"name": "../x", "examples": GOOD}, "name", "invalid adapter name"),
    ({"name": "x", "examples": "nope"}, "examples", "must be a list"),
    ({"name": "x", "examples": []}, "examples", "no examples given"),
    ({"name": "x", "examples": [{"input": "a"}]}, "examples", r"examples\[0\]: missing field 'output'"),
    ({"name": "x", "examples": [{"input": "a", "output": 3}]}, "examples", "must be a string"),
    ({"name": "x", "examples": GOOD, "budget": 0}, "budget", r"integer in \[1, "),
    ({"name": "x", "examples": GOOD, "seed": "1"}, "seed", "integer"),
    ({"name": "x", "examples": GOOD, "modules": ["a,b"]}, "modules", "hub module names"),
    ({"name": "x", "examples": GOOD, "lr": 1}, "lr", "unknown field"),
])
def test_bad_requests_name_the_problem(body, param, message):
    with pytest.raises(RequestError, match=message) as e:
        parse_request(body)
    assert e.value.code == 400 and e.value.param == param


def test_good_request():
    req = parse_request({"name": "t", "examples": GOOD, "budget": 8, "modules": ["m1", "m2"]})
    assert req.budget == 8 and req.modules == ("m1", "m2") and req.seed is None
    assert req.examples[0].output == " 5"


FAKE_ADAPT = textwrap.dedent("""
    import argparse, os, shutil, sys, tempfile
    p = argparse.ArgumentParser()
    for flag in ("--model", "--hub", "--examples", "--out", "--budget", "--seed", "--modules"):
        p.add_argument(flag)
    a = p.parse_args()
    if "FAIL" in open(a.examples).read():
        print("error: the examples asked to fail", file=sys.stderr)
        sys.exit(3)
    print("step 1 loss=2.5", flush=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(a.out), prefix=".tmp-")
    os.rmdir(tmp)
    shutil.copytree(os.environ["TEMPLATE_ADAPTER"], tmp)
    os.rename(tmp, a.out)
    print("best loss=1.25")
""")


@pytest.fixture
def jobs(tmp_path, monkeypatch):
    model, _ = testing.tiny_llama(tmp_path / "base", hidden=128)
    monkeypatch.setenv("TEMPLATE_ADAPTER", str(testing.random_adapter(model, tmp_path / "tpl")))
    (tmp_path / "hub").mkdir()
    (tmp_path / "store").mkdir()
    script = tmp_path / "fake_adapt.py"
    script.write_text(FAKE_ADAPT)
    store = AdapterStore(tmp_path / "store", BaseModelShapes.from_folder(tmp_path / "base"), 16)
    return AdaptJobs(store, "base", tmp_path / "hub", timeout_s=60, command=(sys.executable, str(script)))


async def _wait(jobs, name, timeout=60):
    async def done():
        while jobs.latest(name).state in ("queued", "running"):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(done(), timeout)
    return jobs.latest(name)


def test_jobs_run_queue_and_report(jobs):
    async def scenario():
        ok = jobs.submit(parse_request({"name": "ok", "examples": GOOD, "budget": 3}))
        bad = jobs.submit(parse_request({"name": "bad", "examples": [{"input": "FAIL", "output": "x"}]}))
        with pytest.raises(RequestError, match="already being made") as e:
            jobs.submit(parse_request({"name": "ok", "examples": GOOD}))
        assert e.value.code == 409
        assert bad.state == "queued"  # one job at a time
        ok, bad = await _wait(jobs, "ok"), await _wait(jobs, "bad")
        with pytest.raises(RequestError, match="already exists in the store"):
            jobs.submit(parse_request({"name": "ok", "examples": GOOD}))
        await jobs.close()
        return ok, bad

    ok, bad = asyncio.run(scenario())
    assert ok.state == "succeeded" and ok.loss == 1.25, ok.to_json()
    assert jobs.store.inspect("ok").rank == 4
    assert bad.state == "failed" and "status 3" in bad.error and "asked to fail" in bad.error


def test_no_hub_is_503(jobs):
    jobs.hub = None
    with pytest.raises(RequestError, match="without --hub") as e:
        jobs.submit(parse_request({"name": "x", "examples": GOOD}))
    assert e.value.code == 503


def test_refused_result_fails_the_job(jobs, tmp_path, monkeypatch):
    other, _ = testing.tiny_llama(tmp_path / "other", hidden=64)
    alien = testing.random_adapter(other, tmp_path / "alien")
    monkeypatch.setenv("TEMPLATE_ADAPTER", str(alien))

    async def scenario():
        jobs.submit(parse_request({"name": "alien", "examples": GOOD}))
        job = await _wait(jobs, "alien")
        await jobs.close()
        return job

    job = asyncio.run(scenario())
    assert job.state == "failed" and "another base model" in job.error
    shutil.rmtree(jobs.store.folder("alien"))
