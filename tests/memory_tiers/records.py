"""Small builders of records for tier tests."""

from __future__ import annotations

import numpy as np

from memory_tiers.base import Record


def unit(dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def record(
    namespace: str, key: str, dim: int = 8, version: int = 1, seed: int | None = None
) -> Record:
    vector = unit(dim, seed if seed is not None else hash((namespace, key)) % 2**32)
    return Record(namespace, key, vector, version=version, text=f"text of {key}")
