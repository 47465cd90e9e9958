"""Fixtures for the operations tests: a controller to look at, whatever has landed in the registry."""

from __future__ import annotations

from typing import ClassVar

import pytest

from reconcilers import registry
from reconcilers.runtime.contract import Controller, ReconcileContext, ReconcileResult


class _ProbeController(Controller):
    """Stands in only while the registry is still empty (before the real controllers land)."""

    name: ClassVar[str] = "probe"
    default_interval_seconds: ClassVar[int] = 60
    step_names: ClassVar[tuple[str, ...]] = ("touched",)

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        return self.result(touched=0)


@pytest.fixture
def controller_names(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The registered controller names (a probe controller if none is registered yet)."""
    names = registry.controller_names()
    if not names:
        probe = _ProbeController()
        monkeypatch.setattr(registry, "controllers", lambda: {probe.name: probe})
        names = registry.controller_names()
    return names
