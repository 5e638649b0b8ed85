"""A cache tier that fails costs speed, never correctness or acknowledged data."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from memory_tiers.embedded_servers import start_redis
from tests.conftest import ServiceThread

DEADLINE = {"X-Tiermem-Deadline-Ms": "30000"}


def vector(seed: int) -> list[float]:
    values = np.random.default_rng(seed).standard_normal(384)
    return (values / np.linalg.norm(values)).tolist()


def test_the_service_keeps_answering_when_redis_dies(
    tmp_path: Path, postgres_dsn: str, namespace: str
) -> None:
    redis = start_redis(tmp_path / "redis")
    settings = {"postgres_dsn": postgres_dsn, "redis_url": redis.url}
    with (
        ServiceThread(**settings, data_dir=tmp_path / "data") as service,
        httpx.Client(base_url=service.url, headers=DEADLINE, timeout=60) as client,
    ):
        before = [{"key": "before", "vector": vector(1)}]
        client.put("/v1/vectors", json={"namespace": namespace, "items": before})

        redis.stop()
        after = [{"key": "after", "vector": vector(2)}]
        written = client.put(
            "/v1/vectors", json={"namespace": namespace, "items": after}
        )
        body = {"namespace": namespace, "keys": ["before", "after"]}
        looked = client.post("/v1/lookup", json=body)
        embedded = client.post("/v1/embeddings", json={"input": "still embedding"})
        tiers = {t["name"]: t for t in client.get("/v1/tiers").json()["tiers"]}
        ready = client.get("/readyz")

    assert written.status_code == 200
    items = {item["key"]: item for item in looked.json()["items"]}
    assert set(items) == {"before", "after"}
    np.testing.assert_allclose(items["after"]["vector"], vector(2), rtol=1e-6)
    assert embedded.status_code == 200
    assert tiers["redis"]["healthy"] is False
    assert tiers["redis"]["errors"] >= 1
    assert tiers["redis"]["skipped_while_failing"] >= 1
    assert ready.status_code == 200
