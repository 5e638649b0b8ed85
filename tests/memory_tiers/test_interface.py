"""Every tier implements the whole interface, under a name of its own."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import memory_tiers
from memory_tiers.base import Tier

INTERFACE = ("get_many", "put_many", "delete_many", "stats", "close")


def all_tier_classes() -> list[type[Tier]]:
    for module in pkgutil.iter_modules(memory_tiers.__path__):
        importlib.import_module(f"memory_tiers.{module.name}")
    found: list[type[Tier]] = []
    pending = list(Tier.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("memory_tiers."):
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_tier_class_implements_every_method() -> None:
    classes = all_tier_classes()

    assert len(classes) >= 2
    for cls in classes:
        assert not inspect.isabstract(cls), (
            f"{cls.__name__} misses {cls.__abstractmethods__}"
        )
        for method in INTERFACE:
            assert inspect.iscoroutinefunction(getattr(cls, method)), (cls, method)


def test_exactly_one_tier_is_the_system_of_record() -> None:
    authoritative = [cls for cls in all_tier_classes() if cls.authoritative]

    assert [cls.name for cls in authoritative] == ["pgvector"]
