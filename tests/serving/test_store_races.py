"""Many writers on one store, as real separate processes (no server): two servers racing on one
composition build it once and never show half a folder; jobs submitted to two servers at once
run once each; a job whose server is SIGKILLed is taken over by the other, not run twice."""

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from lorahub_serve.serving.compositions import Compositions
from lorahub_serve.serving.jobs import ACTIVE, AdaptJobs, RequestError, parse_request
from lorahub_serve.serving.store import AdapterStore, BaseModelShapes

GOOD = [{"input": "Q: 2 and 3?\nA:", "output": " 5"}]
SPECS = [{"modules": {"task0": 0.5, "task1": -1.0}},
         {"modules": {"task0": 1.0, "task2": 0.25, "task3": -0.5}},
         {"modules": {"task1": 0.7, "task2": 0.7}, "rule": "linear"}]
CTX = mp.get_context("spawn")


def _store(root, model_dir) -> AdapterStore:
    return AdapterStore(Path(root), BaseModelShapes.from_folder(Path(model_dir)), 16)


def _temporaries(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".") and p.name != ".jobs"]


# ------------------------------------------------------------------ child processes


def _compose(root, model_dir, hub, order, barrier, out):
    comps = Compositions(_store(root, model_dir), Path(hub), Path(model_dir), "base", max_rank=16)
    barrier.wait()
    names = [asyncio.run(comps.ensure(SPECS[i], "base"))[0] for i in order]
    out.put({"names": names, "made": comps.made, "hits": comps.hits})


def _read_while_written(root, model_dir, seconds, out):
    """Inspect every adapter the moment it is visible: a half-written folder would fail."""
    store, seen, errors = _store(root, model_dir), set(), []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name in store.names():
            try:
                store.inspect(name)
                seen.add(name)
            except Exception as e:  # noqa: BLE001 - reported to the test
                errors.append(f"{name}: {type(e).__name__}: {e}")
    out.put({"seen": sorted(seen), "errors": errors})


def _serve_jobs(root, model_dir, hub, submit, barrier, expect, out):
    """One server's job queue: submit `submit` after the barrier, run jobs until `expect` jobs
    of the store are finished; report which jobs this process claimed."""
    claimed, codes = [], {}
    jobs = AdaptJobs(_store(root, model_dir), str(model_dir), Path(hub), timeout_s=120,
                     on_change=lambda j: claimed.append(j.id) if j.state == "running" else None)

    async def main():
        jobs.recover()
        jobs.start()
        barrier.wait()
        for body in submit:
            try:
                codes[body["name"]] = (202, jobs.submit(parse_request(body)).id)
            except RequestError as e:
                codes[body["name"]] = (e.code, str(e))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = [j for j in jobs.listing() if j.state not in ACTIVE]
            if len(done) >= expect:
                break
            await asyncio.sleep(0.2)
        await jobs.close()

    asyncio.run(main())
    out.put({"claimed": claimed, "codes": codes, "token": jobs.records.member.token})


def _run_forever(root, model_dir, hub, submit):
    """A server that takes jobs until it is killed."""
    jobs = AdaptJobs(_store(root, model_dir), str(model_dir), Path(hub), timeout_s=600)

    async def main():
        jobs.recover()
        jobs.start()
        for body in submit:
            jobs.submit(parse_request(body))
        await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------ tests


