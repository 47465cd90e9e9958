"""The five controllers, one module each. Registered in `reconcilers.registry`.

Controllers hold domain decisions only: no celery, redis or prometheus_client imports.
"""

from __future__ import annotations

from reconcilers.controllers.agent_health import AgentHealthController
from reconcilers.controllers.audit_retention import AuditRetentionController
from reconcilers.controllers.job_recovery import JobRecoveryController
from reconcilers.controllers.queue_priority import QueuePriorityController
from reconcilers.controllers.token_cleanup import TokenCleanupController
from reconcilers.runtime.contract import Controller

# In the order operators read them.
CONTROLLER_CLASSES: tuple[type[Controller], ...] = (
    AgentHealthController,
    JobRecoveryController,
    QueuePriorityController,
    TokenCleanupController,
    AuditRetentionController,
)
