"""Vectors on the wire: JSON floats (orjson from numpy) or base64 float32."""

from __future__ import annotations

import base64

import numpy as np


def encode_vector(vector: np.ndarray, encoding_format: str) -> object:
    """A float32 vector as the client asked: a numpy array (JSON list) or base64."""
    values = np.ascontiguousarray(vector, dtype="<f4")
    if encoding_format == "base64":
        return base64.b64encode(values.tobytes()).decode()
    return values
