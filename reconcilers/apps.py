"""App config: connects the reconcilers' signal handlers and pre-creates their metrics."""

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ReconcilersConfig(AppConfig):
    name = "reconcilers"
    verbose_name = "Reconcilers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from reconcilers import signals
        from reconcilers.runtime.metrics import metrics_precreate

        post_migrate.connect(signals.on_post_migrate, sender=self, dispatch_uid="reconcilers.schedule_sync")
        # Every series at 0 from start, so the web's /metrics (default registry) shows them.
        metrics_precreate()
