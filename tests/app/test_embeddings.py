"""POST /v1/embeddings through the official openai client, on a running service."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import ServiceThread


@pytest.fixture
def oai(service: ServiceThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_embeds_a_list_of_texts(oai: openai.OpenAI) -> None:
    texts = ["The quick brown fox", "jumps over the lazy dog", "Lorem ipsum"]

    response = oai.embeddings.create(model="all-MiniLM-L6-v2", input=texts)

    vectors = np.array([item.embedding for item in response.data])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert [item.index for item in response.data] == [0, 1, 2]
    assert response.usage.prompt_tokens > 3 * 2


def test_float_and_base64_formats_carry_the_same_vector(client: httpx.Client) -> None:
    body = {"input": "one vector, two encodings"}

    floats = client.post("/v1/embeddings", json={**body, "encoding_format": "float"})
    packed = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})

    decoded = np.frombuffer(
        base64.b64decode(packed.json()["data"][0]["embedding"]), "<f4"
    )
    np.testing.assert_array_equal(
        decoded, np.array(floats.json()["data"][0]["embedding"], "<f4")
    )


def test_repeated_texts_are_served_from_the_cache_tiers(client: httpx.Client) -> None:
    text = f"cache me {np.random.default_rng().integers(1 << 40)}"

    first = client.post("/v1/embeddings", json={"input": [text]})
    second = client.post("/v1/embeddings", json={"input": [text, text]})

    assert first.headers["X-Tiermem-Served-By"] == "model=1"
    assert second.headers["X-Tiermem-Served-By"] == "host=2"
    assert "model" in first.headers["X-Tiermem-Timings"]
    np.testing.assert_array_equal(
        first.json()["data"][0]["embedding"], second.json()["data"][1]["embedding"]
    )
    assert (
        second.json()["usage"]["prompt_tokens"]
        == 2 * first.json()["usage"]["prompt_tokens"]
    )
