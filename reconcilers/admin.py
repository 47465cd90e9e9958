"""Admin for the reconcilers (design.md §7): tune configs (through config_update), run now, history,
global pause.

Every write goes through `reconcilers.services`: the form validates with the same rules
as the service (errors name the field, nothing is saved), saves are conditional on the
row's version, audited, and move the beat schedule in the same transaction. The beat
rows of the reconcilers are shown read-only in django-celery-beat's own admin, so the
config here stays their single source of truth.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from controlplane.common.actors import actor_for_user
from controlplane.common.operator_admin import ActionPermissionDeniedMixin, VersionedChangeForm
from reconcilers.models import GlobalPause, ReconcilerConfig, ReconcileRun
from reconcilers.privileges import config_change_refusal, may_change_config, run_refusal
from reconcilers.runtime.config import EffectiveConfig, paused_globally
from reconcilers.runtime.summary import RunSummary
from reconcilers.schedule import TASK_PREFIX
from reconcilers.selectors import age_text, config_of, configs_effective, controllers_overview
from reconcilers.services import (
    ConfigConflictError,
    ConfigValidationError,
    RunRequest,
    config_update,
    config_validate,
    config_warnings,
    pause_set,
    run_request,
)

EDITABLE_FIELDS = (
    "enabled",
    "interval_seconds",
    "crontab",
    "timezone",
    "dry_run",
    "run_timeout_seconds",
    "params",
)


class ReconcilerConfigForm(VersionedChangeForm):
    """Validates exactly like config_update; the version it was loaded with travels in a
    hidden field and a stale save is refused (VersionedChangeForm). `request_user` is set by
    the admin's get_form: some changes need more than the change permission (privileges)."""

    request_user: Any = None

    params = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 10, "cols": 60}),
        help_text=(
            "The parameters you set, as a JSON object (replaces what is stored). Keys you leave out "
            "take their defaults from code, shown under 'params in effect'."
        ),
    )

    class Meta:
        model = ReconcilerConfig
        fields = EDITABLE_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Range checks are the service's (one message naming the field, not a constraint name).
        for name in ("interval_seconds", "run_timeout_seconds"):
            field = self.fields.get(name)
            if field is None:  # read-only view
                continue
            assert isinstance(field, forms.IntegerField)
            field.min_value = None
            field.validators = []
            field.widget.attrs.pop("min", None)
        if "timezone" in self.fields:
            self.fields["timezone"].required = False  # empty: UTC

    def clean_timezone(self) -> str:
        return str(self.cleaned_data.get("timezone") or "").strip() or "UTC"

    def changes(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            field: data.get(field) if field != "params" else (data.get("params") or {})
            for field in EDITABLE_FIELDS
            if field in data
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        try:
            config_validate(self.instance.controller, self.changes(), row=self.instance, replace_params=True)
        except ConfigValidationError as exc:
            field = exc.field.split(".", 1)[0]
            self.add_error(field if field in self.fields else None, str(exc))
            return data
        refusal = config_change_refusal(
            self.request_user, self.instance.controller, self.changes().get("params"), self.instance.params
        )
        if refusal:
            self.add_error("params" if "params" in self.fields else None, refusal)
        return data

    def _post_clean(self) -> None:
        # No model-level validation: the service is the validator (and the CHECK constraints
        # would only repeat its range checks with a less helpful message).
        pass


@admin.register(ReconcilerConfig)
class ReconcilerConfigAdmin(ActionPermissionDeniedMixin, admin.ModelAdmin):
    form = ReconcilerConfigForm
    list_display = ("controller", "enabled", "schedule", "dry_run")
    list_display_links = ("controller",)
    readonly_fields = ("controller", "config_state", "params_in_effect", "version", "updated_at")
    fields = (
        "controller",
        "config_state",
        *EDITABLE_FIELDS,
        "params_in_effect",
        "loaded_version",
        "version",
        "updated_at",
    )
    actions = ("run_now", "dry_run_now", "run_now_ignore_brake", "enable", "disable")
    ordering = ("controller",)

    def get_list_display(self, request: HttpRequest) -> Any:
        return (*self.list_display[:1], *_overview_columns(), *self.list_display[1:])

    @admin.display(description="config")
    def config_state(self, obj: ReconcilerConfig) -> str:
        return _config_state(config_of(obj.controller))

    @admin.display(description="params in effect")
    def params_in_effect(self, obj: ReconcilerConfig) -> str:
        config = config_of(obj.controller)
        if config.params is None:
            return "none: the stored params fail the schema, every run is refused"
        return json.dumps(config.params.model_dump(mode="json"), sort_keys=True)

    @admin.display(description="schedule")
    def schedule(self, obj: ReconcilerConfig) -> str:
        return f"cron {obj.crontab} ({obj.timezone})" if obj.crontab else f"every {obj.interval_seconds} s"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows exist for every registered controller (post_migrate)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # audit-retention's row is read-only (and a POST to it a 403) without its own permission.
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or may_change_config(request.user, obj.controller))

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form: Any = super().get_form(request, obj, change=change, **kwargs)
        form.request_user = request.user  # a fresh class per request (modelform_factory)
        return form

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        changes = form.changes()
        try:
            row = config_update(
                obj.controller,
                changes,
                actor=actor_for_user(request.user),
                expected_version=form.cleaned_data.get("loaded_version"),
                replace_params=True,  # the form shows every key the row stores
            )
        except (ConfigValidationError, ConfigConflictError) as exc:
            # Validated in the form already; only a race lands here. Nothing was saved.
            messages.error(request, f"Not saved: {exc}")
            return
        for warning in config_warnings(row.controller, row.params):
            messages.warning(request, f"{row.controller}: {warning}")
        obj.refresh_from_db()

    def _run(self, request: HttpRequest, queryset: QuerySet[ReconcilerConfig], **options: Any) -> None:
        refusal = run_refusal(
            request.user, [c.controller for c in queryset], dry_run=bool(options.get("dry_run"))
        )
        if refusal:
            raise PermissionDenied(refusal)  # before any run: the selection runs whole or not at all
        for config in queryset:
            _run_request_report(request, config.controller, **options)

    @admin.action(
        description="Run now (bypasses too-soon, disabled and pause; never the lock)", permissions=["change"]
    )
    def run_now(self, request: HttpRequest, queryset: QuerySet[ReconcilerConfig]) -> None:
        self._run(request, queryset)

    @admin.action(description="Dry-run now", permissions=["change"])
    def dry_run_now(self, request: HttpRequest, queryset: QuerySet[ReconcilerConfig]) -> None:
        self._run(request, queryset, dry_run=True)

    @admin.action(description="Run now, overriding the safety brake once", permissions=["change"])
    def run_now_ignore_brake(self, request: HttpRequest, queryset: QuerySet[ReconcilerConfig]) -> None:
        self._run(request, queryset, dry_run=False, ignore_brake=True)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[ReconcilerConfig], enabled: bool) -> None:
        if not all(may_change_config(request.user, c.controller) for c in queryset):
            raise PermissionDenied("the selection includes a config you may not change")
        for config in queryset:
            config_update(config.controller, {"enabled": enabled}, actor=actor_for_user(request.user))
        self.message_user(
            request, f"{'Enabled' if enabled else 'Disabled'}: {', '.join(c.controller for c in queryset)}"
        )

    @admin.action(description="Enable", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[ReconcilerConfig]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[ReconcilerConfig]) -> None:
        self._set_enabled(request, queryset, False)


