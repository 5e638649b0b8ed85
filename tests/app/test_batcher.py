"""The micro-batcher: concurrent requests share forward passes; a lone one
does not wait for company."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.inference.batcher import MicroBatcher
from app.inference.encoder import Encoder, bundled_model_dir


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder("all-MiniLM-L6-v2", bundled_model_dir(), max_seq_tokens=256)


async def test_concurrent_requests_share_batches_and_keep_their_rows(
    encoder: Encoder,
) -> None:
    batcher = MicroBatcher(encoder, max_batch=64, max_wait_ms=50)
    batcher.start()
    requests = [[f"request {i} text {j}" for j in range(i % 3 + 1)] for i in range(16)]

    results = await asyncio.gather(*(batcher.encode(texts) for texts in requests))
    await batcher.stop()

    assert batcher.batches < len(requests)
    for texts, got in zip(requests, results, strict=True):
        alone = encoder.encode(texts)
        np.testing.assert_allclose(got.vectors, alone.vectors, atol=1e-5)
        np.testing.assert_array_equal(got.tokens, alone.tokens)


async def test_a_lone_request_is_served_without_waiting_out_max_wait(
    encoder: Encoder,
) -> None:
    batcher = MicroBatcher(encoder, max_batch=64, max_wait_ms=600_000)
    batcher.start()

    # Were it to wait for company, this would take ten minutes.
    first = await asyncio.wait_for(batcher.encode(["alone"]), timeout=60)
    second = await asyncio.wait_for(batcher.encode(["alone again"]), timeout=60)
    await batcher.stop()

    assert first.vectors.shape == second.vectors.shape == (1, 384)
    assert batcher.batches == 2
