"""Adaptation requests and durable jobs, run by real warm workers on a tiny model (no server)."""

import asyncio
import json
import sys
import time

import pytest

from lorahub_serve.atomic import write_json_atomic
from lorahub_serve.serving.job_request import ContextCheck
from lorahub_serve.serving.jobs import (
    MAX_ATTEMPTS,
    AdaptJob,
    AdaptJobs,
    RequestError,
    parse_request,
)
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
    ({"name": "x", "examples": GOOD * 10_000}, "examples", "at most 1000"),
    ({"name": "x", "examples": GOOD, "export": "ties"}, "export", "must be an object"),
    ({"name": "x", "examples": GOOD, "export": {"rule": "ties", "density": 0}}, "export", "density"),
    ({"name": "x", "examples": GOOD, "export": {"rule": "lorahub", "density": 0.5}}, "export",
     "density does not apply"),
    ({"name": "x", "examples": GOOD, "export": {"rule": "avg"}}, "export", "rule must be one of"),
    ({"name": "x", "examples": GOOD, "export": {"rule": "ties", "k": 1}}, "export", "unknown field"),
])
def test_bad_requests_name_the_problem(body, param, message):
    with pytest.raises(RequestError, match=message) as e:
        parse_request(body)
    assert e.value.code == 400 and e.value.param == param


def test_good_request_round_trips():
    req = parse_request({"name": "t", "examples": GOOD, "budget": 8, "modules": ["m1", "m2"]})
    assert req.budget == 8 and req.modules == ("m1", "m2") and req.seed is None
    assert req.examples[0].output == " 5"
    assert parse_request(req.to_json()) == req
    ties = parse_request({"name": "t", "examples": GOOD, "export": {"rule": "ties", "density": 0.3}})
    assert parse_request(ties.to_json()) == ties
    from lorahub_serve.engine.merge import MergeSpec

    spec = MergeSpec(**ties.to_json()["export"])  # as the worker builds it (engine/job.py)
    assert (spec.rule, spec.density, spec.majority_sign_method) == ("ties", 0.3, "total")
    assert req.export is None and "export" not in req.to_json()


def test_a_job_exports_with_the_requested_merge_rule(make_jobs, tiny_llama_hub):
    """POST /v1/adapters with "export": {"rule": "ties"} over modules of one rank: the stored
    adapter is PEFT's ties merge (lorahub.json says so); mixed ranks fail the job, naming them."""
    from lorahub_serve.engine.hub import read_manifest

    mods = read_manifest(tiny_llama_hub)
    same = [m.name for m in mods if m.rank == mods[0].rank]
    jobs = make_jobs()

    async def scenario():
        jobs.submit(parse_request({"name": "tied", "examples": GOOD, "budget": 6, "modules": same,
                                   "export": {"rule": "ties", "density": 0.5}}))
        jobs.submit(parse_request({"name": "mixed", "examples": GOOD, "budget": 6,
                                   "modules": [m.name for m in mods], "export": {"rule": "ties"}}))
        tied, mixed = await _wait(jobs, "tied"), await _wait(jobs, "mixed")
        await jobs.close()
        return tied, mixed

    tied, mixed = asyncio.run(scenario())
    assert tied.state == "succeeded", tied.to_json()
    meta = json.loads((jobs.store.folder("tied") / "lorahub.json").read_text())
    assert (meta["rule"], meta["density"], meta["search_rule"]) == ("ties", 0.5, "lorahub")
    assert jobs.store.inspect("tied").rank == mods[0].rank
    assert mixed.state == "failed" and "rank" in mixed.error, mixed.to_json()


@pytest.fixture
def make_jobs(tmp_path, tiny_llama_dir, tiny_llama_hub):
    (tmp_path / "store").mkdir()
    store = AdapterStore(tmp_path / "store", BaseModelShapes.from_folder(tiny_llama_dir), 16)

    def make(**kw):
        return AdaptJobs(store, str(tiny_llama_dir), tiny_llama_hub, **{"timeout_s": 120, **kw})

    return make


async def _wait(jobs, name, timeout=120, until=("succeeded", "failed", "cancelled")):
    async def done():
        while jobs.latest(name).state not in until:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(done(), timeout)
    return jobs.latest(name)


def _record(jobs, job_id):
    return json.loads((jobs.dir / job_id / "job.json").read_text())


