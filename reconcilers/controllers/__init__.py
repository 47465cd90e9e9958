"""The five controllers, one module each. Registered in `reconcilers.registry`.

Controllers hold domain decisions only: no celery, redis or prometheus_client imports.
"""

from __future__ import annotations

from reconcilers.controllers.queue_priority import QueuePriority
from reconcilers.controllers.token_cleanup import TokenCleanup
from reconcilers.runtime.contract import Controller

# In the order operators read them: agent-health, job-recovery, queue-priority,
# token-cleanup, audit-retention (filled in as the controllers land).
CONTROLLER_CLASSES: tuple[type[Controller], ...] = (QueuePriority, TokenCleanup)
