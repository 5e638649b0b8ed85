"""Vectors by key and memories by meaning, over HTTP against real stores."""

from __future__ import annotations

import time

import httpx
import numpy as np


def vec(dim: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(dim)
    return (values / np.linalg.norm(values)).tolist()


def test_put_lookup_delete_roundtrip(client: httpx.Client, namespace: str) -> None:
    items = [
        {"key": f"k{i}", "vector": vec(384, i), "metadata": {"i": i}} for i in range(3)
    ]

    put = client.put("/v1/vectors", json={"namespace": namespace, "items": items})
    looked = client.post(
        "/v1/lookup", json={"namespace": namespace, "keys": ["k0", "k2", "nope"]}
    )
    deleted = client.delete(f"/v1/vectors/k0?namespace={namespace}")
    after = client.post(
        "/v1/lookup", json={"namespace": namespace, "keys": ["k0", "k2"]}
    )

    assert put.status_code == 200
    versions = [item["version"] for item in put.json()["items"]]
    assert versions == sorted(versions)
    body = looked.json()
    assert [item["key"] for item in body["items"]] == ["k0", "k2"]
    assert body["missing"] == ["nope"]
    np.testing.assert_allclose(
        body["items"][1]["vector"], items[2]["vector"], rtol=1e-6
    )
    assert body["items"][0]["tier"] == "host"  # written through on commit
    assert looked.headers["X-Tiermem-Served-By"] == "host=2"
    assert deleted.status_code == 204
    assert [item["key"] for item in after.json()["items"]] == ["k2"]
    assert after.json()["missing"] == ["k0"]


def test_delete_of_an_unknown_key_is_404(client: httpx.Client, namespace: str) -> None:
    response = client.delete(f"/v1/vectors/ghost?namespace={namespace}")

    assert response.status_code == 404
    assert response.json()["error"]["field"] == "key"


def test_memory_is_found_by_a_query_phrased_differently(
    client: httpx.Client, namespace: str
) -> None:
    texts = [
        "The cat is sleeping on the warm windowsill.",
        "Quarterly revenue grew twelve percent year over year.",
        "The recipe needs two cups of flour and an egg.",
        "Our team won the football match last night.",
    ]
    ids = [
        client.post("/v1/memories", json={"namespace": namespace, "text": t}).json()[
            "id"
        ]
        for t in texts
    ]

    found = client.post(
        "/v1/memories/search",
        json={
            "namespace": namespace,
            "query": "a kitten napping by the window",
            "k": 2,
        },
    )

    assert found.status_code == 200
    results = found.json()["results"]
    assert results[0]["id"] == ids[0]
    assert results[0]["score"] > results[1]["score"]


def test_search_turns_exact_once_the_namespace_is_resident(
    client: httpx.Client, namespace: str
) -> None:
    for text in ["apples are red", "bananas are yellow", "the sky is blue"]:
        client.post("/v1/memories", json={"namespace": namespace, "text": text})
    query = {"namespace": namespace, "query": "what colour is a banana", "k": 3}

    first = client.post("/v1/memories/search", json=query).json()
    exact = first
    for _ in range(400):  # the namespace loads into memory in the background
        exact = client.post("/v1/memories/search", json=query).json()
        if exact["exact"]:
            break
        time.sleep(0.05)

    assert first["exact"] is False
    assert exact["exact"] is True
    assert [r["id"] for r in exact["results"]] == [r["id"] for r in first["results"]]
    np.testing.assert_allclose(
        [r["score"] for r in exact["results"]],
        [r["score"] for r in first["results"]],
        atol=1e-4,
    )


def test_metadata_filter_limits_the_results(
    client: httpx.Client, namespace: str
) -> None:
    for i, text in enumerate(["red car", "red apple", "blue car", "blue sky"]):
        client.post(
            "/v1/memories",
            json={
                "namespace": namespace,
                "text": text,
                "metadata": {"colour": text.split()[0], "i": i},
            },
        )

    found = client.post(
        "/v1/memories/search",
        json={
            "namespace": namespace,
            "query": "vehicle",
            "k": 4,
            "filter": {"colour": "blue"},
        },
    ).json()

    assert {r["text"] for r in found["results"]} == {"blue car", "blue sky"}
    assert found["results"][0]["text"] == "blue car"


def test_get_and_delete_a_memory(client: httpx.Client, namespace: str) -> None:
    created = client.post(
        "/v1/memories",
        json={"namespace": namespace, "text": "remember me", "metadata": {"a": 1}},
    )
    memory_id = created.json()["id"]

    got = client.get(f"/v1/memories/{memory_id}?namespace={namespace}")
    removed = client.delete(f"/v1/memories/{memory_id}?namespace={namespace}")
    gone = client.get(f"/v1/memories/{memory_id}?namespace={namespace}")

    assert created.status_code == 201
    assert got.json()["text"] == "remember me"
    assert got.json()["metadata"] == {"a": 1}
    assert got.json()["tier"] in {"hbm", "host", "pgvector"}
    assert removed.status_code == 204
    assert gone.status_code == 404


def test_tiers_report_capacity_use_and_latency(client: httpx.Client) -> None:
    client.post("/v1/embeddings", json={"input": "warm the tiers up"})

    tiers = {t["name"]: t for t in client.get("/v1/tiers").json()["tiers"]}

    assert list(tiers) == ["hbm", "host", "redis", "pgvector", "warehouse", "object"]
    for name in ("hbm", "host"):
        assert tiers[name]["capacity_bytes"] > 0
        assert 0 < tiers[name]["used_bytes"] <= tiers[name]["capacity_bytes"]
    assert all(t["enabled"] and t["healthy"] for t in tiers.values())
    assert tiers["host"]["p99_ms"] is not None


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"model": True, "system_of_record": True}
