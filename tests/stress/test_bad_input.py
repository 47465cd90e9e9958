"""Bad input, property-based: config validation, the `reconcile` CLI and the agent API.

Each property has an oracle written from design.md §6 and §9, not from the code: a value
is valid when it has the documented JSON type and lies in the documented range. Invalid
input must get a clear error naming what is wrong, and change nothing (rows, versions,
audit log, run history); valid input must be accepted. Runs on PostgreSQL and SQLite.
"""

from __future__ import annotations

import io
import json
import math
import os
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import pytest
from django.conf import settings
from django.core.management import execute_from_command_line
from django.test import Client
from django_celery_beat.models import PeriodicTask
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from controlplane.agents.models import Agent, AgentLease
from controlplane.agents.services import agent_create, agent_heartbeat
from controlplane.audit.models import AuditLog
from controlplane.commands.models import Command
from controlplane.commands.services import command_claim, command_enqueue
from controlplane.tenants.models import Plan, Tenant
from controlplane.tokens.models import BootstrapToken
from reconcilers import registry
from reconcilers.models import ReconcilerConfig, ReconcilerState, ReconcileRun
from reconcilers.schedule import periodic_task_name, schedule_sync
from reconcilers.services import ConfigValidationError, config_update

pytestmark = pytest.mark.stress

EXAMPLES = int(os.environ.get("STRESS_EXAMPLES", "60"))  # `make stress` raises it
PROPERTY = hsettings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PLANS = [p.value for p in Plan]

# --- values -------------------------------------------------------------------------------

# Text PostgreSQL can store (no NUL, no lone surrogates): the NUL case has its own test.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=8,
)


def int_values(low: int, high: int) -> st.SearchStrategy[Any]:
    """Integers around and inside the range (bounds, one past them), and anything else."""
    return st.one_of(
        st.sampled_from([low, high, low - 1, high + 1]),
        st.integers(min_value=low - 1000, max_value=high + 1000),
        JSON_VALUES,
    )


# The documented ranges (design.md §6) per params key: (kind, low, high).
PARAM_RANGES: dict[str, dict[str, tuple[str, float, float]]] = {
    "agent-health": {
        "stale_timeout_seconds": ("int", -1, 86400),  # low bound from the setting, see _param_range
        "lease_grace_seconds": ("int", 0, 3600),
        "max_offline_fraction": ("fraction", 0, 1),
        "brake_min_agents": ("int", 0, 1_000_000),
    },
    "job-recovery": {
        "stuck_threshold_minutes": ("int", 1, 10080),
        "tenant_stuck_threshold_minutes": ("int", 1, 10080),
        "max_retries": ("int", 1, 100),
        "max_queue_minutes": ("int", 1, 10080),
    },
    "queue-priority": {
        "plan_base": ("plans", 0, 10000),
        "age_bonus_per_minute": ("int", 1, 1000),
        "depth_bonus_max": ("int", 0, 1000),
    },
    "token-cleanup": {"grace_days": ("int", 0, 3650)},
    "audit-retention": {
        "retention_days": ("int", 1, 36500),
        "batch_size": ("int", 1, 100_000),
        "archive_dir": ("path", 0, 0),
    },
}
TOP_RANGES = {"interval_seconds": (1, 604800), "run_timeout_seconds": (1, 86400)}
# design.md §6: the defaults the fairness rule is computed with when a key is not set.
FAIRNESS_DEFAULTS = {
    "plan_base": {"enterprise": 100, "business": 75, "team": 50, "free": 25},
    "age_bonus_per_minute": 2,
    "depth_bonus_max": 10,
    "max_queue_minutes": 60,
}


def _cross_field_verdict(name: str, changes: dict[str, Any], verdict: str) -> str:
    """The rules that span fields (design.md §4.2, §5.3), judged against the row as it is now:
    a run timeout within the interval, and queue-priority's fairness bound below job-recovery's
    max_queue_minutes. Only a value valid on its own can break them."""
    if verdict != "valid":
        return verdict
    row = ReconcilerConfig.objects.get(controller=name)
    if "interval_seconds" in changes and changes["interval_seconds"] < row.run_timeout_seconds:
        return "invalid"
    if "run_timeout_seconds" in changes and changes["run_timeout_seconds"] > row.interval_seconds:
        return "invalid"
    if name in ("queue-priority", "job-recovery") and "params" in changes:
        stored = {
            other: ReconcilerConfig.objects.get(controller=other).params
            for other in ("queue-priority", "job-recovery")
        }
        stored[name] = {**stored[name], **changes["params"]}
        effective = {**FAIRNESS_DEFAULTS, **stored["queue-priority"], **stored["job-recovery"]}
        bases = effective["plan_base"].values()
        bound = (max(bases) - min(bases) + effective["depth_bonus_max"]) / effective["age_bonus_per_minute"]
        if bound >= effective["max_queue_minutes"]:
            return "invalid"
    return verdict


