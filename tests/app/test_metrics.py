"""GET /metrics: request latency per route and tier state, in Prometheus format."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_metrics_count_requests_by_route_and_report_tiers(client: httpx.Client) -> None:
    client.post("/v1/embeddings", json={"input": "count me"})

    scraped = samples(client.get("/metrics").text)

    counts = {
        labels["route"]: value
        for labels, value in scraped["tiermem_request_duration_seconds_count"]
        if labels["status"] == "2xx"
    }
    assert counts["/v1/embeddings"] >= 1
    healthy = {
        labels["tier"]: value for labels, value in scraped["tiermem_tier_healthy"]
    }
    assert healthy["pgvector"] == 1.0
    assert healthy["host"] == 1.0
    served = {labels["tier"] for labels, _ in scraped["tiermem_items_served_total"]}
    assert served & {"model", "host", "hbm"}
