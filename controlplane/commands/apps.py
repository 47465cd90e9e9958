"""App config: the commands app answers the agents app's `agent_revoked` signal."""

from django.apps import AppConfig

from controlplane.agents.signals import agent_revoked


class CommandsConfig(AppConfig):
    name = "controlplane.commands"
    label = "commands"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here: the services import models, which exist only once apps are loaded.
        from controlplane.commands.services import commands_release_held

        agent_revoked.connect(commands_release_held, dispatch_uid="commands.release_held")
