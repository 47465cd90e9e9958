"""Errors the operator services raise, worded for the operator who triggered the action.

They live here rather than in one app because agent and command actions share them, and
the admin turns both into the same form errors and action summaries.
"""

from __future__ import annotations


class OperatorActionError(Exception):
    """Base: the action changed nothing; `str(exc)` is a sentence an operator understands."""


class ConcurrentModificationError(OperatorActionError):
    """The row's `version` is no longer the one the operator saw: someone else wrote it first."""


class InvalidTransition(OperatorActionError):
    """The row's current state does not allow the requested action (e.g. cancel a completed job)."""