def _overview_columns() -> tuple[Any, ...]:
    """The changelist's state, last success and config columns: what the dashboard's overview
    shows (reconcilers.selectors.controllers_overview), read once for the whole list, not the
    newest run row (right after start that is a too_soon skip, which says nothing of health)."""
    overview = {row.name: row for row in controllers_overview(paused=paused_globally())}
    configs = configs_effective()

    @admin.display(description="state")
    def state(obj: ReconcilerConfig) -> str:
        row = overview.get(obj.controller)
        return row.state if row is not None else "unregistered"

    @admin.display(description="last success")
    def last_success(obj: ReconcilerConfig) -> str:
        row = overview.get(obj.controller)
        if row is None or row.last_success_at is None:
            return "never"
        return f"{row.last_success_at:%Y-%m-%d %H:%M:%S} ({age_text(row.last_success_age_seconds)} ago)"

    @admin.display(description="config")
    def config(obj: ReconcilerConfig) -> str:
        effective = configs.get(obj.controller)
        return _config_state(effective) if effective is not None else "unregistered"

    return state, last_success, config


def _config_state(config: EffectiveConfig) -> str:
    """ok, or why the config is refused (invalid) or flagged (breaks a save-only rule)."""
    if not config.valid:
        return f"INVALID, runs refused: {config.error}"
    if config.conflicts:
        return "flagged: " + "; ".join(config.conflicts)
    return "ok" if config.configured else "ok (defaults)"


