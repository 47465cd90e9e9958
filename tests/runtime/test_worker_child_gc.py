"""A prefork child keeps its garbage collector ahead of its tasks' garbage (reconcilers/signals.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from celery.signals import task_postrun, worker_process_init

from reconcilers import signals


class Cycle:
    """Garbage only the cycle collector can free, like a task's traceback and its frames."""

    def __init__(self) -> None:
        self.me = self


def _garbage() -> weakref.ref[Cycle]:
    return weakref.ref(Cycle())


@pytest.fixture
def child(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as a freshly started prefork child, with automatic collection off so only
    the hooks collect; everything is put back afterwards."""
    monkeypatch.setattr(signals, "_child_collected_at", None)
    gc.disable()
    try:
        worker_process_init.send(sender=None)
        yield
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_child_freezes_what_it_inherited(child: None) -> None:
    assert gc.get_freeze_count() > 10_000  # the modules, Django's registry, Celery's app


def test_a_child_collects_its_garbage_after_a_task_once_a_period(
    child: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    early = _garbage()
    task_postrun.send(sender=None)  # the period has not passed since the child started
    assert early() is not None
    monkeypatch.setattr(
        signals, "_child_collected_at", signals._child_collected_at - signals.CHILD_FULL_COLLECTION_SECONDS
    )
    task_postrun.send(sender=None)
    assert early() is None  # a full collection ran
    later = _garbage()
    task_postrun.send(sender=None)  # and the period starts again
    assert later() is not None


def test_outside_a_prefork_child_tasks_collect_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals, "_child_collected_at", None)
    gc.disable()
    try:
        garbage = _garbage()
        task_postrun.send(sender=None)
        assert garbage() is not None
        assert gc.get_freeze_count() == 0
    finally:
        gc.enable()
