"""Builders shared by the tier tests; the servers live in tests/conftest.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from memory_tiers.base import Record


@pytest.fixture
def ns() -> str:
    """A namespace no other test uses."""
    return f"ns-{uuid.uuid4().hex[:10]}"


MakeRecord = Callable[..., Record]


@pytest.fixture
def make_record() -> MakeRecord:
    """Builds a record with a seeded random vector."""

    def build(
        namespace: str,
        key: str,
        version: int = 1,
        dim: int = 8,
        seed: int = 0,
        **fields: Any,
    ) -> Record:
        rng = np.random.default_rng(seed)
        vector = rng.standard_normal(dim).astype(np.float32)
        return Record(namespace, key, vector, version=version, **fields)

    return build
