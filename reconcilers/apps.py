"""App config: connects the reconcilers' signal handlers, installs the queue priority policy,
and pre-creates their metrics."""

from django.apps import AppConfig
from django.core.checks import Tags, register
from django.db.models.signals import post_migrate

from controlplane.commands.priority import priority_policy_install
from controlplane.commands.retries import retry_limit_install
from reconcilers.runtime.metrics import config_source_install, metrics_precreate


class ReconcilersConfig(AppConfig):
    name = "reconcilers"
    verbose_name = "Reconcilers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here: these modules import models, which exist only once apps are loaded.
        from reconcilers import signals
        from reconcilers.checks import reconciler_configs_check
        from reconcilers.registry import controller_names
        from reconcilers.services import queue_priority_policy, retry_limit_from_config

        post_migrate.connect(signals.on_post_migrate, sender=self, dispatch_uid="reconcilers.schedule_sync")
        register(reconciler_configs_check, Tags.database)
        # The commands domain computes queue-entry priorities with queue-priority's params and
        # fails a revoked agent's exhausted commands at job-recovery's max_retries.
        priority_policy_install(queue_priority_policy)
        retry_limit_install(retry_limit_from_config)
        # Every series at 0 from start, so the web's /metrics (default registry) shows them,
        # and the config gauges read from the database at each scrape.
        metrics_precreate(controller_names())
        config_source_install(signals.config_samples_scraped)
