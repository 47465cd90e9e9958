"""The five controllers, one module each. Registered in `reconcilers.registry`.

Controllers hold domain decisions only: no celery, redis or prometheus_client imports.
"""

from __future__ import annotations

from reconcilers.runtime.contract import Controller

# Filled in as the controllers land, in the order operators read them.
CONTROLLER_CLASSES: tuple[type[Controller], ...] = ()
