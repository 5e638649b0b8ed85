"""Bad input is refused at the edge with a 4xx naming the field and the limit."""

from __future__ import annotations

import httpx
import pytest


def error_of(response: httpx.Response) -> dict[str, str]:
    error: dict[str, str] = response.json()["error"]
    return error


def put_one(client: httpx.Client, namespace: str, vector: object) -> httpx.Response:
    payload = {"namespace": namespace, "items": [{"key": "k", "vector": vector}]}
    return client.put("/v1/vectors", json=payload)


def test_wrong_dimension_names_the_item_and_the_namespace_dim(
    client: httpx.Client, namespace: str
) -> None:
    assert put_one(client, namespace, [0.1, 0.2, 0.3]).status_code == 200

    response = put_one(client, namespace, [0.1, 0.2])

    assert response.status_code == 422
    assert error_of(response)["field"] == "items[0].vector"
    assert "holds 3" in error_of(response)["message"]


def test_mixed_dimensions_in_one_batch_write_nothing(
    client: httpx.Client, namespace: str
) -> None:
    items = [
        {"key": "a", "vector": [1.0, 0.0]},
        {"key": "b", "vector": [1.0, 0.0, 0.0]},
    ]

    response = client.put("/v1/vectors", json={"namespace": namespace, "items": items})
    lookup = client.post(
        "/v1/lookup", json={"namespace": namespace, "keys": ["a", "b"]}
    )

    assert response.status_code == 422
    assert error_of(response)["field"] == "items[1].vector"
    assert lookup.json()["missing"] == ["a", "b"]


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values_are_refused(
    client: httpx.Client, namespace: str, bad: str
) -> None:
    body = (
        f'{{"namespace": "{namespace}", '
        f'"items": [{{"key": "k", "vector": [0.5, {bad}]}}]}}'
    )

    response = client.put(
        "/v1/vectors", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert error_of(response)["field"] == "items[0].vector"
    assert "finite" in error_of(response)["message"]


def test_empty_batches_are_refused(client: httpx.Client) -> None:
    cases = {
        "/v1/embeddings": ({"input": []}, "input"),
        "/v1/lookup": ({"keys": []}, "keys"),
    }
    for path, (body, field) in cases.items():
        response = client.post(path, json=body)
        assert response.status_code == 422, path
        assert error_of(response)["field"] == field

    response = client.put("/v1/vectors", json={"items": []})
    assert response.status_code == 422
    assert error_of(response)["field"] == "items"


def test_oversized_batch_names_the_limit(client: httpx.Client) -> None:
    response = client.post("/v1/lookup", json={"keys": [str(i) for i in range(2049)]})

    assert response.status_code == 413
    assert "2048" in error_of(response)["message"]
    assert "TIERMEM_MAX_BATCH_ITEMS" in error_of(response)["message"]


def test_text_over_the_limit_names_the_limit(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"input": ["ok", "x" * 20_001]})

    assert response.status_code == 413
    assert error_of(response)["field"] == "input[1]"
    assert "20000" in error_of(response)["message"]


def test_blank_text_is_refused(client: httpx.Client) -> None:
    response = client.post("/v1/memories", json={"text": "   "})

    assert response.status_code == 422
    assert error_of(response)["field"] == "text"


def test_unknown_fields_are_refused(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"input": "hi", "temperature": 0.1})

    assert response.status_code == 422
    assert error_of(response)["field"] == "temperature"


def test_k_over_the_limit_names_the_limit(client: httpx.Client) -> None:
    response = client.post("/v1/memories/search", json={"query": "q", "k": 101})

    assert response.status_code == 422
    assert error_of(response)["field"] == "k"
    assert "100" in error_of(response)["message"]


def test_search_needs_exactly_one_of_query_and_vector(client: httpx.Client) -> None:
    neither = client.post("/v1/memories/search", json={"k": 3})
    both = client.post("/v1/memories/search", json={"query": "q", "vector": [1.0]})

    assert neither.status_code == both.status_code == 422
    assert error_of(neither)["field"] == "query"


def test_bad_namespace_is_refused(client: httpx.Client) -> None:
    response = client.post("/v1/lookup", json={"namespace": "emb:x", "keys": ["a"]})

    assert response.status_code == 422
    assert error_of(response)["field"] == "namespace"


def test_unknown_model_is_refused(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"input": "hi", "model": "gpt-9"})

    assert response.status_code == 422
    assert error_of(response)["field"] == "model"


def test_bad_deadline_header_is_refused(client: httpx.Client) -> None:
    response = client.post(
        "/v1/lookup", json={"keys": ["a"]}, headers={"X-Tiermem-Deadline-Ms": "soon"}
    )

    assert response.status_code == 422
    assert error_of(response)["field"] == "X-Tiermem-Deadline-Ms"
