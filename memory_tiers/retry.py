"""Retry pacing shared by the background workers."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: base_s * 2**attempt, capped at max_s."""

    base_s: float = 0.1
    max_s: float = 30.0

    def delay_s(self, attempt: int) -> float:
        delay: float = min(self.max_s, self.base_s * 2.0 ** min(attempt, 30))
        return delay * (0.5 + random.random() / 2)
