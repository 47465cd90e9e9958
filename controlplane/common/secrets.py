"""API keys and bootstrap tokens: generated here, stored only as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db.models import Model, QuerySet

RowT = TypeVar("RowT", bound=Model)

PREFIX_LENGTH = 8  # characters of the secret kept in clear for lookup and display
MAX_SECRET_LENGTH = 200  # ours are ~56 characters; longer input is not worth hashing


@dataclass(frozen=True)
class IssuedSecret:
    """A freshly generated secret: `raw` is shown once and never stored."""

    raw: str
    prefix: str
    hash: str


def hash_secret(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def issue_secret(kind: str) -> IssuedSecret:
    """Generate a secret like `cpk_ab12cd34_<random>`; its first characters are the lookup prefix."""
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    raw = f"{kind}_{prefix}_{secrets.token_urlsafe(32)}"
    return IssuedSecret(raw=raw, prefix=prefix, hash=hash_secret(raw))


def prefix_of(raw: str) -> str | None:
    """The lookup prefix of a presented secret, or None if it is not shaped like ours."""
    parts = raw.split("_", 2)
    if len(parts) != 3 or len(parts[1]) != PREFIX_LENGTH:
        return None
    return parts[1]


def secret_matches(raw: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(raw), stored_hash)


def secret_lookup(raw: str, rows: QuerySet[RowT], *, prefix_field: str, hash_field: str) -> RowT | None:
    """The row among `rows` whose stored hash matches the presented secret, or None.

    The prefix narrows the search through an index; prefixes are short, so collisions
    are possible and every candidate's hash is compared, in constant time.
    """
    if not raw or len(raw) > MAX_SECRET_LENGTH:
        return None
    prefix = prefix_of(raw)
    if prefix is None:
        return None
    candidates: Any = rows.filter(**{prefix_field: prefix})
    for row in candidates:
        if secret_matches(raw, getattr(row, hash_field)):
            return row
    return None
