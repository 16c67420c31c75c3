"""adapt-batch on a real two-node Ray cluster on this machine (two raylets): the actors land on
both nodes, and a node removed mid-job still leaves every task finished with the single-process
results. Nodes of 1 CPU force the actors apart, and after the loss only the survivor is left;
nodes of 4 CPUs need the pool's SPREAD placement (Ray's default would pack both on the head),
and the lost actor's replacement can start on the head."""

import json

import pytest
from _cluster_common import (
    CONFIG,
    TASKS,
    assert_same_results,
    assert_store_like_reference,
    task_pairs,
)

from lorahub_serve.cluster import run_adapt_batch

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture
def two_nodes(request):
    """(cluster, second node, CPUs): a head and a second node of `request.param` CPUs each (default 1)."""
    from ray._common.utils import reset_ray_address
    from ray.cluster_utils import Cluster

    cpus = getattr(request, "param", 1)
    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=cpus, include_dashboard=False)  # the head
        worker = cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        # Cluster advertises itself in /tmp/ray as "the local cluster": forget that, so a plain
        # ray.init() elsewhere on this machine (other tests, other sessions) starts its own
        reset_ray_address()
        yield cluster, worker, cpus
    finally:
        if ray.is_initialized():  # a failed run may leave the driver connected
            ray.shutdown()
        cluster.shutdown()


@pytest.mark.parametrize("two_nodes", [1, 4], indirect=True, ids=["1cpu", "4cpu"])
def test_actors_spread_and_a_lost_node_changes_nothing(two_nodes, tiny_llama_dir, tiny_llama_hub,
                                                       reference, tmp_path):
    cluster, worker, cpus = two_nodes
    events, removed = [], []

    def remove_worker_node(event, data):
        events.append((event, data))
        if event == "generation" and sum(e == "generation" for e, _ in events) == 2:
            cluster.remove_node(worker)  # its actor dies mid-job
            removed.append(worker.node_id)
        elif event == "actor_started" and cpus > 1:
            # the replacement fits on the head: hold the driver until it has loaded, so that it
            # joins before the tiny job ends (the survivor keeps working meanwhile)
            ray.get(ray.get_actor(data["name"]).info.remote())

    report = run_adapt_batch(str(tiny_llama_dir), tiny_llama_hub, task_pairs(), tmp_path / "store",
                             actors=2, ray_address=cluster.address, config=CONFIG, cpus_per_actor=1,
                             max_batch=4, progress=False, callback=remove_worker_node)
    node_ids = next(d["node_ids"] for e, d in events if e == "actors")
    assert sorted(node_ids) == sorted([cluster.head_node.node_id, worker.node_id])
    assert removed and report["actor_failures"] >= 1
    assert any(e == "actor_lost" for e, _ in events)
    ready = [d["node_id"] for e, d in events if e == "actor_ready"]
    assert ready == ([cluster.head_node.node_id] if cpus > 1 else [])  # 1 CPU: the survivor did the rest
    assert report["done"] == 4 and report["failed"] == 0
    assert_same_results(report["results"], reference)
    assert_store_like_reference(tmp_path / "store", reference)


def test_cli_ray_address_uses_both_nodes(two_nodes, tiny_llama_dir, tiny_llama_hub, reference, tmp_path,
                                         capsys):
    from lorahub_serve.cli import main

    cluster, worker, _ = two_nodes
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"name": n, "examples": ex}) + "\n" for n, ex in TASKS.items()))
    args = ["adapt-batch", str(tasks), "--hub", str(tiny_llama_hub), "--out", str(tmp_path / "store"),
            "--model", str(tiny_llama_dir), "--ray-address", cluster.address, "--actors", "2",
            "--budget", str(CONFIG.budget), "--seed", str(CONFIG.seed), "--max-batch", "4", "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    assert "4 done" in capsys.readouterr().out
    actors = [a for a in cluster.global_state.actor_table(None).values()
              if a["ActorClassName"] == "EvaluatorActor"]
    assert sorted(a["Address"]["NodeID"] for a in actors) == sorted([cluster.head_node.node_id,
                                                                     worker.node_id])
    assert_store_like_reference(tmp_path / "store", reference)
