"""Admission: a key must be seen twice within the window."""

from __future__ import annotations

from memory_tiers.admission import AdmitAll, SeenTwice


class FakeClock:
    """A clock the test moves by hand, so window rotation is deterministic."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_seen_once_is_not_admitted() -> None:
    policy = SeenTwice(window_s=10)

    policy.observe([1])

    assert not policy.admits(1)


def test_a_key_seen_twice_is_admitted() -> None:
    policy = SeenTwice(window_s=10)

    policy.observe([1])
    policy.observe([1])

    assert policy.admits(1)
    assert not policy.admits(2)


def test_sightings_older_than_two_windows_are_forgotten() -> None:
    clock = FakeClock()
    policy = SeenTwice(window_s=10, clock=clock)
    policy.observe([1])

    clock.now = 11
    policy.observe([1])
    assert policy.admits(1)  # previous generation still counts

    clock.now = 22
    policy.observe([2])
    clock.now = 33
    policy.observe([1])
    assert not policy.admits(1)


def test_generation_is_capped_in_keys() -> None:
    policy = SeenTwice(window_s=1e9, max_keys=10)

    for key in range(100):
        policy.observe([key])

    assert len(policy._current) <= 10


def test_admit_all_admits_everything() -> None:
    assert AdmitAll().admits(12345)
