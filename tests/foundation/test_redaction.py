"""Redaction as a property: no generated secret, found by its key or by its shape, survives
into AuditLog.details or audit-retention's archive; generated look-alikes survive unchanged."""

from __future__ import annotations

import gzip
import json
import string
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from controlplane.audit.models import AuditLog
from controlplane.audit.redaction import REDACTED, redact_secrets
from controlplane.audit.services import audit_record
from controlplane.common.db import db_now
from controlplane.common.secrets import issue_secret
from reconcilers.services import config_update, run_controller

PROPERTY = hsettings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
ALNUM = string.ascii_letters + string.digits


def token(alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(alphabet), min_size=size, max_size=size)


# Secret key names as products spell them: any case, any separator, with a prefix or suffix.
SECRET_WORDS = [
    "password",
    "passphrase",
    "token",
    "secret",
    "api key",
    "authorization",
    "private key",
    "credentials",
    "credential",
    "cookie",
    "session",
    "dsn",
    "connection string",
]


@st.composite
def secret_keys(draw: st.DrawFn) -> str:
    words = draw(st.sampled_from(SECRET_WORDS)).split()
    separator = draw(st.sampled_from(["_", "-", "", " ", "."]))
    name = separator.join(words)
    name = draw(st.sampled_from([name, name.upper(), name.title(), "".join(w.title() for w in words)]))
    affix = draw(st.sampled_from(["", "db_", "X-", "client_", "aws_"]))
    return affix + name + draw(st.sampled_from(["", "_value", "s"]))


PEM_BODY = token(string.ascii_letters + string.digits + "+/", 64)


@st.composite
def secret_values(draw: st.DrawFn) -> str:
    """A secret whatever its key: (the shape, its secret part)."""
    kind = draw(
        st.sampled_from(["pem", "url", "bearer", "aws", "github", "slack", "stripe", "google", "jwt", "ours"])
    )
    if kind == "pem":
        label = draw(
            st.sampled_from(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
        )
        body = "\n".join(draw(st.lists(PEM_BODY, min_size=1, max_size=3)))
        return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----"
    if kind == "url":
        scheme = draw(st.sampled_from(["postgres", "redis", "amqp", "https", "mysql+pymysql"]))
        password = draw(token(ALNUM + "!$%^&*()-_=+~", 12))
        return f"{scheme}://user{draw(st.integers(0, 99))}:{password}@db.internal:5432/app"
    if kind == "bearer":
        scheme = draw(st.sampled_from(["Bearer", "bearer", "Basic", "Token"]))
        return f"{scheme} {draw(token(ALNUM + '-._~+/', 32))}"
    if kind == "aws":
        return draw(st.sampled_from(["AKIA", "ASIA"])) + draw(
            token(string.ascii_uppercase + string.digits, 16)
        )
    if kind == "github":
        return draw(st.sampled_from(["ghp_", "gho_", "ghs_"])) + draw(token(ALNUM, 36))
    if kind == "slack":
        return f"xoxb-{draw(token(string.digits, 11))}-{draw(token(ALNUM, 24))}"
    if kind == "stripe":
        return draw(st.sampled_from(["sk_live_", "rk_live_", "sk_test_"])) + draw(token(ALNUM, 24))
    if kind == "google":
        return "AIza" + draw(token(ALNUM + "-_", 35))
    if kind == "jwt":
        parts = [draw(token(ALNUM + "-_", 20)) for _ in range(3)]
        return f"eyJ{parts[0]}.eyJ{parts[1]}.{parts[2]}"
    return issue_secret(draw(st.sampled_from(["cpa", "cpb", "cpk"]))).raw


def secret_part(value: str) -> str:
    """The part of a generated value that must not survive (a URL keeps its host)."""
    if "://" in value:
        return value.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    if value.split(" ", 1)[0].lower() in ("bearer", "basic", "token"):
        return value.split(" ", 1)[1]
    return value


PLAIN_KEYS = st.sampled_from(["name", "note", "target", "reason", "url", "id", "digest", "count", "header"])
LOOK_ALIKES = st.one_of(
    st.builds(lambda: str(uuid.uuid4())),
    token("0123456789abcdef", 64),  # sha256
    token("0123456789abcdef", 40),  # git commit
    st.sampled_from(
        [
            "https://example.com/path?q=1",
            "redis://cache:6379/0",
            "postgres://db.internal/app",
            "Bearer",
            "token bucket",
            "cpa_ab12cd34",
            "AKIA",
            "-----BEGIN CERTIFICATE-----",
        ]
    ),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20).filter(
        lambda text: text.strip() and not any(w in text.lower() for w in ("bearer", "basic", "token", "://"))
    ),
)