def test_jobs_run_one_at_a_time_and_report_as_data(make_jobs):
    jobs = make_jobs()

    async def scenario():
        ok = jobs.submit(parse_request({"name": "ok", "examples": GOOD, "budget": 6, "modules": 3}))
        bad = jobs.submit(parse_request({"name": "bad", "examples": GOOD, "modules": ["nope"]}))
        with pytest.raises(RequestError, match="already being made") as e:
            jobs.submit(parse_request({"name": "ok", "examples": GOOD}))
        assert e.value.code == 409
        assert _record(jobs, ok.id)["state"] == "queued"  # on disk before the 202
        ok, bad = await _wait(jobs, "ok"), await _wait(jobs, "bad")
        assert bad.started >= ok.finished  # one worker, one job at a time
        with pytest.raises(RequestError, match="already exists in the store"):
            jobs.submit(parse_request({"name": "ok", "examples": GOOD}))
        await jobs.close()
        return ok, bad

    ok, bad = asyncio.run(scenario())
    assert ok.state == "succeeded" and isinstance(ok.loss, float), ok.to_json()
    assert ok.evaluations == 6 and ok.attempts == 1 and ok.started <= ok.finished
    assert jobs.store.inspect("ok").rank == 4
    assert bad.state == "failed" and "nope" in bad.error, bad.to_json()
    assert _record(jobs, ok.id) == ok.to_json() and _record(jobs, bad.id) == bad.to_json()


def test_restart_recovers_every_kind_of_job(make_jobs):
    """Records as a `kill -9` leaves them: each state is resumed as documented."""
    first = make_jobs()
    store = first.store.root
    specs = {"done": ("succeeded", 1), "cut": ("running", 1), "wait": ("queued", 0),
             "again": ("running", MAX_ATTEMPTS), "gone": ("cancelled", 0)}
    for i, (name, (state, attempts)) in enumerate(specs.items()):
        req = parse_request({"name": name, "examples": GOOD, "budget": 4, "modules": 2})
        job = AdaptJob(id=f"adapt-{i:016x}", request=req, state=state, attempts=attempts,
                       created=time.time() + i, loss=0.5 if name == "done" else None)
        write_json_atomic(first.dir / job.id / "request.json", req.to_json())
        write_json_atomic(first.dir / job.id / "job.json", job.to_json())
    (store / ".cut.tmp-abc123").mkdir()  # a half-written adapter
    (store / ".cut.tmp-abc123" / "adapter_config.json").write_text("{}")
    (store / ".old.old-77").mkdir()
    (first.dir / "adapt-0000000000000001" / ".job.json.xyz").write_text("{")
    (first.dir / "adapt-ffffffffffffffff").mkdir()  # no record at all
    jobs = make_jobs()
    log = jobs.recover()
    assert not [p.name for p in store.iterdir() if p.name != ".jobs"], log
    assert sorted(p.name for p in (first.dir / "adapt-0000000000000001").iterdir()) == [
        "job.json", "request.json"]
    states = {n: jobs.latest(n).state for n in specs}
    assert states == {"done": "succeeded", "cut": "queued", "wait": "queued", "again": "failed",
                      "gone": "cancelled"}, log
    assert "server stopped during attempt 1" in jobs.latest("cut").note
    assert f"interrupted {MAX_ATTEMPTS} times" in jobs.latest("again").error
    assert jobs.latest("done").loss == 0.5

    async def scenario():
        jobs.start()
        cut, wait = await _wait(jobs, "cut"), await _wait(jobs, "wait")
        await jobs.close()
        return cut, wait

    cut, wait = asyncio.run(scenario())
    assert cut.state == wait.state == "succeeded", (cut.to_json(), wait.to_json())
    assert cut.attempts == 2 and jobs.store.inspect("cut") is not None


def test_full_queue_is_429_and_queued_jobs_cancel(make_jobs):
    jobs = make_jobs(max_queued=1)

    async def scenario():
        first = jobs.submit(parse_request({"name": "a", "examples": GOOD}))
        with pytest.raises(RequestError, match="queue is full") as e:
            jobs.submit(parse_request({"name": "b", "examples": GOOD}))
        assert e.value.code == 429
        assert (await jobs.cancel("a")) is first and first.state == "cancelled"
        assert jobs.submit(parse_request({"name": "b", "examples": GOOD, "budget": 2})).state == "queued"
        await _wait(jobs, "b")
        await jobs.close()

    asyncio.run(scenario())
    assert _record(jobs, jobs.latest("a").id)["state"] == "cancelled"
    assert not jobs.store.exists("a") and jobs.store.exists("b")
    assert jobs.forget("a") == 1 and jobs.latest("a") is None


