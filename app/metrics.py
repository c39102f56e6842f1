"""Prometheus metrics, one registry per app (so tests and several apps in a process don't collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.model_version = Gauge("rescam_model_version", "the live model version", ["model", "provider"],
                                   registry=r)
        self.images = Counter("rescam_images", "images answered", ["outcome"], registry=r)

    def observe_batch(self, size: int, ms: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(ms / 1000)
