"""Test support: install extra controllers into the registry for the duration of a block.

The registry is `reconcilers.registry.controllers()`; every lookup (controller_names,
controller_get) goes through that module attribute, so replacing it is enough. Real
controllers stay registered alongside the test ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from reconcilers import registry
from reconcilers.runtime.contract import Controller


def registry_with(*classes: type[Controller]) -> dict[str, Controller]:
    """The real registry plus one instance of each class (a duplicate name is an error)."""
    combined = dict(registry.controllers.__wrapped__())
    for cls in classes:
        if cls.name in combined:
            raise ValueError(f"duplicate controller name {cls.name!r}")
        combined[cls.name] = cls()
    return combined


@contextmanager
def controllers_installed(*classes: type[Controller]) -> Iterator[dict[str, Controller]]:
    """Make `classes` registered controllers inside the block (restores the registry after)."""
    combined = registry_with(*classes)
    original = registry.controllers
    registry.controllers = lambda: combined  # type: ignore[assignment]
    try:
        yield combined
    finally:
        registry.controllers = original