def _join(procs, out, timeout=300):
    results = [out.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0, f"child {p.name} exited with {p.exitcode}"
    return results


def test_two_processes_racing_on_compositions_build_each_once(tmp_path, tiny_llama_dir, tiny_llama_hub):
    root = tmp_path / "store"
    root.mkdir()
    barrier, out, reads = CTX.Barrier(3), CTX.Queue(), CTX.Queue()
    writers = [CTX.Process(target=_compose, name=f"writer{i}",
                           args=(root, tiny_llama_dir, tiny_llama_hub, order, barrier, out))
               for i, order in enumerate(([0, 1, 2], [0, 2, 1], [0, 1, 2]))]
    reader = CTX.Process(target=_read_while_written, args=(root, tiny_llama_dir, 25, reads))
    reader.start()
    for p in writers:
        p.start()
    results = _join(writers, out)
    read = reads.get(timeout=120)
    reader.join(30)
    names = {n for r in results for n in r["names"]}
    assert len(names) == 3 and all(r["names"][0] == results[0]["names"][0] for r in results)
    stored = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert stored == sorted(names)
    made = sum(r["made"] for r in results)
    assert made == 3, f"each composition must be built once by one of the racers, got {results}"
    assert sum(r["hits"] for r in results) == 9 - 3
    assert not read["errors"], read["errors"][:5]  # never a half-written folder
    assert _temporaries(root) == [], _temporaries(root)


def test_jobs_submitted_to_two_processes_run_once_each(tmp_path, tiny_llama_dir, tiny_llama_hub):
    root = tmp_path / "store"
    root.mkdir()
    bodies = [{"name": f"job{i}", "examples": GOOD, "budget": 4, "modules": 3} for i in range(3)]
    barrier, out = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_serve_jobs, name=f"server{i}", args=(
        root, tiny_llama_dir, tiny_llama_hub, bodies, barrier, len(bodies), out)) for i in range(2)]
    for p in procs:
        p.start()
    a, b = _join(procs, out)
    for body in bodies:  # each name accepted by exactly one server, 409 on the other
        codes = sorted([a["codes"][body["name"]][0], b["codes"][body["name"]][0]])
        assert codes == [202, 409], (a["codes"], b["codes"])
    claims = a["claimed"] + b["claimed"]
    assert len(claims) == len(set(claims)) == 3, f"a job ran twice or not at all: {a}, {b}"
    records = [json.loads(f.read_text()) for f in sorted((root / ".jobs").glob("adapt-*/job.json"))]
    assert [r["state"] for r in records] == ["succeeded"] * 3, records
    assert all(r["attempts"] == 1 and r["owner"] in (a["token"], b["token"]) for r in records)
    store = _store(root, tiny_llama_dir)
    assert sorted(store.names()) == ["job0", "job1", "job2"] and all(store.inspect(n) for n in store.names())
    assert _temporaries(root) == []