def _report(request: HttpRequest, summary: RunSummary) -> None:
    level = {"success": messages.SUCCESS, "skipped": messages.WARNING}.get(summary.outcome, messages.ERROR)
    messages.add_message(request, level, summary.describe())


def _run_request_report(request: HttpRequest, name: str, **options: Any) -> RunRequest:
    """Send an operator's forced run to a worker (or run it here in `inprocess` mode) and say
    what happened; the message links the run history filtered by the task id."""
    outcome = run_request(name, actor=actor_for_user(request.user), **options)
    if outcome.summary is not None:
        _report(request, outcome.summary)
    elif outcome.sent:
        runs_url = (
            reverse("admin:reconcilers_reconcilerun_changelist") + "?" + urlencode({"q": outcome.task_id})
        )
        messages.success(
            request,
            format_html(
                '{}: sent to a worker as task <a href="{}">{}</a>; it shows as running, then finished, '
                'on the <a href="{}">dashboard</a>.',
                name,
                runs_url,
                outcome.task_id,
                reverse("reconcilers-dashboard"),
            ),
        )
    else:
        messages.error(request, f"{name}: {outcome.detail}")
    return outcome


@admin.register(ReconcileRun)
class ReconcileRunAdmin(admin.ModelAdmin):
    list_display = (
        "controller",
        "started_at",
        "outcome",
        "reason",
        "items",
        "dry_run",
        "forced",
        "fence",
        "worker_host",
        "task_id",
    )
    list_filter = ("controller", "outcome", "reason", "dry_run", "forced")
    search_fields = ("controller", "worker_host", "=task_id", "error")
    date_hierarchy = "started_at"
    list_per_page = 50
    show_full_result_count = False  # no COUNT(*) over a long history on every page

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # pruned by the runner


class GlobalPauseForm(forms.ModelForm):
    class Meta:
        model = GlobalPause
        fields = ("paused",)


@admin.register(GlobalPause)
class GlobalPauseAdmin(ActionPermissionDeniedMixin, admin.ModelAdmin):
    form = GlobalPauseForm
    list_display = ("__str__", "paused", "changed_by", "changed_at")
    readonly_fields = ("changed_by", "changed_at")
    actions = ("pause", "resume")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        pause_set(bool(form.cleaned_data["paused"]), actor=actor_for_user(request.user))

    @admin.action(description="Pause every reconciler", permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[GlobalPause]) -> None:
        pause_set(True, actor=actor_for_user(request.user))
        self.message_user(request, "Every reconciler run now skips with reason 'paused'.", messages.WARNING)

    @admin.action(description="Resume every reconciler", permissions=["change"])
    def resume(self, request: HttpRequest, queryset: QuerySet[GlobalPause]) -> None:
        pause_set(False, actor=actor_for_user(request.user))
        self.message_user(request, "Reconcilers resumed.")


def _is_reconciler_task(obj: Any) -> bool:
    return obj is not None and str(obj.task).startswith(TASK_PREFIX)


class ReconcilerAwarePeriodicTaskAdmin(PeriodicTaskAdmin):
    """django-celery-beat's admin with the reconcilers' rows read-only (and out of its bulk
    actions): their schedule follows ReconcilerConfig, edited in the Reconcilers admin."""

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not _is_reconciler_task(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not _is_reconciler_task(obj) and super().has_delete_permission(request, obj)

    def _others(self, queryset: QuerySet[PeriodicTask]) -> QuerySet[PeriodicTask]:
        return queryset.exclude(task__startswith=TASK_PREFIX)

    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().enable_tasks(request, self._others(queryset))

    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().disable_tasks(request, self._others(queryset))

    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().toggle_tasks(request, self._others(queryset))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().delete_queryset(request, self._others(queryset))


if admin.site.is_registered(PeriodicTask):
    admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, ReconcilerAwarePeriodicTaskAdmin)
