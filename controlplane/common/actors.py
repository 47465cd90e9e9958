"""Who did it: the `actor` string of audit rows and run records, one spelling everywhere."""

from __future__ import annotations

from typing import Any


def actor_for_user(user: Any) -> str:
    return f"user:{user.get_username()}" if user is not None and user.is_authenticated else "user:anonymous"


def actor_for_controller(controller: str) -> str:
    return f"system:{controller}"