def nest(leaf: st.SearchStrategy[tuple[Any, list[str]]]) -> st.SearchStrategy[tuple[Any, list[str]]]:
    """Put a (value, secrets) leaf at a random depth inside dicts and lists of plain data."""

    def wrap(inner: tuple[Any, list[str]], key: str, as_list: bool, sentence: str) -> tuple[Any, list[str]]:
        value, secrets = inner
        if isinstance(value, str) and sentence:
            value = f"{sentence} {value} and more"
        return ([{"x": 1}, value] if as_list else {key: value, "count": 3}), secrets

    return st.recursive(
        leaf,
        lambda children: st.builds(wrap, children, PLAIN_KEYS, st.booleans(), st.sampled_from(["", "see"])),
        max_leaves=4,
    )


SECRET_BY_KEY = st.tuples(
    secret_keys(), st.one_of(st.text(max_size=20), st.integers(), st.lists(st.text(max_size=5)))
).map(
    lambda pair: (
        {pair[0]: pair[1], "kept": "yes"},
        [json.dumps(pair[1])] if pair[1] not in ("", [], 0) else [],
    )
)
SECRET_BY_SHAPE = secret_values().map(lambda value: (value, [secret_part(value)]))


def leaks(stored: Any, secrets: list[str]) -> list[str]:
    text = json.dumps(stored)
    dumped = [json.dumps(s)[1:-1] for s in secrets]  # as it appears inside the JSON text
    return [s for s in dumped if s and len(s) >= 4 and s in text]


@pytest.mark.django_db
@PROPERTY
@given(case=nest(st.one_of(SECRET_BY_SHAPE, SECRET_BY_KEY)))
def test_no_generated_secret_survives_into_the_audit_log(case: tuple[Any, list[str]]) -> None:
    details, secrets = case
    row = audit_record(actor="user:test", action="test.redaction", resource_type="t", details={"d": details})
    stored = AuditLog.objects.get(pk=row.pk).details
    assert not leaks(stored, secrets), (details, stored)


@PROPERTY
@given(key=PLAIN_KEYS, value=LOOK_ALIKES)
def test_look_alikes_survive_unchanged(key: str, value: str) -> None:
    assert redact_secrets({key: value, "nested": [value]}) == {key: value, "nested": [value]}


def test_only_the_secret_part_of_a_value_goes() -> None:
    assert redact_secrets({"target": "postgres://app:s3cr3t@db/app"}) == {
        "target": f"postgres://app:{REDACTED}@db/app"
    }
    assert redact_secrets({"header": "Bearer abcdefghijklmnop"}) == {"header": f"Bearer {REDACTED}"}
    assert redact_secrets({"privateKey": "x", "Connection-String": "y", "sessionid": "z"}) == {
        "privateKey": REDACTED,
        "Connection-String": REDACTED,
        "sessionid": REDACTED,
    }


@pytest.mark.django_db
def test_the_archive_holds_no_secret_even_from_rows_written_before_a_rule(
    tmp_path: Path, redis_client: Any, settings: Any
) -> None:
    """Rows in the table are never rewritten; their archive copy is redacted on the way out."""
    settings.AUDIT_ARCHIVE_ROOT = str(tmp_path)
    leaked = "postgres://app:hunter2hunter2@db/app"
    old = db_now() - timedelta(days=400)
    AuditLog.objects.create(  # as an earlier release stored it, redaction bypassed
        created_at=old, actor="user:x", action="test.old", resource_type="t", details={"target": leaked}
    )
    config_update("audit-retention", {"params": {"archive_dir": "."}}, actor="user:test")
    assert run_controller("audit-retention", force=True, trigger="test").items == 1
    archived = []
    for path in tmp_path.iterdir():
        with gzip.open(path, "rt") as lines:
            archived += [json.loads(line) for line in lines]
    assert "hunter2hunter2" not in json.dumps(archived)
    assert archived[0]["details"] == {"target": f"postgres://app:{REDACTED}@db/app"}
