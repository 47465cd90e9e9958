"""The demo app: seed_demo, the agent fleet simulator, and an admin action that fills the queue.

Demo tooling sits above every domain app (it creates tenants, agents, tokens and
commands), so it has an app of its own rather than living in one of them (design.md §2).
"""

from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "controlplane.demo"
    label = "demo"
    verbose_name = "Demo"
