"""token-cleanup: expired and exhausted transitions, deletion only after the grace period."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from controlplane.common.db import db_now
from controlplane.tokens.models import BootstrapToken, TokenStatus
from reconcilers.controllers import token_cleanup as tc_module
from reconcilers.controllers.token_cleanup import TokenCleanupParams
from reconcilers.registry import controller_get
from reconcilers.runtime.context import reconcile_in_context
from reconcilers.runtime.contract import LockLostError
from reconcilers.runtime.fencing import fence_grant
from tests.controllers.conftest import RunController, count_queries, run_context, table_snapshot

NAME = "token-cleanup"
_serial = itertools.count(1)


def make_token(**kwargs: Any) -> BootstrapToken:
    n = next(_serial)
    kwargs.setdefault("expires_at", db_now() + timedelta(days=1))
    return BootstrapToken.objects.create(token_hash=f"{n:064x}", token_prefix=f"cpb_{n}", **kwargs)


def status_of(token: BootstrapToken) -> str | None:
    return BootstrapToken.objects.filter(pk=token.pk).values_list("status", flat=True).first()


@pytest.mark.django_db
def test_transitions_expired_wins_over_exhausted(run_controller: RunController) -> None:
    now = db_now()
    fresh = make_token(max_uses=3, current_uses=2)
    expired = make_token(expires_at=now - timedelta(seconds=1))
    exhausted = make_token(max_uses=2, current_uses=2)
    both = make_token(expires_at=now - timedelta(minutes=5), max_uses=1, current_uses=1)
    at_deadline = make_token(expires_at=now)  # not yet past

    result = run_controller(NAME, now=now)

    assert result.steps == {"deleted": 0, "expired": 2, "exhausted": 1}
    assert status_of(fresh) == TokenStatus.ACTIVE
    assert status_of(at_deadline) == TokenStatus.ACTIVE
    assert status_of(expired) == TokenStatus.EXPIRED
    assert status_of(both) == TokenStatus.EXPIRED
    assert status_of(exhausted) == TokenStatus.EXHAUSTED
    changed = BootstrapToken.objects.filter(pk__in=[expired.pk, both.pk, exhausted.pk])
    assert set(changed.values_list("status_changed_at", flat=True)) == {now}


@pytest.mark.django_db
def test_deleted_only_after_grace_by_each_status_anchor(run_controller: RunController) -> None:
    now = db_now()
    old, young = now - timedelta(days=30, seconds=1), now - timedelta(days=29, hours=23)
    doomed = [
        make_token(status=TokenStatus.REVOKED, revoked_at=old, status_changed_at=young),
        make_token(status=TokenStatus.EXPIRED, expires_at=old, status_changed_at=young),
        make_token(status=TokenStatus.EXHAUSTED, status_changed_at=old, max_uses=1, current_uses=1),
    ]
    kept = [
        # Revoked is handled by its grace only: its other timestamps do not matter.
        make_token(status=TokenStatus.REVOKED, revoked_at=young, status_changed_at=old, expires_at=old),
        make_token(status=TokenStatus.REVOKED, revoked_at=None, expires_at=old),  # no anchor: kept
        make_token(status=TokenStatus.EXPIRED, expires_at=young, status_changed_at=old),
        make_token(status=TokenStatus.EXHAUSTED, status_changed_at=young, expires_at=old, current_uses=1),
        make_token(status=TokenStatus.ACTIVE, expires_at=now + timedelta(days=1)),
    ]
    result = run_controller(NAME, now=now)
    assert result.steps == {"deleted": 3, "expired": 0, "exhausted": 0}
    assert not BootstrapToken.objects.filter(pk__in=[t.pk for t in doomed]).exists()
    assert [status_of(t) for t in kept] == [t.status for t in kept]

    # grace_days is a parameter: with 0 the young ones go too (the anchorless one never).
    later = run_controller(NAME, now=now, grace_days=0)
    assert later.steps["deleted"] == 3
    assert set(BootstrapToken.objects.values_list("pk", flat=True)) == {kept[1].pk, kept[4].pk}


@pytest.mark.django_db
def test_token_changed_in_a_run_is_deleted_only_by_a_later_run(run_controller: RunController) -> None:
    now = db_now()
    expired = make_token(expires_at=now - timedelta(days=400))
    exhausted = make_token(max_uses=1, current_uses=1)
    first = run_controller(NAME, now=now, grace_days=0)
    assert first.steps == {"deleted": 0, "expired": 1, "exhausted": 1}
    assert BootstrapToken.objects.count() == 2
    second = run_controller(NAME, now=now + timedelta(seconds=1), grace_days=0)
    assert second.steps == {"deleted": 2, "expired": 0, "exhausted": 0}
    assert not BootstrapToken.objects.filter(pk__in=[expired.pk, exhausted.pk]).exists()


def _mixed_tokens(now: datetime, copies: int = 1) -> None:
    for _ in range(copies):
        make_token(expires_at=now - timedelta(hours=1))
        make_token(max_uses=1, current_uses=1)
        make_token(status=TokenStatus.REVOKED, revoked_at=now - timedelta(days=90))
        make_token(status=TokenStatus.EXPIRED, expires_at=now - timedelta(days=90))
        make_token(status=TokenStatus.EXHAUSTED, status_changed_at=now - timedelta(days=90))
        make_token()


@pytest.mark.django_db
def test_second_run_changes_nothing(run_controller: RunController) -> None:
    now = db_now()
    _mixed_tokens(now)
    assert run_controller(NAME, now=now).items == 5
    before = table_snapshot(BootstrapToken)
    assert run_controller(NAME, now=now).items == 0
    assert table_snapshot(BootstrapToken) == before


@pytest.mark.django_db
def test_dry_run_changes_nothing_and_reports_the_real_counts(run_controller: RunController) -> None:
    now = db_now()
    _mixed_tokens(now, copies=2)
    before = table_snapshot(BootstrapToken)
    dry = run_controller(NAME, now=now, dry_run=True)
    assert table_snapshot(BootstrapToken) == before
    real = run_controller(NAME, now=now)
    assert dry.steps == real.steps == {"deleted": 6, "expired": 2, "exhausted": 2}


@pytest.mark.django_db
def test_stale_fence_is_refused_and_nothing_changes() -> None:
    now = db_now()
    _mixed_tokens(now)
    stale = run_context(NAME, now=now)
    fence_grant(NAME, "newer holder")
    before = table_snapshot(BootstrapToken)
    with pytest.raises(LockLostError):
        reconcile_in_context(controller_get(NAME), stale)
    assert table_snapshot(BootstrapToken) == before


@pytest.mark.django_db
def test_query_count_does_not_grow_with_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    def measure(copies: int) -> int:
        BootstrapToken.objects.all().delete()
        now = db_now()
        _mixed_tokens(now, copies)
        ctx = run_context(NAME, now=now)
        queries, _ = count_queries(lambda: reconcile_in_context(controller_get(NAME), ctx))
        assert BootstrapToken.objects.count() == copies * 3
        return queries

    small, large = measure(2), measure(40)
    assert small == large, (small, large)
    monkeypatch.setattr(tc_module, "BATCH_SIZE", 10)
    assert measure(40) > large  # 4 batches per step: the extra queries are per batch, not per row


def test_params() -> None:
    assert TokenCleanupParams().grace_days == 30
    TokenCleanupParams(grace_days=0)
    TokenCleanupParams(grace_days=3650)
    for bad in (-1, 3651):
        with pytest.raises(ValidationError, match="grace_days"):
            TokenCleanupParams.model_validate({"grace_days": bad})
