"""Prometheus metrics for `nmt serve --metrics` (needs pip install 'nmt[metrics]'): what GET
/metrics exposes, in a registry of the app's own (several apps in one process keep apart).

    nmt_requests_total{endpoint,status}     requests answered, by endpoint and status
    nmt_errors_total{status}                of those, the ones answered 4xx or 5xx
    nmt_request_seconds{endpoint}           time to answer (histogram)
    nmt_lines_total                         lines translated
    nmt_batch_lines                         lines per decode call (histogram)
    nmt_queue_lines                         lines waiting to be decoded
    nmt_in_flight                           requests being answered
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nmt.errors import NmtError

try:
    import prometheus_client as prom
except ImportError:
    prom = None

# Paths reported as themselves; any other is "other", so that scanners cannot grow the labels.
ENDPOINTS = ("/translate", "/health", "/ready", "/models", "/metrics", "/languages", "/")


def require_prometheus() -> None:
    if prom is None:
        raise NmtError("--metrics needs prometheus-client: pip install 'nmt[metrics]'")


class Metrics:
    def __init__(self, queue_lines: Callable[[], float], in_flight: Callable[[], float]) -> None:
        require_prometheus()
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter(
            "nmt_requests_total", "Requests answered.", ["endpoint", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = prom.Counter(
            "nmt_errors_total", "Requests answered with 4xx or 5xx.", ["status"],
            registry=self.registry,
        )  # fmt: skip
        self.seconds = prom.Histogram(
            "nmt_request_seconds", "Time to answer a request.", ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )  # fmt: skip
        self.lines = prom.Counter("nmt_lines_total", "Lines translated.", registry=self.registry)
        self.batch_lines = prom.Histogram(
            "nmt_batch_lines", "Lines per decode call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry,
        )  # fmt: skip
        queue = prom.Gauge("nmt_queue_lines", "Lines waiting.", registry=self.registry)
        queue.set_function(queue_lines)
        flight = prom.Gauge("nmt_in_flight", "Requests being answered.", registry=self.registry)
        flight.set_function(in_flight)

    def batch(self, lines: int) -> None:
        self.lines.inc(lines)
        self.batch_lines.observe(lines)

    def exposition(self) -> tuple[bytes, str]:
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


class RecordRequests:
    """ASGI middleware: each HTTP request's endpoint, status and duration into `metrics`."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"

        async def send_recorded(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recorded)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(str(status)).inc()
            self.metrics.seconds.labels(endpoint).observe(time.perf_counter() - started)
