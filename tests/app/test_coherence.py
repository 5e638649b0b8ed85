"""Two service processes sharing Redis and PostgreSQL never serve stale data."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from memory_tiers.embedded_servers import EmbeddedRedis
from tests.conftest import ServiceProcess

DEADLINE = {"X-Tiermem-Deadline-Ms": "30000"}


def vector(seed: int) -> list[float]:
    values = np.random.default_rng(seed).standard_normal(384)
    return (values / np.linalg.norm(values)).tolist()


@pytest.fixture(scope="module")
def replicas(
    postgres_dsn: str,
    redis_server: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    shared = {"postgres_dsn": postgres_dsn, "redis_url": redis_server.url}
    base: Path = tmp_path_factory.mktemp("replicas")
    a = ServiceProcess(
        **shared, data_dir=base / "a", replica_id="a", log_level="warning"
    )
    b = ServiceProcess(
        **shared, data_dir=base / "b", replica_id="b", log_level="warning"
    )
    with (
        a,
        b,
        httpx.Client(base_url=a.url, headers=DEADLINE) as ca,
        httpx.Client(base_url=b.url, headers=DEADLINE) as cb,
    ):
        yield ca, cb


def put(client: httpx.Client, namespace: str, seed: int) -> int:
    items = [{"key": "k", "vector": vector(seed)}]
    response = client.put("/v1/vectors", json={"namespace": namespace, "items": items})
    response.raise_for_status()
    version: int = response.json()["items"][0]["version"]
    return version


def read(client: httpx.Client, namespace: str) -> dict[str, object] | None:
    body = client.post(
        "/v1/lookup", json={"namespace": namespace, "keys": ["k"]}
    ).json()
    return body["items"][0] if body["items"] else None


def until(predicate: object, timeout_s: float = 20.0) -> float:
    """Seconds until predicate() held; fails after timeout_s."""
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - started < timeout_s, "condition never held"
        time.sleep(0.02)
    return time.monotonic() - started


def test_update_through_one_replica_is_never_served_stale_by_the_other(
    replicas: tuple[httpx.Client, httpx.Client], namespace: str
) -> None:
    a, b = replicas
    first = put(a, namespace, 1)
    for _ in range(3):  # b caches the key in its own memory tiers
        held = read(b, namespace)
    assert held is not None
    assert held["version"] == first
    assert held["tier"] in {"hbm", "host"}

    second = put(a, namespace, 2)
    until(lambda: (read(b, namespace) or {}).get("version") == second)

    for _ in range(20):  # once the new version is seen, the old one never returns
        now = read(b, namespace)
        assert now is not None
        assert now["version"] == second
        np.testing.assert_allclose(now["vector"], vector(2), rtol=1e-6)


def test_delete_through_one_replica_reaches_the_other(
    replicas: tuple[httpx.Client, httpx.Client], namespace: str
) -> None:
    a, b = replicas
    put(a, namespace, 3)
    for _ in range(3):
        assert read(b, namespace) is not None

    assert a.delete(f"/v1/vectors/k?namespace={namespace}").status_code == 204
    until(lambda: read(b, namespace) is None)

    for _ in range(10):
        assert read(b, namespace) is None


def test_resident_search_on_the_other_replica_sees_new_memories(
    replicas: tuple[httpx.Client, httpx.Client], namespace: str
) -> None:
    a, b = replicas
    a.post("/v1/memories", json={"namespace": namespace, "text": "the sun is a star"})
    query = {"namespace": namespace, "query": "what is the sun", "k": 5}
    until(lambda: b.post("/v1/memories/search", json=query).json()["exact"])

    added = a.post(
        "/v1/memories", json={"namespace": namespace, "text": "the sun is hot"}
    )

    def found_on_b() -> bool:
        results = b.post("/v1/memories/search", json=query).json()["results"]
        return added.json()["id"] in {r["id"] for r in results}

    until(found_on_b)