def _param_range(controller: str, key: str) -> tuple[str, float, float]:
    kind, low, high = PARAM_RANGES[controller][key]
    if key == "stale_timeout_seconds":
        low = 2 * settings.AGENT_HEARTBEAT_INTERVAL_SECONDS
    return kind, low, high


def _strict_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ambiguous_number(value: Any) -> bool:
    """Numeric text and integral floats: either refused or normalised to the same number."""
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer()
    if isinstance(value, str):
        try:
            float(value.strip())
        except ValueError:
            return False
        return True
    return False


def _verdict(kind: str, low: float, high: float, value: Any) -> str:
    """'valid', 'invalid' or 'ambiguous' for one params value, from the documented ranges."""
    if kind == "int":
        if _strict_int(value):
            return "valid" if low <= value <= high else "invalid"
        return "ambiguous" if _ambiguous_number(value) else "invalid"
    if kind == "fraction":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return "valid" if math.isfinite(value) and 0 < value <= 1 else "invalid"
        return "ambiguous" if _ambiguous_number(value) else "invalid"
    if kind == "plans":
        if not isinstance(value, dict):
            return "invalid"
        if set(value) != set(PLANS):
            return "invalid"
        verdicts = {_verdict("int", low, high, v) for v in value.values()}
        return "invalid" if "invalid" in verdicts else "ambiguous" if "ambiguous" in verdicts else "valid"
    # archive_dir: null or empty is valid; with no AUDIT_ARCHIVE_ROOT configured (as here) any
    # other value is invalid config (tests/controllers/test_archive_confinement.py covers a root).
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return "valid"
    return "invalid" if not settings.AUDIT_ARCHIVE_ROOT else "ambiguous"


def _state(name: str) -> tuple[Any, ...]:
    row = ReconcilerConfig.objects.filter(controller=name).values().get()
    task = PeriodicTask.objects.select_related("interval").get(name=periodic_task_name(name))
    assert task.interval is not None
    return (row, task.enabled, task.interval.every, AuditLog.objects.count())


@st.composite
def config_changes(draw: st.DrawFn) -> tuple[str, dict[str, Any], str, str]:
    """(controller, changes, field the verdict is about, verdict)."""
    value: Any
    name = draw(st.sampled_from(list(PARAM_RANGES)))
    target = draw(st.sampled_from(["top", "params", "unknown", "params_unknown", "params_type"]))
    if target == "top":
        field = draw(st.sampled_from(["enabled", "dry_run", *TOP_RANGES]))
        if field in TOP_RANGES:
            top_low, top_high = TOP_RANGES[field]
            value = draw(int_values(top_low, top_high))
            verdict = "valid" if _strict_int(value) and top_low <= value <= top_high else "invalid"
        else:
            value = draw(JSON_VALUES)
            verdict = "valid" if isinstance(value, bool) else "invalid"
        return name, {field: value}, field, verdict
    if target == "unknown":
        field = draw(TEXT.filter(lambda k: k not in ("enabled", "dry_run", "params", *TOP_RANGES)))
        return name, {field: draw(JSON_VALUES)}, field, "invalid"
    if target == "params_type":
        value = draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
        return name, {"params": value}, "params", "invalid"
    if target == "params_unknown":
        key = draw(TEXT.filter(lambda k: k not in PARAM_RANGES[name]))
        return name, {"params": {key: draw(JSON_VALUES)}}, f"params.{key}", "invalid"
    key = draw(st.sampled_from(list(PARAM_RANGES[name])))
    kind, low, high = _param_range(name, key)
    if kind == "plans":
        value = draw(
            st.one_of(
                st.fixed_dictionaries({p: int_values(int(low), int(high)) for p in PLANS}),
                st.dictionaries(st.sampled_from(PLANS), st.integers(0, 10000), max_size=3),
                JSON_VALUES,
            )
        )
    elif kind == "fraction":
        value = draw(
            st.one_of(st.floats(min_value=-1, max_value=2), st.sampled_from([0, 1, 0.0, 1.0]), JSON_VALUES)
        )
    elif kind == "path":
        value = draw(st.one_of(st.none(), st.just(""), TEXT, TEXT.map(lambda t: "/" + t), JSON_VALUES))
        assume(not (isinstance(value, str) and value.strip() == "" and value != ""))
    else:
        value = draw(int_values(int(low), int(high)))
    return name, {"params": {key: value}}, f"params.{key}", _verdict(kind, low, high, value)


