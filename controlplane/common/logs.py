"""Log context and formatters: what every line of every process carries (design.md §4.11).

A `ContextVar` holds the fields of the work in progress (a run's controller, run id, fence
and trigger; a request's id); `ContextFilter`, on the one stderr handler, copies them onto
every record, whichever logger wrote it (the runtime's, Celery's, Django's). The JSON
formatter writes them as fields; the plain formatter, for people at a terminal, leaves
them out (the messages already name the controller).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:  # settings import this module: nothing of Django's at import time
    from django.http import HttpRequest, HttpResponse

_context: ContextVar[dict[str, Any] | None] = ContextVar("controlplane_log_context", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept only when it is short and plain, so a client cannot inject
# separators or megabytes into every log line of its request.
_REQUEST_ID_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def log_context_get() -> dict[str, Any]:
    """The fields bound to the current context (a copy)."""
    return dict(_context.get() or {})


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind `fields` to every log line written inside the block (nested blocks add to the
    outer ones; leaving a block restores what was bound before it)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def log_context_bind(**fields: Any) -> None:
    """Add `fields` to the current block's context (e.g. a run's id once its row exists);
    the enclosing `log_context` block drops them when it ends."""
    _context.set({**(_context.get() or {}), **fields})


class ContextFilter(logging.Filter):
    """Copy the bound context onto each record (never over an attribute the call set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        # Django logs a 4xx/5xx response after the middleware has returned, with the
        # request on the record: its id is there.
        request_id = getattr(getattr(record, "request", None), "request_id", None)
        if request_id and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class AccessJsonFormatter(JsonFormatter):
    """Gunicorn's access lines as fields rather than an Apache-style string.

    Gunicorn logs each request as `access_log.info(access_log_format, atoms)`: the atoms
    dict (h: remote address, m: method, U: path, s: status, ...) is the record's args.
    """

    ATOMS = {
        "remote_addr": "h",
        "method": "m",
        "path": "U",
        "query": "q",
        "protocol": "H",
        "status": "s",
        "bytes": "B",
        "duration_ms": "M",
        "referer": "f",
        "user_agent": "a",
    }

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        atoms = record.args if isinstance(record.args, dict) else {}
        if not atoms:
            return
        log_data["message"] = atoms.get("r", log_data.get("message", ""))
        for field, atom in self.ATOMS.items():
            value = atoms.get(atom)
            if value not in (None, "", "-"):
                log_data[field] = int(str(value)) if field == "status" and str(value).isdigit() else value
        request_id = atoms.get(f"{{{REQUEST_ID_HEADER.lower()}}}o")
        if request_id:
            log_data["request_id"] = request_id


def request_id_of(request: HttpRequest) -> str:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    return incoming if _REQUEST_ID_SAFE.match(incoming) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Give each request an id (the caller's X-Request-ID when it is plain, else a new
    one), bind it to every line logged while the request runs, and return it in the
    response header, where gunicorn's access line picks it up."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request.request_id = request_id_of(request)  # type: ignore[attr-defined]
        with log_context(request_id=request_id):
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def logging_config(*, level: str, json: bool, root_level: str = "WARNING") -> dict[str, Any]:
    """The dictConfig of every process: one stderr handler, plain or JSON, with the context
    filter. `level` is the project's loggers'; `root_level` everyone else's (Celery's
    --loglevel sets it in the worker and beat). Gunicorn's loggers are included so its own
    configuration (logconfig_dict) and Django's agree."""
    formatter = "json" if json else "plain"
    renamed = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "controlplane.common.logs.ContextFilter"}},
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
                "rename_fields": renamed,
            },
            "access_json": {
                "()": "controlplane.common.logs.AccessJsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
                "rename_fields": renamed,
            },
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": formatter,
                "filters": ["context"],
            },
            "access": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "access_json" if json else "plain",
                "filters": ["context"],
            },
        },
        "root": {"handlers": ["stderr"], "level": root_level},
        "loggers": {
            "controlplane": {"level": level},
            "reconcilers": {"level": level},
            # Django's defaults give its logger a plain console handler (with DEBUG) and the
            # admin mailer (without): here it writes through the one handler like the rest.
            "django": {"handlers": ["stderr"], "propagate": False},
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    }
