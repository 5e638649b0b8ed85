"""Restarts: acknowledged writes survive, and memory tiers warm from snapshots."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from memory_tiers.embedded_servers import EmbeddedRedis
from tests.conftest import ServiceThread

VECTOR = np.linspace(-1, 1, 384).astype(np.float32)
VECTOR /= np.linalg.norm(VECTOR)


def put(url: str, namespace: str, key: str, vector: np.ndarray) -> int:
    with httpx.Client(base_url=url, timeout=60) as c:
        item = {"key": key, "vector": vector.tolist()}
        response = c.put("/v1/vectors", json={"namespace": namespace, "items": [item]})
    assert response.status_code == 200
    version: int = response.json()["items"][0]["version"]
    return version


def lookup(url: str, namespace: str, key: str) -> dict[str, object]:
    with httpx.Client(base_url=url, timeout=60) as c:
        body = {"namespace": namespace, "keys": [key]}
        response = c.post(
            "/v1/lookup", json=body, headers={"X-Tiermem-Deadline-Ms": "30000"}
        )
    item: dict[str, object] = response.json()["items"][0]
    return item


def test_acknowledged_write_is_read_back_after_restart(tmp_path: Path) -> None:
    settings = {"data_dir": tmp_path / "data"}  # every store embedded under data_dir

    with ServiceThread(**settings) as first, httpx.Client(base_url=first.url) as c:
        version = put(first.url, "keep", "k", VECTOR)
        memory = c.post("/v1/memories", json={"namespace": "keep", "text": "survive"})
    assert memory.status_code == 201

    with ServiceThread(**settings) as second, httpx.Client(base_url=second.url) as c:
        item = lookup(second.url, "keep", "k")
        got = c.get(f"/v1/memories/{memory.json()['id']}?namespace=keep")

    assert item["version"] == version
    assert item["tier"] == "host"  # warmed from the snapshot taken at stop
    np.testing.assert_allclose(item["vector"], VECTOR, rtol=1e-6)
    assert got.json()["text"] == "survive"


def test_a_snapshot_never_serves_a_version_overwritten_while_down(
    tmp_path: Path, postgres_dsn: str, redis_server: EmbeddedRedis, namespace: str
) -> None:
    shared = {"postgres_dsn": postgres_dsn, "redis_url": redis_server.url}
    mine = {**shared, "data_dir": tmp_path / "a", "replica_id": "a"}
    with ServiceThread(**mine) as first:
        put(first.url, namespace, "k", VECTOR)

    # Another replica overwrites the key while this one is down.
    with ServiceThread(**shared, data_dir=tmp_path / "b", replica_id="b") as other:
        newer = put(other.url, namespace, "k", -VECTOR)

    with ServiceThread(**mine) as second:
        item = lookup(second.url, namespace, "k")

    assert item["version"] == newer
    assert item["tier"] not in {"hbm", "host"}  # the stale snapshot row was dropped
    np.testing.assert_allclose(item["vector"], -VECTOR, rtol=1e-6)
