"""Liveness of a run that holds its lock (design.md §4.4): progress stamps, the bound, and the
server-side timeouts of the run's database session.

A lock holder cut off from PostgreSQL but not from Redis would otherwise keep renewing its
lock from the renewal thread while its main thread waits on a dead socket, and its controller
would stop everywhere. So the run stamps every sign of life (each database round trip on its
connection, each checkpoint), and the renewal thread stops renewing once the run has shown
none for longer than a healthy run ever can: the statement timeout (the server cancels any
longer statement) plus a margin. The lock then expires within one TTL and another host takes
over; the fence keeps out any late commit of the stuck holder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DatabaseError, connection

from controlplane.common.db import session_state_kept

log = logging.getLogger(__name__)

# A run's statements and lock waits are cancelled by the server this long before its lock's
# TTL, at least 1 s (the server's timeouts are whole milliseconds and 0 would mean "none").
STATEMENT_TIMEOUT_MARGIN_SECONDS = 1.0
STATEMENT_TIMEOUT_MIN_SECONDS = 1.0
# A healthy run reaches a round trip or checkpoint within a statement timeout plus this: the
# cancelled statement's error has to come back, and the Python work between two statements
# (an archive file fsynced, a batch's ids computed) has to fit too.
PROGRESS_MARGIN_SECONDS = 5.0
# Idle in a transaction for two renewal periods (2/3 of the TTL): a run's own gaps between
# two statements of a batch are milliseconds, and the session of a holder cut off mid-batch
# is gone, its row locks released, before its lock can expire (design.md §4.4).
IDLE_IN_TRANSACTION_TTL_FRACTION = 2 / 3


def statement_timeout_seconds(ttl_seconds: float) -> float:
    """The run's statement and lock-wait timeout on PostgreSQL: the TTL less 1 s, at least 1 s."""
    return max(STATEMENT_TIMEOUT_MIN_SECONDS, ttl_seconds - STATEMENT_TIMEOUT_MARGIN_SECONDS)


def idle_in_transaction_timeout_seconds(ttl_seconds: float) -> float:
    """How long the run's session may sit idle inside a transaction before the server ends it."""
    return max(STATEMENT_TIMEOUT_MIN_SECONDS, ttl_seconds * IDLE_IN_TRANSACTION_TTL_FRACTION)


def progress_bound_seconds(ttl_seconds: float) -> float:
    """The longest a healthy run goes without a round trip or checkpoint; past it the renewal
    stops and the lock expires within one more TTL."""
    return statement_timeout_seconds(ttl_seconds) + PROGRESS_MARGIN_SECONDS


class Progress:
    """The monotonic time of a run's last sign of life, read by the renewal thread.

    Installed on the run's connection as a Django execute wrapper (`watching()`), it stamps
    the start and the end of every statement; `stamp()` is called at every checkpoint. A
    statement interrupted by something other than a database error (Celery's soft time limit
    raised inside the driver's wait) leaves the connection mid-protocol: `interrupted` tells
    the runner to drop it and record the run on a fresh one.
    """

    def __init__(self, bound_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound_seconds = bound_seconds
        self._clock = clock
        self.last = clock()
        self.interrupted = False

    def stamp(self) -> None:
        self.last = self._clock()

    def stalled_seconds(self) -> float:
        return self._clock() - self.last

    def stalled(self) -> bool:
        return self.stalled_seconds() > self.bound_seconds

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        self.stamp()
        try:
            return execute(sql, params, many, context)
        except DatabaseError:
            raise
        except BaseException:
            self.interrupted = True
            raise
        finally:
            self.stamp()

    @contextmanager
    def watching(self) -> Iterator[Progress]:
        """Stamp every statement of this thread's connection while the block runs."""
        with connection.execute_wrapper(self):
            yield self


def session_timeouts_apply(ttl_seconds: float) -> None:
    """On PostgreSQL, bound the run's own session: statement and lock-wait timeouts below the
    progress bound, and idle_in_transaction_session_timeout, so an orphaned session of a holder
    cut off mid-batch releases its row locks before a successor can hold the lock. Session
    settings (one round trip), undone by `session_timeouts_reset` when the run ends."""
    if not session_state_kept():
        # Behind transaction pooling a session setting would outlive this statement on a
        # server connection another client gets next; each batch sets them with SET LOCAL.
        return
    statement = f"{int(statement_timeout_seconds(ttl_seconds) * 1000)}ms"
    idle = f"{int(idle_in_transaction_timeout_seconds(ttl_seconds) * 1000)}ms"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false),"
            " set_config('idle_in_transaction_session_timeout', %s, false)",
            [statement, statement, idle],
        )


def session_timeouts_reset() -> None:
    """Give the connection back with the server's defaults for whatever runs on it next (a
    Celery worker runs other tasks on it). A connection already closed needs nothing; one that
    fails here is closed, so the next user opens a fresh one."""
    if not session_state_kept() or connection.connection is None or connection.needs_rollback:
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "RESET statement_timeout; RESET lock_timeout; RESET idle_in_transaction_session_timeout"
            )
    except DatabaseError:
        log.warning("could not reset the run's session timeouts; closing its connection")
        connection.close()
