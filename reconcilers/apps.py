"""App config: connects the reconcilers' signal handlers, installs the queue priority policy,
and pre-creates their metrics."""

from django.apps import AppConfig
from django.db.models.signals import post_migrate

from controlplane.commands.priority import priority_policy_install
from reconcilers.runtime.metrics import metrics_precreate


class ReconcilersConfig(AppConfig):
    name = "reconcilers"
    verbose_name = "Reconcilers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here: these modules import models, which exist only once apps are loaded.
        from reconcilers import signals
        from reconcilers.registry import controller_names
        from reconcilers.services import queue_priority_policy

        post_migrate.connect(signals.on_post_migrate, sender=self, dispatch_uid="reconcilers.schedule_sync")
        # The commands domain computes queue-entry priorities with queue-priority's params.
        priority_policy_install(queue_priority_policy)
        # Every series at 0 from start, so the web's /metrics (default registry) shows them.
        metrics_precreate(controller_names())
