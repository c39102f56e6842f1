"""Prometheus metrics, one registry per app (so tests and several apps in a process don't collide).

Under `rescam serve --workers N` every worker is its own process: with PROMETHEUS_MULTIPROC_DIR
set (the CLI sets it), each writes its values to files there and a scrape of any worker adds
them all up (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rescam_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram("rescam_http_request_seconds", "HTTP request latency", ["method", "route", "status"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("rescam_queue_seconds", "time waiting for a batch", buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("rescam_inference_seconds", "ONNX Runtime time per batch",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.cam = Histogram("rescam_cam_seconds", "CAM heatmaps and boxes per image", buckets=LATENCY_BUCKETS,
                             registry=r)
        self.batch_size = Histogram("rescam_batch_size", "images per inference batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        # one series per live worker in multiprocess mode (each may briefly serve another version)
        self.model_version = Gauge("rescam_model_version", "the live model version", ["model", "provider"],
                                   registry=r, multiprocess_mode="liveall")
        self.model_memory = Gauge("rescam_model_memory_bytes", "resident memory a loaded model added to the process",
                                  ["model", "version"], registry=r, multiprocess_mode="liveall")
        self.loaded_models = Gauge("rescam_loaded_models", "models loaded in this process", registry=r,
                                   multiprocess_mode="liveall")
        # a request for a model in standby (unloaded to keep within RESCAM_MAX_LOADED_MODELS) waits this long
        self.model_loads = Histogram("rescam_model_load_seconds", "loads of a model on demand", ["model"],
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("rescam_images", "images answered", ["outcome"], registry=r)
        # a drift signal: answers whose image looks like none of the model's classes, per version
        self.verdicts = Counter("rescam_open_world_answers", "answered images by open-world verdict",
                                ["model", "version", "verdict"], registry=r)

        # a shadow trial's candidate beside the live version: agree / differ (top-1), failed, skipped (busy)
        self.shadow_images = Counter("rescam_shadow_images", "images a trial's candidate also answered",
                                     ["model", "version", "outcome"], registry=r)

    def count_verdict(self, model: str, version: int, unknown: bool | None) -> None:
        verdict = "unscored" if unknown is None else "unknown" if unknown else "known"
        self.verdicts.labels(model, str(version), verdict).inc()

    def observe_batch(self, size: int, ms: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(ms / 1000)

    def exposition(self) -> bytes:
        """The scrape: this process's metrics, or every worker's when they are several."""
        if os.environ.get(MULTIPROCESS):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    @staticmethod
    def process_ended() -> None:
        """A worker stops: its live gauges leave the scrape."""
        if os.environ.get(MULTIPROCESS):
            multiprocess.mark_process_dead(os.getpid())


class CountRequests:
    """ASGI middleware: each request counted and timed by method, route template and status.
    Plain ASGI rather than `@app.middleware("http")`, whose wrapping of every request and response
    in tasks and streams cost about a millisecond of CPU per prediction (BENCHMARKS.md, peers)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def sent(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            metrics = getattr(scope["app"].state, "metrics", None)
            if metrics is not None:
                labels = (scope["method"], getattr(scope.get("route"), "path", "unmatched"), str(status))
                metrics.requests.labels(*labels).inc()
                metrics.latency.labels(*labels).observe(time.perf_counter() - start)
