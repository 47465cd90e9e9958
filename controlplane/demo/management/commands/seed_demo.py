"""`manage.py seed_demo`: the demo's starting state, idempotent (a second run creates nothing).

Tenants of every plan, a tenant agent each, a bootstrap token, queued jobs, and a little
of everything the controllers exist to fix (a silent agent holding a stuck job, an
expired token, audit rows past retention), so each controller has work on its first run.
With --admin-password-file it also creates the `admin` superuser with a generated
password kept in that file (the demo prints it at every start; DEBUG only).
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.db.models import F

from controlplane.agents.models import Agent, AgentHealth, AgentLease
from controlplane.agents.services import agent_create, agent_heartbeat
from controlplane.audit.models import AuditLog
from controlplane.audit.services import audit_record
from controlplane.commands import models as command_models
from controlplane.commands.models import CommandStatus
from controlplane.commands.services import command_enqueue_many
from controlplane.common.db import db_now
from controlplane.tenants.models import Plan, Tenant
from controlplane.tokens.models import BootstrapToken
from controlplane.tokens.services import token_issue

ACTOR = "system:seed-demo"
TENANTS = (
    ("demo-acme", Plan.ENTERPRISE),
    ("demo-globex", Plan.BUSINESS),
    ("demo-initech", Plan.TEAM),
    ("demo-hooli", Plan.FREE),
)
PLATFORM_JOBS_PER_TENANT = 5
SILENT_AGENT = "demo-platform-silent"
SILENT_FOR = timedelta(hours=1)  # far past agent-health's default 90 s stale timeout
STUCK_FOR = timedelta(hours=2)  # far past job-recovery's default 30 min threshold
OLD_AUDIT_AGE = timedelta(days=400)  # past audit-retention's default 365 days
OLD_AUDIT_ROWS = 25
TOKEN_DESCRIPTION = "demo bootstrap token"
EXPIRED_TOKEN_DESCRIPTION = "demo token that expires at once"
ADMIN_USERNAME = "admin"


class Command(BaseCommand):
    help = "Seed the demo: tenants, agents, tokens, jobs and work for every controller (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--admin-password-file",
            default=None,
            help="Create superuser 'admin' with a generated password stored in this file (DEBUG only).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        created: list[str] = []
        with transaction.atomic():
            tenants = self._tenants(created)
            tenant_agents = self._tenant_agents(tenants, created)
            self._jobs(tenants, tenant_agents, created)
            self._silent_agent_with_stuck_job(tenants[0], created)
            self._old_audit_rows(created)
        # Tokens print their secret once, after the transaction that stored their hash.
        self._tokens(created)
        if options["admin_password_file"]:
            self._admin(Path(options["admin_password_file"]), created)
        if created:
            for line in created:
                self.stdout.write(f"  created {line}")
        else:
            self.stdout.write("demo data already present: nothing created")

    def _tenants(self, created: list[str]) -> list[Tenant]:
        tenants = []
        for name, plan in TENANTS:
            tenant, new = Tenant.objects.get_or_create(name=name, defaults={"plan": plan})
            if new:
                created.append(f"tenant {name} ({plan})")
            tenants.append(tenant)
        return tenants

    def _tenant_agents(self, tenants: list[Tenant], created: list[str]) -> dict[int, Agent]:
        existing = {
            a.tenant_id: a for a in Agent.objects.filter(tenant__in=tenants, name__endswith="-agent-1")
        }
        agents = {}
        for tenant in tenants:
            agent = existing.get(tenant.pk)
            if agent is None:
                # The key is not shown: the demo's working agents are the simulator's.
                agent = agent_create(name=f"{tenant.name}-agent-1", tenant=tenant, actor=ACTOR).agent
                created.append(f"tenant agent {agent.name}")
            agents[tenant.pk] = agent
        return agents

    def _jobs(self, tenants: list[Tenant], tenant_agents: dict[int, Agent], created: list[str]) -> None:
        if command_models.Command.objects.filter(tenant__in=tenants, kind__startswith="demo-").exists():
            return
        for tenant in tenants:
            command_enqueue_many(
                tenant,
                "demo-build",
                [{"step": i} for i in range(PLATFORM_JOBS_PER_TENANT)],
                is_platform_job=True,
            )
            command_enqueue_many(
                tenant,
                "demo-config-push",
                [{"target": "edge"}],
                is_platform_job=False,
                target_agent=tenant_agents[tenant.pk],
            )
        created.append(f"{len(tenants) * (PLATFORM_JOBS_PER_TENANT + 1)} queued jobs")

    def _silent_agent_with_stuck_job(self, tenant: Tenant, created: list[str]) -> None:
        """A platform agent that stopped heartbeating an hour ago while running a job:
        agent-health marks it offline, job-recovery requeues its job."""
        if Agent.objects.filter(name=SILENT_AGENT, is_platform_agent=True).exists():
            return
        agent = agent_create(name=SILENT_AGENT, tenant=None, actor=ACTOR).agent
        agent_heartbeat(agent.pk, holder_identity=SILENT_AGENT)
        now = db_now()
        # Seeding history: backdate as if the heartbeats had stopped (no service does that).
        Agent.objects.filter(pk=agent.pk).update(
            last_seen_at=now - SILENT_FOR, health=AgentHealth.ONLINE, version=F("version") + 1
        )
        AgentLease.objects.filter(agent_id=agent.pk).update(
            renew_time=now - SILENT_FOR, version=F("version") + 1
        )
        command_models.Command.objects.create(
            tenant=tenant,
            is_platform_job=True,
            kind="demo-stuck-backup",
            payload={"volume": "vol-7"},
            status=CommandStatus.RUNNING,
            agent=agent,
            queued_at=now - STUCK_FOR,
            dispatch_attempts=1,
            acknowledged_at=now - STUCK_FOR,
            started_at=now - STUCK_FOR,
            last_progress_at=now - STUCK_FOR,
        )
        created.append(f"silent platform agent {SILENT_AGENT} holding a stuck job")

    def _old_audit_rows(self, created: list[str]) -> None:
        if AuditLog.objects.filter(action="demo.seeded").exists():
            return
        old = db_now() - OLD_AUDIT_AGE
        for i in range(OLD_AUDIT_ROWS):
            audit_record(
                actor=ACTOR,
                action="demo.seeded",
                resource_type="demo",
                resource_id=i,
                at=old + timedelta(minutes=i),
            )
        created.append(f"{OLD_AUDIT_ROWS} audit rows past retention")

    def _tokens(self, created: list[str]) -> None:
        if not BootstrapToken.objects.filter(description=TOKEN_DESCRIPTION).exists():
            issued = token_issue(
                description=TOKEN_DESCRIPTION, ttl=timedelta(days=30), max_uses=100, actor=ACTOR
            )
            created.append(f"bootstrap token {issued.raw} (shown once)")
        if not BootstrapToken.objects.filter(description=EXPIRED_TOKEN_DESCRIPTION).exists():
            token_issue(
                description=EXPIRED_TOKEN_DESCRIPTION, ttl=timedelta(seconds=1), max_uses=1, actor=ACTOR
            )
            created.append("a bootstrap token that expires at once (for token-cleanup)")

    def _admin(self, password_file: Path, created: list[str]) -> None:
        if not settings.DEBUG:
            raise CommandError("--admin-password-file is for the demo: it needs DEBUG=1")
        user_model = get_user_model()
        if user_model.objects.filter(username=ADMIN_USERNAME).exists():
            return
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(ADMIN_USERNAME, "admin@example.com", password)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        created.append(f"superuser {ADMIN_USERNAME} (password in {password_file})")
