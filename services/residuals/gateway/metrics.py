"""Prometheus series of the HTTP gateway (names are what dashboards and rules use)."""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "residuals_gateway_requests_total",
            "HTTP requests answered, by route (Service.Method, or none) and HTTP status.",
            ("route", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "residuals_gateway_request_duration_seconds",
            "From request to the end of the answer, unary routes only, by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.streams = Gauge(
            "residuals_gateway_open_streams",
            "Open server-sent event streams (Watch calls).",
            registry=registry,
        )


@functools.cache
def default_metrics() -> GatewayMetrics:
    return GatewayMetrics()
