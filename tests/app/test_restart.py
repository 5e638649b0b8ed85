"""An acknowledged write survives a restart of the whole service."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from tests.conftest import ServiceThread


def test_acknowledged_write_is_read_back_after_restart(tmp_path: Path) -> None:
    vector = np.linspace(-1, 1, 384).tolist()
    settings = {"data_dir": tmp_path / "data"}  # embedded PostgreSQL under data_dir

    with (
        ServiceThread(**settings) as first,
        httpx.Client(base_url=first.url, timeout=60) as c,
    ):
        put = c.put(
            "/v1/vectors",
            json={"namespace": "keep", "items": [{"key": "k", "vector": vector}]},
        )
        memory = c.post(
            "/v1/memories", json={"namespace": "keep", "text": "survive a restart"}
        )
    assert put.status_code == 200
    assert memory.status_code == 201

    with (
        ServiceThread(**settings) as second,
        httpx.Client(base_url=second.url, timeout=60) as c,
    ):
        looked = c.post("/v1/lookup", json={"namespace": "keep", "keys": ["k"]})
        got = c.get(f"/v1/memories/{memory.json()['id']}?namespace=keep")

    item = looked.json()["items"][0]
    assert item["tier"] == "pgvector"  # memory tiers start cold
    assert item["version"] == put.json()["items"][0]["version"]
    np.testing.assert_allclose(item["vector"], vector, rtol=1e-6)
    assert got.json()["text"] == "survive a restart"
