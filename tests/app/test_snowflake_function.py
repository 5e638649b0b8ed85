"""POST /v1/snowflake/embed speaks Snowflake's external-function protocol."""

from __future__ import annotations

import httpx
import numpy as np


def test_every_row_number_is_answered_in_order(client: httpx.Client) -> None:
    rows = [[0, "first text"], [1, None], [2, "third text"], [3, "first text"]]

    response = client.post("/v1/snowflake/embed", json={"data": rows})

    assert response.status_code == 200
    data = response.json()["data"]
    assert [row[0] for row in data] == [0, 1, 2, 3]
    assert data[1][1] is None
    first, third, again = (np.array(data[i][1]) for i in (0, 2, 3))
    assert first.shape == (384,)
    np.testing.assert_allclose(first, again)
    assert float(first @ third) < 0.999


def test_the_vector_matches_the_embeddings_endpoint(client: httpx.Client) -> None:
    text = "a sentence both endpoints embed"

    snow = client.post("/v1/snowflake/embed", json={"data": [[7, text]]}).json()
    oai = client.post("/v1/embeddings", json={"input": text}).json()

    np.testing.assert_allclose(
        snow["data"][0][1], oai["data"][0]["embedding"], atol=1e-6
    )


def test_malformed_rows_name_the_row(client: httpx.Client) -> None:
    bad_shape = client.post(
        "/v1/snowflake/embed", json={"data": [[0, "ok"], ["x", "y"]]}
    )
    bad_type = client.post("/v1/snowflake/embed", json={"data": [[0, 42]]})
    blank = client.post("/v1/snowflake/embed", json={"data": [[0, "ok"], [1, " "]]})

    assert bad_shape.status_code == 422
    assert bad_shape.json()["error"]["field"] == "data[1]"
    assert bad_type.json()["error"]["field"] == "data[0][1]"
    assert blank.json()["error"]["field"] == "data[1][1]"
