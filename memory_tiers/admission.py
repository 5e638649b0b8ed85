"""Admission rules: which offered records a resident tier takes in."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


class AdmitAll:
    """Every offered record is admitted (the host tier)."""

    def observe(self, hashes: Iterable[int]) -> None:
        """Nothing to remember."""

    def admits(self, key_hash: int) -> bool:
        return True


class SeenTwice:
    """Admit a key seen at least twice within a sliding window.

    Two generations of counts approximate the window: a key counts if it was
    seen in the current or the previous generation. Each generation is capped
    at max_keys, so a scan of distinct keys costs bounded memory.
    """

    def __init__(
        self,
        window_s: float,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._started = clock()

    def observe(self, hashes: Iterable[int]) -> None:
        """Count one sighting of each hash."""
        self._rotate_if_due()
        for h in hashes:
            self._current[h] = self._current.get(h, 0) + 1

    def admits(self, key_hash: int) -> bool:
        seen = self._current.get(key_hash, 0) + self._previous.get(key_hash, 0)
        return seen >= 2

    def _rotate_if_due(self) -> None:
        now = self._clock()
        if now - self._started < self.window_s and len(self._current) < self.max_keys:
            return
        self._previous = self._current
        self._current = {}
        self._started = now
