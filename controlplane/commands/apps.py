from django.apps import AppConfig


class CommandsConfig(AppConfig):
    name = "controlplane.commands"
    label = "commands"
    default_auto_field = "django.db.models.BigAutoField"
