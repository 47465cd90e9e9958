"""`manage.py enqueue`: put demo or test jobs in the queue through `command_enqueue_many`.

Bad arguments exit with status 2 and save nothing (a tenant created with --create-tenant
is rolled back with the jobs if the enqueue fails).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from controlplane.agents.models import Agent
from controlplane.commands.services import MAX_ENQUEUE_BATCH, EnqueueError, command_enqueue_many
from controlplane.common.db import db_now
from controlplane.tenants.models import Plan, Tenant

MAX_EXPIRES_IN_SECONDS = 365 * 24 * 3600


def _usage_error(message: str) -> CommandError:
    return CommandError(message, returncode=2)


class Command(BaseCommand):
    help = "Enqueue jobs for a tenant (platform jobs by default)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", help="Tenant name.")
        parser.add_argument(
            "--create-tenant", action="store_true", help="Create the tenant if it does not exist."
        )
        parser.add_argument(
            "--plan", choices=Plan.values, default=Plan.FREE, help="Plan of a tenant created here."
        )
        parser.add_argument("--count", type=int, default=1, help=f"Jobs to enqueue (1..{MAX_ENQUEUE_BATCH}).")
        parser.add_argument("--kind", default="demo", help="Job kind.")
        kind = parser.add_mutually_exclusive_group()
        kind.add_argument(
            "--platform", dest="platform", action="store_true", default=True, help="Platform jobs (default)."
        )
        kind.add_argument(
            "--tenant-command", dest="platform", action="store_false", help="Tenant commands instead."
        )
        parser.add_argument(
            "--target-agent", type=int, default=None, help="Pin tenant commands to this agent id."
        )
        parser.add_argument("--expires-in", type=int, default=None, help="Seconds until the jobs' deadline.")

    def handle(self, *args: Any, **options: Any) -> None:
        count: int = options["count"]
        if not 1 <= count <= MAX_ENQUEUE_BATCH:
            raise _usage_error(f"--count must be between 1 and {MAX_ENQUEUE_BATCH}")
        expires_in: int | None = options["expires_in"]
        if expires_in is not None and not 1 <= expires_in <= MAX_EXPIRES_IN_SECONDS:
            raise _usage_error(f"--expires-in must be between 1 and {MAX_EXPIRES_IN_SECONDS} seconds")
        if options["target_agent"] is not None and options["platform"]:
            raise _usage_error("--target-agent needs --tenant-command (platform jobs are never pinned)")
        with transaction.atomic():
            tenant = self._tenant(options)
            target = None
            if options["target_agent"] is not None:
                target = Agent.objects.filter(pk=options["target_agent"]).first()
                if target is None:
                    raise _usage_error(f"no agent with id {options['target_agent']}")
            expires_at = db_now() + timedelta(seconds=expires_in) if expires_in else None
            try:
                commands = command_enqueue_many(
                    tenant,
                    options["kind"],
                    [{"n": i} for i in range(count)],
                    is_platform_job=options["platform"],
                    target_agent=target,
                    expires_at=expires_at,
                )
            except EnqueueError as exc:
                raise _usage_error(str(exc)) from exc
        self.stdout.write(
            f"enqueued {len(commands)} {'platform job' if options['platform'] else 'tenant command'}(s) "
            f"of kind {options['kind']} for tenant {tenant.name} "
            f"(ids {commands[0].pk}..{commands[-1].pk})"
        )

    def _tenant(self, options: dict[str, Any]) -> Tenant:
        name: str = options["tenant"].strip()
        if not name or len(name) > 200:
            raise _usage_error("tenant name must be 1..200 characters")
        tenant = Tenant.objects.filter(name=name).first()
        if tenant is not None:
            return tenant
        if not options["create_tenant"]:
            raise _usage_error(f"no tenant named {name!r} (use --create-tenant to create it)")
        return Tenant.objects.create(name=name, plan=options["plan"])
