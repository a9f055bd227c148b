"""Prometheus metrics (prefix `attnserve_`, label `model`); definitions are in the README."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.engine import StepStats

# Seconds: from a millisecond step on a tiny model to minute-long generations.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Every series of one server, in a registry of its own (tests start many servers)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(f"attnserve_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"attnserve_{name}", doc, ["model"], registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(
                f"attnserve_{name}", doc, ["model"], buckets=buckets, registry=registry
            )

        self.requests = counter(
            "requests_total", "HTTP requests by route and status code", ("model", "route", "status")
        )
        self.prompt_tokens = counter(
            "prompt_tokens_total", "Input tokens of admitted requests", ("model",)
        )
        self.generation_tokens = counter("generation_tokens_total", "Generated tokens", ("model",))
        self.finished = counter(
            "request_finished_total", "Finished requests by reason", ("model", "finish_reason")
        )
        self.running = gauge("requests_running", "Requests holding KV cache and decoding")
        self.waiting = gauge("requests_waiting", "Requests queued for admission")
        self.kv_usage = gauge("kv_cache_usage_ratio", "Used KV cache blocks / all blocks")
        self.preemptions = counter(
            "preemptions_total", "Requests preempted and recomputed", ("model",)
        )
        self.ttft = histogram(
            "time_to_first_token_seconds",
            "HTTP arrival to the first generated token",
            LATENCY_BUCKETS,
        )
        self.itl = histogram(
            "inter_token_latency_seconds",
            "Between consecutive token outputs of a request",
            STEP_BUCKETS,
        )
        self.e2e = histogram(
            "e2e_request_latency_seconds", "HTTP arrival to the last output", LATENCY_BUCKETS
        )
        self.queue_time = histogram(
            "request_queue_time_seconds",
            "Engine arrival to admission (first prefill)",
            LATENCY_BUCKETS,
        )
        self.batch_size = histogram("batch_size", "Rows (beams) run per engine step", BATCH_BUCKETS)
        self.step_duration = histogram(
            "step_duration_seconds", "Wall time of one engine step", STEP_BUCKETS
        )

    def observe_step(self, model: str, stats: StepStats) -> None:
        """The engine's per-step callback (called on the engine thread)."""
        self.running.labels(model).set(stats.num_running)
        self.waiting.labels(model).set(stats.num_waiting)
        self.kv_usage.labels(model).set(stats.blocks_used / max(1, stats.blocks_total))
        if stats.num_preempted:
            self.preemptions.labels(model).inc(stats.num_preempted)
        if stats.batch_size:
            self.batch_size.labels(model).observe(stats.batch_size)
            self.step_duration.labels(model).observe(stats.duration_s)
