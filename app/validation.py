"""Checks against the configured limits; each failure names the field and limit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.errors import BadInput
from app.settings import Settings


def _at_most(
    field: str, got: int, limit: int, unit: str, variable: str, status_code: int = 422
) -> None:
    """Refuse `got` above `limit`, naming the setting that sets the limit."""
    if got > limit:
        raise BadInput(
            field,
            f"has {got} {unit}; at most {limit} are allowed (TIERMEM_{variable})",
            status_code=status_code,
        )


def check_batch(field: str, size: int, settings: Settings) -> None:
    if size == 0:
        raise BadInput(field, "must not be empty")
    limit = settings.max_batch_items
    _at_most(field, size, limit, "items", "MAX_BATCH_ITEMS", status_code=413)


def check_texts(field: str, texts: Sequence[str], settings: Settings) -> None:
    """A non-empty batch of texts, each within the limits."""
    check_batch(field, len(texts), settings)
    for i, text in enumerate(texts):
        check_text(f"{field}[{i}]", text, settings)


def check_text(field: str, text: str, settings: Settings) -> None:
    if not text.strip():
        raise BadInput(field, "must not be empty or only whitespace")
    limit = settings.max_text_chars
    _at_most(field, len(text), limit, "characters", "MAX_TEXT_CHARS", status_code=413)


def check_vector(field: str, values: Sequence[float], settings: Settings) -> np.ndarray:
    """The vector as float32; refuses empty, oversized, NaN and Inf."""
    if not values:
        raise BadInput(field, "must hold at least 1 value")
    _at_most(field, len(values), settings.max_dim, "dimensions", "MAX_DIM")
    vector = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vector).all():
        raise BadInput(field, "must hold only finite numbers (no NaN or Inf)")
    if np.abs(vector).max() > np.finfo(np.float32).max:
        raise BadInput(field, "values must fit in float32 (|x| <= 3.4e38)")
    return vector.astype(np.float32)


def check_k(k: int, settings: Settings) -> None:
    _at_most("k", k, settings.max_k, "results asked", "MAX_K")


def check_dim(field: str, got: int, expected: int | None) -> None:
    if expected is not None and got != expected:
        raise BadInput(field, f"has {got} dimensions; this namespace holds {expected}")
