"""Checks against the configured limits; each failure names the field and limit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.errors import BadInput
from app.settings import Settings


def check_batch(field: str, size: int, settings: Settings) -> None:
    if size == 0:
        raise BadInput(field, "must not be empty")
    if size > settings.max_batch_items:
        raise BadInput(
            field,
            f"holds {size} items; at most {settings.max_batch_items} are allowed"
            " (TIERMEM_MAX_BATCH_ITEMS)",
            status_code=413,
        )


def check_texts(field: str, texts: Sequence[str], settings: Settings) -> None:
    """A non-empty batch of texts, each within the limits."""
    check_batch(field, len(texts), settings)
    for i, text in enumerate(texts):
        check_text(f"{field}[{i}]", text, settings)


def check_text(field: str, text: str, settings: Settings) -> None:
    if not text.strip():
        raise BadInput(field, "must not be empty or only whitespace")
    if len(text) > settings.max_text_chars:
        raise BadInput(
            field,
            f"has {len(text)} characters; at most {settings.max_text_chars}"
            " are allowed (TIERMEM_MAX_TEXT_CHARS)",
            status_code=413,
        )


def check_vector(field: str, values: Sequence[float], settings: Settings) -> np.ndarray:
    """The vector as float32; refuses empty, oversized, NaN and Inf."""
    if not values:
        raise BadInput(field, "must hold at least 1 value")
    if len(values) > settings.max_dim:
        raise BadInput(
            field,
            f"has {len(values)} dimensions; at most {settings.max_dim} are allowed"
            " (TIERMEM_MAX_DIM)",
        )
    vector = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vector).all():
        raise BadInput(field, "must hold only finite numbers (no NaN or Inf)")
    if np.abs(vector).max() > np.finfo(np.float32).max:
        raise BadInput(field, "values must fit in float32 (|x| <= 3.4e38)")
    return vector.astype(np.float32)


def check_k(k: int, settings: Settings) -> None:
    if k > settings.max_k:
        raise BadInput(
            "k", f"is {k}; at most {settings.max_k} is allowed (TIERMEM_MAX_K)"
        )


def check_dim(field: str, got: int, expected: int | None) -> None:
    if expected is not None and got != expected:
        raise BadInput(field, f"has {got} dimensions; this namespace holds {expected}")
