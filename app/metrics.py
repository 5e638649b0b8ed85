"""Prometheus metrics: request latency per route, and tier state at scrape time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Buckets dense around the 50 ms target, where the question is asked.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    10,
)


class Metrics:
    """One registry per app, so that several apps in one process stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "tiermem_request_duration_seconds",
            "Time from request to response, by route and status class.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.served = Counter(
            "tiermem_items_served_total",
            "Items answered, by the tier that served them.",
            ["tier"],
            registry=self.registry,
        )
        self.tier_healthy = Gauge(
            "tiermem_tier_healthy",
            "1 if the tier answered its last call.",
            ["tier"],
            registry=self.registry,
        )
        self.tier_items = Gauge(
            "tiermem_tier_items",
            "Records held by the tier.",
            ["tier"],
            registry=self.registry,
        )
        self.tier_used = Gauge(
            "tiermem_tier_used_bytes",
            "Bytes in use by the tier.",
            ["tier"],
            registry=self.registry,
        )
        self.tier_p99 = Gauge(
            "tiermem_tier_p99_seconds",
            "Recent p99 latency of the tier's calls.",
            ["tier"],
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "tiermem_outbox_pending",
            "Committed records not yet exported.",
            registry=self.registry,
        )

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.requests.labels(
            path, request.method, f"{response.status_code // 100}xx"
        ).observe(time.perf_counter() - started)
        for item in response.headers.get("X-Tiermem-Served-By", "").split(","):
            tier, _, count = item.partition("=")
            if count.isdigit():
                self.served.labels(tier).inc(int(count))
        return response


router = APIRouter(tags=["metrics"])


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format; tier gauges are read fresh at each scrape."""
    state: Metrics = request.app.state.metrics
    service = getattr(request.app.state, "service", None)
    if service is not None:
        for tier in await service.hierarchy.stats():
            name = str(tier["name"])
            state.tier_healthy.labels(name).set(1 if tier["healthy"] else 0)
            state.tier_items.labels(name).set(float(tier["items"] or 0))
            state.tier_used.labels(name).set(float(tier["used_bytes"] or 0))
            p99 = tier["p99_ms"]
            if isinstance(p99, float):
                state.tier_p99.labels(name).set(p99 / 1000.0)
        pending = await service.outbox_pending()
        if pending is not None:
            state.outbox_pending.set(pending)
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)
