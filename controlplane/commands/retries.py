"""How many claims a command gets: the retry limit, a policy tuned where commands are recovered.

The limit's default lives here; the reconciler app installs a source reading job-recovery's
max_retries at start, so an agent revoke (which hands back its commands at once) fails an
exhausted command exactly as job-recovery would, without the domain importing it.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_RETRIES_DEFAULT = 3  # claims a command gets before it is failed (retries_exhausted)

_source: Callable[[], int] | None = None


def retry_limit_install(source: Callable[[], int] | None) -> None:
    """Make `source` the limit's provider (None: back to the default)."""
    global _source
    _source = source


def retry_limit() -> int:
    return _source() if _source is not None else MAX_RETRIES_DEFAULT
