"""Admin plumbing shared by the agent and command admins: version-checked change forms
and bulk actions that go through the operator services one row at a time.

Why one row at a time: each row gets its own state check, version condition and AuditLog
row, and one row that changed concurrently is skipped without undoing the others. The
selection is capped so that an action stays a bounded amount of work.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers, patch_cache_control

from controlplane.common.actors import actor_for_user
from controlplane.common.errors import ConcurrentModificationError, InvalidTransition, OperatorActionError

# Largest selection one admin action handles: several changelist pages, a few seconds of work.
ADMIN_ACTION_MAX_ROWS = 500
_REFUSAL_ATTR = "_operator_save_refused"


def concurrent_change_message(obj: Model, loaded: int, current: int | None) -> str:
    if current is None:
        return f"This {obj._meta.verbose_name} no longer exists; nothing was saved."
    return (
        f"This {obj._meta.verbose_name} changed concurrently, reload the page and re-apply your edit "
        f"(version {loaded} was loaded, the database now has {current}: a heartbeat, claim, controller "
        "or another operator wrote it). Nothing was saved."
    )


_SECRET_ATTR = "_secret_shown_once"


def secret_show_once(request: HttpRequest, label: str, secret: str) -> None:
    """Have the admin's response to this POST show `secret` (SecretShownOnceMixin)."""
    setattr(request, _SECRET_ATTR, (label, secret))


class SecretShownOnceMixin:
    """The add view answers its POST with a page that shows the new secret, instead of a
    redirect carrying it in a message: messages live in a signed but readable cookie (or
    the session table), so a secret put there outlives the response that shows it. The
    page is marked no-store."""

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: str | None = None) -> Any:
        shown = getattr(request, _SECRET_ATTR, None)
        if shown is None:
            return super().response_add(request, obj, post_url_continue)  # type: ignore[misc]
        label, secret = shown
        admin_self: Any = self
        opts = obj._meta
        context = {
            **admin_self.admin_site.each_context(request),
            "title": label,
            "label": label,
            "secret": secret,
            "object_name": str(obj),
            "object_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]),
            "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
            "opts": opts,
        }
        response = TemplateResponse(request, "admin/secret_shown_once.html", context)
        add_never_cache_headers(response)
        patch_cache_control(response, no_store=True)
        return response


class ActionPermissionDeniedMixin:
    """A POSTed action that exists on the admin but not for this user is a 403, not Django's
    "No action selected" page: a view-only user is refused, and nothing changes."""

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        # Checked before Django's own handling, which skips actions entirely when the user
        # has none left (and then shows the list again with a 200).
        if request.method == "POST":
            name = request.POST.get("action", "")
            admin_self: Any = self
            known = {action_name for _func, action_name, _desc in admin_self._get_base_actions()}
            if name in known and name not in admin_self.get_actions(request):
                raise PermissionDenied(f"you may not run the action {name!r}")
        return super().changelist_view(request, extra_context)  # type: ignore[misc]


class VersionedChangeForm(forms.ModelForm):
    """A change form that carries the `version` it was loaded with and refuses a stale save.

    clean() locks the row (the admin runs the POST in a transaction, so on PostgreSQL the
    lock holds until the save commits) and compares versions; the service that saves
    repeats the check in its WHERE clause, which is what guarantees it on every database.
    """

    loaded_version = forms.IntegerField(widget=forms.HiddenInput, min_value=1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["loaded_version"].initial = self.instance.version
        else:
            self.fields["loaded_version"].required = False

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        loaded = cleaned.get("loaded_version")
        if self.instance.pk is not None and loaded is not None:
            current = (
                type(self.instance)
                ._default_manager.select_for_update()
                .filter(pk=self.instance.pk)
                .values_list("version", flat=True)
                .first()
            )
            if current != loaded:
                raise ValidationError(concurrent_change_message(self.instance, loaded, current))
        return cleaned


class VersionedModelAdmin(admin.ModelAdmin):
    """Saves a change form through `update_service` with only the changed editable fields.

    If the service refuses (the row changed after clean(), possible where row locks are
    no-ops, e.g. SQLite), nothing is written, no "changed" history entry is logged and the
    operator is sent back to the form with the reason.
    """

    form = VersionedChangeForm
    operator_editable: Collection[str] = ()

    def update_service(self, pk: int, *, changes: dict[str, Any], expected_version: int, actor: str) -> bool:
        raise NotImplementedError

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        changes = {f: form.cleaned_data[f] for f in form.changed_data if f in self.operator_editable}
        try:
            self.update_service(
                obj.pk,
                changes=changes,
                expected_version=form.cleaned_data["loaded_version"],
                actor=actor_for_user(request.user),
            )
        except (OperatorActionError, ObjectDoesNotExist) as exc:
            setattr(request, _REFUSAL_ATTR, str(exc))

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        if getattr(request, _REFUSAL_ATTR, None):
            return None
        return super().log_change(request, obj, message)

    def response_change(self, request: HttpRequest, obj: Any) -> HttpResponse:
        refusal = getattr(request, _REFUSAL_ATTR, None)
        if refusal:
            self.message_user(request, f"Nothing was saved: {refusal}", messages.ERROR)
            return HttpResponseRedirect(request.path)
        return super().response_change(request, obj)


def operator_action_apply(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    service: Callable[[int, str], bool],
    done: str,
) -> None:
    """Run `service(pk, actor)` for each selected row and report what changed and what was skipped."""
    pks = list(queryset.order_by("pk").values_list("pk", flat=True)[: ADMIN_ACTION_MAX_ROWS + 1])
    if len(pks) > ADMIN_ACTION_MAX_ROWS:
        modeladmin.message_user(
            request,
            f"Select at most {ADMIN_ACTION_MAX_ROWS} rows per action (filter first); nothing was changed.",
            messages.ERROR,
        )
        return
    actor = actor_for_user(request.user)
    changed = unchanged = wrong_state = concurrent = 0
    reasons: list[str] = []
    for pk in pks:
        try:
            if service(pk, actor):
                changed += 1
            else:
                unchanged += 1
        except InvalidTransition as exc:
            wrong_state += 1
            reasons.append(str(exc))
        except (ConcurrentModificationError, ObjectDoesNotExist) as exc:
            concurrent += 1
            reasons.append(str(exc))
    noun = modeladmin.model._meta.verbose_name_plural
    summary = (
        f"{done} {changed} {noun}; skipped {unchanged + wrong_state + concurrent} "
        f"(already done: {unchanged}, wrong state: {wrong_state}, changed concurrently: {concurrent})."
    )
    if reasons:
        summary += " " + "; ".join(reasons[:5]) + ("; …" if len(reasons) > 5 else "")
    level = messages.SUCCESS if changed and not (wrong_state or concurrent) else messages.WARNING
    modeladmin.message_user(request, summary, level)
