"""API keys and bootstrap tokens: generated here, stored only as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX_LENGTH = 8  # characters of the secret kept in clear for lookup and display


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
