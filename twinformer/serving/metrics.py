"""The server's Prometheus metrics (GET /metrics), in a registry of its own per app, so that several
apps in one process (tests) never share counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServerMetrics:
    def __init__(self, engine):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("twinformer_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        self.prompt_tokens = Counter("twinformer_prompt_tokens", "prompt tokens of accepted requests", registry=r)
        self.completion_tokens = Counter("twinformer_completion_tokens", "tokens generated", registry=r)
        self.latency = Histogram("twinformer_request_latency_seconds", "completion request time, first byte in to last out",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.first_token = Histogram("twinformer_time_to_first_token_seconds", "request received to its first token",
                                     ["path"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        queue = Gauge("twinformer_queue_depth", "requests waiting for a batch slot", registry=r)
        queue.set_function(lambda: engine.load()["queued"])
        running = Gauge("twinformer_running_requests", "requests decoding now", registry=r)
        running.set_function(lambda: engine.load()["running"])
        slots = Gauge("twinformer_batch_slots", "rows of the engine's batch", registry=r)
        slots.set_function(lambda: engine.load()["slots"])

    def text(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["ServerMetrics"]