@pytest.mark.django_db
@PROPERTY
@given(case=config_changes())
def test_config_update_rejects_every_bad_value_and_saves_nothing(
    case: tuple[str, dict[str, Any], str, str],
) -> None:
    name, changes, field, verdict = case
    schedule_sync([name, "queue-priority", "job-recovery"])
    verdict = _cross_field_verdict(name, changes, verdict)
    before = _state(name)
    error: ConfigValidationError | None = None
    try:
        row = config_update(name, changes, actor="user:hypothesis")
    except ConfigValidationError as exc:
        error = exc
    if error is not None:
        assert verdict != "valid", f"{changes!r} is valid by the spec but was refused: {error}"
        assert error.field.startswith(field) or field.startswith(error.field), (error.field, field)
        assert error.field in str(error)
        assert _state(name) == before, "a refused change saved something"
        return
    assert verdict != "invalid", f"{changes!r} is invalid by the spec but was accepted"
    if "params" in changes:
        key = field.removeprefix("params.")
        saved, given_value = row.params[key], changes["params"][key]
        if verdict == "valid" and given_value != "":
            assert saved == given_value
        elif isinstance(given_value, str) and given_value.strip() == "":
            assert saved is None
    elif field in changes:
        assert getattr(row, field) == changes[field]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "key"),
    [("audit-retention", "retention_days"), ("agent-health", "max_offline_fraction")],
)
def test_booleans_are_not_numbers_in_params(name: str, key: str) -> None:
    schedule_sync([name])
    before = _state(name)
    with pytest.raises(ConfigValidationError):
        config_update(name, {"params": {key: True}}, actor="user:test")
    assert _state(name) == before


@pytest.mark.django_db
def test_archive_dir_with_nul_is_a_validation_error() -> None:
    schedule_sync(["audit-retention"])
    before = _state("audit-retention")
    with pytest.raises(ConfigValidationError) as raised:
        config_update("audit-retention", {"params": {"archive_dir": "/tmp/a\x00b"}}, actor="user:test")
    assert raised.value.field == "params.archive_dir"
    assert _state("audit-retention") == before


# --- the CLI --------------------------------------------------------------------------------

