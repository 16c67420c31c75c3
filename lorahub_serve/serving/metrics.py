"""Prometheus metrics of adaptation, on the server's `/metrics` beside vLLM's own (`vllm:*`).

| name | type | labels | what |
|---|---|---|---|
| `lorahub_adapt_jobs` | gauge | `state` | job records in the store by state (`queued`, `running`, `succeeded`, `failed`, `cancelled`), every server's: the same on every replica |
| `lorahub_adapt_jobs_finished_total` | counter | `state` | jobs this server ran to an end, by final state |
| `lorahub_adapt_job_duration_seconds` | histogram | `state` | start to end of each job this server ran |
| `lorahub_adapt_search_evaluations_per_second` | histogram | | candidate evaluations per second of each finished job this server ran |
| `lorahub_compositions_made_total` | counter | | compositions named in requests that this server built and stored |
| `lorahub_composition_cache_hits_total` | counter | | requests for a composition already in the store (made by any server) |

They go into vLLM's registry (`vllm.v1.metrics.prometheus.get_prometheus_registry`), so one scrape
of `/metrics` returns both. With `serve --replicas N`, `/metrics` on the endpoint is answered by
one replica (the store-wide gauge is right on any; per-server counters are that replica's); Ray
Serve's own request metrics (`ray_serve_*`) are on Ray's metrics export port of each node.
"""

from __future__ import annotations

from lorahub_serve.serving.job_records import ACTIVE, AdaptJob

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
DURATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
RATE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)


class AdaptMetrics:
    """The job and composition metrics of one server, registered into `registry`."""

    def __init__(self, jobs, compositions=None, registry=None):
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = registry if registry is not None else REGISTRY
        self.jobs, self.compositions = jobs, compositions
        self.finished = Counter("lorahub_adapt_jobs_finished", "adaptation jobs this server ran "
                                "to an end, by final state", ["state"], registry=registry)
        self.duration = Histogram("lorahub_adapt_job_duration_seconds", "start to end of each "
                                  "adaptation job this server ran", ["state"],
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.rate = Histogram("lorahub_adapt_search_evaluations_per_second", "candidate "
                              "evaluations per second of each finished adaptation job",
                              buckets=RATE_BUCKETS, registry=registry)
        registry.register(_StoreCollector(self))

    def on_change(self, job: AdaptJob) -> None:
        """`AdaptJobs.on_change`: a job this server runs started or ended."""
        if job.state in ACTIVE or job.started is None or job.finished is None:
            return
        seconds = max(job.finished - job.started, 0.0)
        self.finished.labels(job.state).inc()
        self.duration.labels(job.state).observe(seconds)
        if job.evaluations and seconds > 0:
            self.rate.observe(job.evaluations / seconds)


class _StoreCollector:
    """Values read at scrape time: job records by state, composition counters."""

    def __init__(self, metrics: AdaptMetrics):
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        by_state = dict.fromkeys(STATES, 0)
        for job in self.metrics.jobs.listing():
            by_state[job.state] = by_state.get(job.state, 0) + 1
        gauge = GaugeMetricFamily("lorahub_adapt_jobs", "adaptation job records in the store by "
                                  "state (every server's)", labels=["state"])
        for state, n in by_state.items():
            gauge.add_metric([state], n)
        yield gauge
        comps = self.metrics.compositions
        yield CounterMetricFamily("lorahub_compositions_made", "compositions named in requests "
                                  "that this server built", value=comps.made if comps else 0)
        yield CounterMetricFamily("lorahub_composition_cache_hits", "requests for a composition "
                                  "already in the store", value=comps.hits if comps else 0)
