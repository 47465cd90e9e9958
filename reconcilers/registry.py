"""The project's controllers by name: the one list the app hands to the runtime.

Registration flows one way: this module knows the controllers; the runtime (runner,
manager, metrics) is handed Controller objects or names and never imports this module
(design.md §2).
"""

from __future__ import annotations

from functools import cache

from reconcilers.controllers import CONTROLLER_CLASSES
from reconcilers.runtime.contract import Controller


class UnknownControllerError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown controller {self.name!r}; valid names: {', '.join(controller_names())}"


@cache
def controllers() -> dict[str, Controller]:
    """Every registered controller, by name (names are unique: duplicates fail at import)."""
    registry: dict[str, Controller] = {}
    for cls in CONTROLLER_CLASSES:
        if cls.name in registry:
            raise ValueError(f"duplicate controller name {cls.name!r}")
        registry[cls.name] = cls()
    return registry


def controller_names() -> list[str]:
    return list(controllers())


def controller_get(name: str) -> Controller:
    try:
        return controllers()[name]
    except KeyError:
        raise UnknownControllerError(name) from None