def test_a_job_whose_server_is_killed_is_taken_over_not_run_twice(tmp_path, tiny_llama_dir,
                                                                 tiny_llama_hub):
    root = tmp_path / "store"
    root.mkdir()
    long = {"name": "long", "examples": GOOD, "budget": 100_000, "modules": 3}
    victim = CTX.Process(target=_run_forever, args=(root, tiny_llama_dir, tiny_llama_hub, [long]))
    victim.start()
    record = _wait_record(root, lambda r: r["state"] == "running" and r["evaluations"] > 0)
    first_owner = record["owner"]
    heir = CTX.Process(target=_run_forever, args=(root, tiny_llama_dir, tiny_llama_hub, []))
    heir.start()
    try:
        time.sleep(8)  # the heir is up and polling: a live owner's job is left alone
        record = _wait_record(root, lambda r: True)
        assert record["owner"] == first_owner and record["attempts"] == 1, record
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        record = _wait_record(root, lambda r: r["owner"] != first_owner and r["evaluations"] > 0
                              and r["state"] == "running", timeout=120)
        assert record["attempts"] == 2 and "re-run" in record["note"], record
        evaluations = record["evaluations"]
        job = asyncio.run(_cancel_from_a_third_server(root, tiny_llama_dir, tiny_llama_hub))
        assert job.state == "cancelled" and job.attempts == 2, job.to_json()
        time.sleep(2)  # nobody runs it any more: the record stays as it is
        final = _wait_record(root, lambda r: True)
        assert final["state"] == "cancelled" and final["evaluations"] >= evaluations
    finally:
        for p in (victim, heir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.join(10)
    assert not (root / "long").exists() and _temporaries(root) == []


async def _cancel_from_a_third_server(root, model_dir, hub):
    jobs = AdaptJobs(_store(root, model_dir), str(model_dir), Path(hub))
    try:
        return await jobs.cancel("long")
    finally:
        await jobs.close()


def _wait_record(root: Path, ok, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for f in (root / ".jobs").glob("adapt-*/job.json") if (root / ".jobs").is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                last = json.loads(f.read_text())
                if ok(last):
                    return last
        time.sleep(0.1)
    pytest.fail(f"no job record as expected within {timeout:.0f} s; last {last}")


def test_a_lapsed_lease_is_taken_back_and_the_stalled_owner_finds_out(tmp_path, tiny_llama_dir,
                                                                       tiny_llama_hub):
    """A live owner whose lease lapsed (stalled past LEASE_S) loses the job: another server
    takes it back, and the owner's next write raises LeaseLost instead of overwriting it."""
    from lorahub_serve.serving.job_records import AdaptJob, LeaseLost

    root = tmp_path / "store"
    root.mkdir()
    owner, other = (AdaptJobs(_store(root, tiny_llama_dir), str(tiny_llama_dir), tiny_llama_hub)
                    for _ in range(2))
    owner.records.member.join()
    other.records.member.join()
    job = AdaptJob(id="adapt-00000000000000aa",
                   request=parse_request({"name": "slow", "examples": GOOD}))
    owner.records.write_request(job)
    with owner.records.lock():
        owner.records.claim(job)
    assert other.records.owner_alive(other.records.read(job.id))  # lock held, lease fresh
    job.lease_until = time.time() - 1
    owner.records.write(job)
    seen = other.records.read(job.id)
    assert other.records.member.alive(seen.owner) and not other.records.owner_alive(seen)
    other._sync(force=True)
    with other.records.lock():
        assert other._take_back(other.jobs[job.id]).endswith("running -> queued")
    with pytest.raises(LeaseLost, match="taken over"):
        owner.records.renew(job)
    record = json.loads((root / ".jobs" / job.id / "job.json").read_text())
    assert record["state"] == "queued" and record["owner"] is None and "re-run" in record["note"]
    owner.records.member.leave()
    other.records.member.leave()


def _write_forever(root, started):
    from lorahub_serve.atomic import atomic_dir

    with atomic_dir(Path(root) / "half") as tmp:
        (tmp / "adapter_config.json").write_text("{}")
        started.set()
        time.sleep(600)


def test_a_killed_writers_temporary_is_removed_while_others_serve(tmp_path, tiny_llama_dir,
                                                                  tiny_llama_hub):
    """A writer SIGKILLed inside an atomic write leaves a hidden temporary; a server starting
    while another serves the store removes it (its writer is gone), but keeps a live writer's."""
    from lorahub_serve.atomic import make_temp_dir

    root = tmp_path / "store"
    root.mkdir()
    started = CTX.Event()
    writer = CTX.Process(target=_write_forever, args=(root, started))
    writer.start()
    assert started.wait(60)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(10)
    dead = [p.name for p in root.iterdir() if p.name.startswith(".half.tmp-")]
    assert len(dead) == 1 and f"-{writer.pid}-" in dead[0], dead
    live = make_temp_dir(root / "busy")  # this process is writing it
    serving = AdaptJobs(_store(root, tiny_llama_dir), str(tiny_llama_dir), tiny_llama_hub)
    serving.records.member.join()  # another server on the store
    starting = AdaptJobs(_store(root, tiny_llama_dir), str(tiny_llama_dir), tiny_llama_hub)
    log = starting.recover()
    assert f"removed left-over temporary {dead[0]}" in log, log
    assert live.is_dir() and not (root / dead[0]).exists() and not (root / "half").exists()
    serving.records.member.leave()
    starting.records.member.leave()
