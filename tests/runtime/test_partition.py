"""Liveness under a database partition (design.md §4.4): a lock holder cut off from PostgreSQL
but not from Redis must not stop its controller across the cluster.

Two processes share the database and Redis. The holder's connection goes through a proxy in
this process that black-holes it mid-batch, right after the batch's DELETE and before its
fence check, so its open transaction holds the deleted rows' locks. The other process keeps
trying the controller.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from reconcilers.models import ReconcileRun
from reconcilers.runtime.liveness import progress_bound_seconds
from reconcilers.services import config_update
from stress import db as stress_db
from tests.runtime.conftest import REPO_ROOT, subprocess_env
from tests.runtime.partition import PartitionProxy
from tests.runtime.test_run_record import NAME, assert_records_cover_exactly, old_rows, remaining

PROXY_PORT = 17230  # this suite's port range for the partition tests: 17230-17239
TTL_SECONDS = 3.0
BATCH = 100
ROWS = 1000
# The fence check that ends every write transaction: cutting at it leaves the batch's DELETE
# executed and uncommitted (its row locks held by the orphaned session).
FENCE_CHECK = b'SET "fence" = "reconcilers_reconcilerstate"."fence"'
TAKEOVER_POLL_SECONDS = 0.2
# Scheduling on a loaded 2-core machine: the holder's renewal thread may renew a little after
# it checked the bound, and each attempt of the successor takes a few round trips.
TAKEOVER_SLACK_SECONDS = 1.0


@pytest.fixture
def write_audit() -> Iterator[None]:
    stress_db.write_audit_install()
    yield
    stress_db.write_audit_uninstall()


@pytest.fixture
def proxy() -> Iterator[PartitionProxy]:
    cfg = connection.settings_dict
    server = PartitionProxy(PROXY_PORT, (cfg["HOST"] or "127.0.0.1", int(cfg["PORT"] or 5432)))
    yield server
    server.close()


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.proc_entry", *args],
        cwd=REPO_ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process did not finish in {timeout}s\nstdout:\n{out}\nstderr:\n{err[-4000:]}")


def _sessions(app: str) -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT state, query FROM pg_stat_activity WHERE application_name = %s", [app])
        return [(str(state), str(query)) for state, query in cursor.fetchall()]


@pytest.mark.slow
@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_holder_cut_off_from_the_database_is_taken_over_within_ttl_plus_the_bound(
    proxy: PartitionProxy, write_audit: None, redis_client: Any
) -> None:
    ids = old_rows(ROWS)
    config_update(NAME, {"params": {"batch_size": BATCH}}, actor="user:test")
    bound = progress_bound_seconds(TTL_SECONDS)
    direct_url = stress_db.database_url(f"{stress_db.WORKER_APP_PREFIX}-successor")
    cut_off_url = direct_url.replace(f":{connection.settings_dict['PORT'] or 5432}/", f":{PROXY_PORT}/", 1)
    assert f":{PROXY_PORT}/" in cut_off_url
    cut_off_url = cut_off_url.replace("-successor", "-holder")
    common = {"RECONCILERS_LOCK_TTL_SECONDS": str(TTL_SECONDS)}

    # The successor is up first and starts trying once the holder's run is running.
    successor = _start(
        ["takeover", NAME, str(TAKEOVER_POLL_SECONDS), "120"],
        subprocess_env(DATABASE_URL=direct_url, **common),
    )
    holder = None
    try:
        assert successor.stdout is not None
        assert successor.stdout.readline().strip() == "ready", successor.communicate()
        # The holder's third batch is cut after its DELETE: two batches committed, one open.
        proxy.cut_on(FENCE_CHECK, occurrence=3)
        holder = _start(
            ["reconcile", NAME, str(time.time())], subprocess_env(DATABASE_URL=cut_off_url, **common)
        )
        assert proxy.cut_event.wait(60), "the holder never reached its third fence check"
        assert proxy.cut_at is not None
        out, err = _finish(successor, 90)
        attempts = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert successor.returncode == 0, f"no successful takeover: {attempts}\n{err[-4000:]}"

        # The cut-off holder's orphaned session is gone: its row locks went with it.
        assert _sessions(f"{stress_db.WORKER_APP_PREFIX}-holder") == []
        # Still cut off, the holder has not ended.
        assert holder.poll() is None
    finally:
        proxy.heal()  # the network heals: the holder learns its session is gone
        if successor.poll() is None:
            successor.kill()
            successor.communicate()
    assert holder is not None
    healed = time.monotonic()
    holder_out, holder_err = _finish(holder, 60)
    holder_end_seconds = time.monotonic() - healed

    # Takeover: the successor's successful grant, counted from the cut.
    success = attempts[-1]
    assert success["outcome"] == "success", success
    taken = ReconcileRun.objects.get(pk=success["run_id"])
    takeover_seconds = taken.started_at.timestamp() - proxy.cut_at
    assert taken.finished_at is not None
    print(
        f"takeover {takeover_seconds:.2f}s after the cut (TTL {TTL_SECONDS:g}s + bound {bound:g}s);"
        f" {len(attempts) - 1} `locked` attempts before it; the successor deleted {taken.items} rows in"
        f" {(taken.finished_at - taken.started_at).total_seconds():.2f}s; the holder ended"
        f" {holder_end_seconds:.2f}s after the heal"
    )
    assert takeover_seconds <= TTL_SECONDS + bound + TAKEOVER_POLL_SECONDS + TAKEOVER_SLACK_SECONDS
    # Not before the bound: a holder that is merely slow keeps its lock.
    assert takeover_seconds > bound - TTL_SECONDS / 3
    # Every earlier attempt was a `locked` skip: none was blocked, none failed.
    assert attempts[:-1]
    assert {a["reason"] for a in attempts[:-1]} == {"locked"}
    # The successor was not blocked by the orphaned session's row locks (a wait past its lock
    # timeout would have failed it): it deleted the open batch's rows too.
    assert taken.items == ROWS - 2 * BATCH

    # The old run: error lock_lost, never success, with the counts it committed.
    summary = json.loads(holder_out.strip().splitlines()[-1])
    assert (summary["outcome"], summary["reason"]) == ("error", "lock_lost"), holder_err[-4000:]
    old = ReconcileRun.objects.get(pk=summary["run_id"])
    assert (old.outcome, old.reason) == ("error", "lock_lost")
    assert old.fence is not None
    assert taken.fence is not None
    assert old.fence < taken.fence
    assert (old.items, old.steps) == (2 * BATCH, {"deleted": 2 * BATCH})
    assert "lock renewal stopped" in holder_err

    # No commit under the old fence: every controller write passed its fence check, no newer
    # grant preceded one, and each deleted row was deleted (and recorded) exactly once.
    audit = stress_db.fence_audit_read()
    assert audit.unfenced_transactions == []
    assert audit.stale_commits == []
    assert not remaining(ids)
    assert_records_cover_exactly(set(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM stress_write_audit WHERE app = %s AND at > to_timestamp(%s)",
            [f"{stress_db.WORKER_APP_PREFIX}-holder", proxy.cut_at],
        )
        assert cursor.fetchone()[0] == 0