def test_cancel_running_job_keeps_the_worker_warm(make_jobs):
    jobs = make_jobs()

    async def scenario():
        long = jobs.submit(parse_request({"name": "long", "examples": GOOD, "budget": 100_000}))
        await _wait(jobs, "long", until=("running",))
        while long.evaluations == 0:
            await asyncio.sleep(0.05)
        pid = jobs._slots[0].proc.pid
        assert (await jobs.cancel("long")).state == "cancelled"
        jobs.submit(parse_request({"name": "next", "examples": GOOD, "budget": 2}))
        nxt = await _wait(jobs, "next")
        same = jobs._slots[0].proc.pid == pid
        await jobs.close()
        return long, nxt, same

    long, nxt, same = asyncio.run(scenario())
    assert long.state == "cancelled" and 0 < long.evaluations < 100_000 == long.budget
    assert nxt.to_json()["budget"] == 2
    assert nxt.state == "succeeded" and same, "the worker should survive a cancel"
    assert not jobs.store.exists("long")


def test_worker_death_fails_the_job_with_its_reason(make_jobs):
    die = (sys.executable, "-c", "import sys; print('no engine here', file=sys.stderr); sys.exit(7)")
    jobs = make_jobs(worker_command=die)

    async def scenario():
        jobs.submit(parse_request({"name": "x", "examples": GOOD}))
        job = await _wait(jobs, "x")
        await jobs.close()
        return job

    job = asyncio.run(scenario())
    assert job.state == "failed" and "status 7" in job.error and "no engine here" in job.error


def test_example_longer_than_the_context_is_400(make_jobs, tiny_llama_dir):
    jobs = make_jobs(check_examples=ContextCheck(tiny_llama_dir, 32))
    ok = [{"input": "Q: cat?\nA:", "output": " no"}]
    long = ok + [{"input": "the cat " * 20, "output": " no"}]
    with pytest.raises(RequestError, match=r"examples\[1\]: example of \d+ tokens exceeds the "
                       "model's context of 32 tokens") as e:
        jobs.submit(parse_request({"name": "x", "examples": long}))
    assert e.value.code == 400 and e.value.param == "examples"
    jobs.check_examples(parse_request({"name": "x", "examples": ok}).examples)  # fits


def test_no_hub_is_503(make_jobs):
    jobs = make_jobs()
    jobs.hub = None
    with pytest.raises(RequestError, match="without --hub") as e:
        jobs.submit(parse_request({"name": "x", "examples": GOOD}))
    assert e.value.code == 503


def test_two_workers_run_two_jobs_at_once_and_cold_mode_works(make_jobs):
    jobs, cold = make_jobs(workers=2), make_jobs(workers=0)

    async def scenario():
        a = jobs.submit(parse_request({"name": "two-a", "examples": GOOD, "budget": 100_000}))
        b = jobs.submit(parse_request({"name": "two-b", "examples": GOOD, "budget": 100_000}))
        while not (a.evaluations and b.evaluations):  # both searching at the same time
            await asyncio.sleep(0.05)
        await jobs.cancel("two-a")
        await jobs.cancel("two-b")
        await jobs.close()
        cold.submit(parse_request({"name": "cold", "examples": GOOD, "budget": 2}))
        job = await _wait(cold, "cold")
        await cold.close()
        return job, cold._slots

    job, slots = asyncio.run(scenario())
    assert job.state == "succeeded" and slots == [None]  # cold: the worker left with its job


def test_clean_shutdown_requeues_the_running_job(make_jobs):
    jobs = make_jobs()

    async def scenario():
        job = jobs.submit(parse_request({"name": "cut", "examples": GOOD, "budget": 100_000}))
        while job.evaluations == 0:
            await asyncio.sleep(0.05)
        await jobs.close()
        return job

    job = asyncio.run(scenario())
    record = _record(jobs, job.id)
    assert record["state"] == "queued" and "shutdown" in record["note"], record
    again = make_jobs()
    again.recover()
    assert again.latest("cut").state == "queued" and again.latest("cut").attempts == 1
    assert not jobs.store.exists("cut")