VALID_FLAGS = ["--dry-run", "--force", "--ignore-brake", "--json"]


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            execute_from_command_line(["manage.py", "reconcile", *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def _history() -> tuple[int, int, list[tuple[str, int]]]:
    return (
        ReconcileRun.objects.count(),
        AuditLog.objects.count(),
        sorted(ReconcilerState.objects.values_list("controller", "fence")),
    )


# Options argparse or Django would accept (argparse also takes unique prefixes of them).
KNOWN_OPTIONS = [
    *VALID_FLAGS,
    *("--verbosity", "--settings", "--pythonpath", "--traceback", "--no-color", "--force-color"),
    *("--skip-checks", "--version", "--help"),
]
BAD_FLAGS = st.one_of(
    TEXT.filter(bool)
    .map(lambda t: "--" + t)
    .filter(lambda f: not any(k.startswith(f.split("=")[0]) for k in KNOWN_OPTIONS)),
    TEXT.filter(lambda t: bool(t) and t[0] not in "hv-").map(lambda t: "-" + t),
)


@st.composite
def cli_arguments(draw: st.DrawFn) -> tuple[list[str], bool]:
    """(argv after `reconcile`, whether the spec calls it a valid invocation)."""
    names = registry.controller_names()
    name_ok = draw(st.booleans())
    name = (
        draw(st.sampled_from(names))
        if name_ok
        else draw(TEXT.filter(lambda t: t not in names and not t.startswith("-")))
    )
    flags = draw(st.lists(st.one_of(st.sampled_from(VALID_FLAGS), BAD_FLAGS), max_size=4, unique=True))
    extra = draw(st.lists(TEXT.filter(lambda t: not t.startswith("-")), max_size=1))  # a stray positional
    argv = draw(st.permutations([name, *flags, *extra]))
    return list(argv), name_ok and all(f in VALID_FLAGS for f in flags) and not extra


# transaction=True: the command closes every connection when it ends, as from a shell.
@pytest.mark.django_db(transaction=True)
@PROPERTY
@given(case=cli_arguments())
def test_reconcile_cli_bad_arguments_exit_2_with_a_message_and_write_nothing(
    case: tuple[list[str], bool],
) -> None:
    argv, ok = case
    before = _history()
    code, out, err = _cli(argv)
    assert "Traceback" not in err
    assert "Traceback" not in out
    if ok:
        assert code in (0, 1), (argv, code, err)
        if "--json" in argv:
            summary = json.loads(out)
            assert summary["controller"] in registry.controller_names()
        return
    assert code == 2, (argv, code, out, err)
    assert err.strip(), "a usage error must say what is wrong"
    assert "valid names" in err or "error:" in err, err
    assert _history() == before, "a refused command wrote something"


# --- the agent API ----------------------------------------------------------------------------

ENDPOINTS = [
    "agents/register",
    "agents/heartbeat",
    "jobs/claim",
    "jobs/{id}/start",
    "jobs/{id}/progress",
    "jobs/{id}/complete",
    "jobs/{id}/fail",
]
BODY_KEYS = ["bootstrap_token", "name", "capabilities", "attempt", "message", "error"]


def _api_state() -> tuple[Any, ...]:
    return (
        list(Command.objects.order_by("pk").values_list()),
        list(Agent.objects.order_by("pk").values_list()),
        list(AgentLease.objects.order_by("pk").values_list()),
        list(BootstrapToken.objects.order_by("pk").values_list()),
        AuditLog.objects.count(),
    )


@pytest.fixture
def api_world(db: Any) -> dict[str, Any]:
    tenant = Tenant.objects.create(name="hyp", plan=Plan.TEAM)
    created = agent_create(name="hyp-agent", tenant=None, actor="user:test")
    agent_heartbeat(created.agent.pk)
    command_enqueue(tenant, "hyp", {}, is_platform_job=True)
    claimed = command_claim(created.agent.pk)
    assert claimed is not None
    return {"key": created.api_key, "job_id": claimed.command_id, "attempt": claimed.attempt}


@st.composite
def api_requests(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(
        st.one_of(
            JSON_VALUES,
            st.dictionaries(st.sampled_from(BODY_KEYS), JSON_VALUES, max_size=4),
            st.dictionaries(TEXT, JSON_VALUES, max_size=3),
        )
    )
    raw = draw(st.one_of(st.none(), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
    return {
        "endpoint": draw(st.sampled_from(ENDPOINTS)),
        "body": body,
        "raw": raw,
        "auth": draw(st.sampled_from(["valid", "none", "garbage"])),
        "job": draw(st.one_of(st.just("held"), st.integers(min_value=0, max_value=2**70))),
        "content_type": draw(st.sampled_from(["application/json", "text/plain"])),
    }


@PROPERTY
@given(request=api_requests())
def test_api_answers_bad_payloads_with_a_4xx_json_error_and_changes_nothing(
    api_world: dict[str, Any], request: dict[str, Any]
) -> None:
    job = api_world["job_id"] if request["job"] == "held" else request["job"]
    path = "/api/v1/" + request["endpoint"].replace("{id}", str(job))
    headers: dict[str, Any] = {}
    if request["auth"] == "valid":
        headers["HTTP_AUTHORIZATION"] = f"Bearer {api_world['key']}"
    elif request["auth"] == "garbage":
        headers["HTTP_AUTHORIZATION"] = "Bearer cpa_not_a_key"
    data = request["raw"] if request["raw"] is not None else json.dumps(request["body"])
    before = _api_state()
    response = Client().post(path, data=data, content_type=request["content_type"], **headers)
    assert response.status_code < 500, (path, data, response.content[:300])
    if response.status_code >= 400:
        assert response["Content-Type"].startswith("application/json"), response.content[:200]
        payload = response.json()
        assert set(payload) == {"error", "detail"}, payload
        assert isinstance(payload["error"], str)
        assert isinstance(payload["detail"], str)
        assert payload["error"]
        assert payload["detail"]
        assert _api_state() == before, f"{path} answered {response.status_code} but changed rows"
