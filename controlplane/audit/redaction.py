"""What the audit log never stores: secrets, found by the name of their key or by their shape.

A secret under an innocent key (a DSN in "target", a bearer header pasted into "note")
is as much a leak as one under "password", so values are scanned too, for the shapes
secrets have: PEM private keys, URLs with a password, bearer credentials, cloud and SaaS
key formats, and this product's own API keys and bootstrap tokens. Look-alikes stay
readable: UUIDs, hex digests, URLs without a password, prefixes of our keys (8 hex
characters, kept for lookup and display). Only the secret part of a value is replaced,
so "postgres://app:[REDACTED]@db/app" still says where it pointed (design.md §3.4).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Key names, matched on the key lowercased with separators removed, so "api_key",
# "X-Api-Key", "privateKey", "Connection String" and "db_password" are all caught.
SECRET_KEY_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "pass",
    "token",
    "secret",
    "apikey",
    "authorization",
    "privatekey",
    "credential",
    "cookie",
    "session",
    "dsn",
    "connectionstring",
)
_KEY_SEPARATORS = re.compile(r"[\s_\-.]+")

# Value shapes. Each pattern's `secret` group is what gets replaced (the whole match when
# it has no such group).
SECRET_VALUE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # PEM private key blocks (RSA, EC, OPENSSH, ENCRYPTED, plain PKCS#8); an unterminated
    # block (a truncated paste) is redacted to the end of the value.
    re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)", re.DOTALL
    ),
    # scheme://user:password@host: only the password (the URL stays readable).
    re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s/:@]*:(?P<secret>[^\s@/]+)@"),
    # HTTP credentials: "Bearer <token>", "Basic <base64>", "Token <key>".
    re.compile(r"\b(?:Bearer|Basic|Token)\s+(?P<secret>[A-Za-z0-9\-._~+/]{8,}=*)", re.IGNORECASE),
    # AWS access key ids; GitHub, GitLab, Slack, Stripe, Google, SendGrid, npm, PyPI tokens.
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),
    re.compile(r"\bglpat-[A-Za-z0-9\-_]{20,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    re.compile(r"\bAIza[0-9A-Za-z\-_]{35}"),
    re.compile(r"\bSG\.[A-Za-z0-9\-_]{16,}\.[A-Za-z0-9\-_]{16,}"),
    re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"),
    re.compile(r"\bpypi-[A-Za-z0-9\-_]{50,}"),
    # JSON Web Tokens: three base64url parts, the first two JSON objects ("eyJ").
    re.compile(r"\beyJ[A-Za-z0-9\-_]{8,}\.eyJ[A-Za-z0-9\-_]{8,}\.[A-Za-z0-9\-_]{8,}"),
    # This product's API keys and bootstrap tokens: <kind>_<8 hex>_<random>.
    re.compile(r"\bcp[a-z]_[0-9a-f]{8}_[A-Za-z0-9\-_]{20,}"),
)


def secret_key(key: object) -> bool:
    """Whether a mapping key names a secret."""
    if not isinstance(key, str):
        return False
    normalized = _KEY_SEPARATORS.sub("", key).lower()
    return any(word in normalized for word in SECRET_KEY_WORDS)


def redact_text(text: str) -> str:
    """`text` with every secret-shaped part replaced by REDACTED."""
    for pattern in SECRET_VALUE_PATTERNS:
        text = pattern.sub(_replacement, text)
    return text


def _replacement(match: re.Match[str]) -> str:
    if "secret" not in match.re.groupindex or match.group("secret") is None:
        return REDACTED
    start, end = match.span("secret")
    whole_start = match.start()
    return match.group(0)[: start - whole_start] + REDACTED + match.group(0)[end - whole_start :]


def redact_secrets(value: Any) -> Any:
    """A copy of `value` with secrets replaced at any depth: the value of every secret-named
    key, and every secret-shaped part of every string (keys included)."""
    if isinstance(value, Mapping):
        return {
            redact_secrets(key) if isinstance(key, str) else key: (
                REDACTED if secret_key(key) else redact_secrets(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_secrets(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
