"""The project's controllers by name, and their current parameters."""

from __future__ import annotations

import logging
from functools import cache

from pydantic import ValidationError

from reconcilers.controllers import CONTROLLER_CLASSES
from reconcilers.models import ReconcilerConfig
from reconcilers.runtime.contract import Controller, ControllerParams

log = logging.getLogger(__name__)


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


def params_load(name: str) -> ControllerParams:
    """The controller's validated params from its config row; the defaults if the row is missing.

    A row whose params no longer validate (edited by hand in the database) falls back to
    the defaults with an ERROR log rather than running on garbage.
    """
    controller = controller_get(name)
    raw = ReconcilerConfig.objects.filter(name=name).values_list("params", flat=True).first()
    if raw is None:
        return controller.default_params()
    try:
        return controller.validate_params(raw)
    except ValidationError as exc:
        log.error("invalid params for %s in the database, using defaults: %s", name, exc)
        return controller.default_params()
