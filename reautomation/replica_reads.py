"""The admin's read-only pages read from the streaming replica while it is healthy; everything else from the primary.

``ReplicaReadsMiddleware`` decides per request: a GET or HEAD reads the ``calls`` and
``monitoring`` models from ``replica`` when that replica answers and lags at most
``DATABASE_REPLICA_MAX_LAG`` seconds (checked at most every ``CHECK_SECONDS``); otherwise from
the primary, and ``request.replica_notice`` says why (the admin shows it on the page). Writes,
POSTs, the session, users and permissions always use the primary: a login or a brake must be
seen at once.
"""
from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from schema_engine import database, replicas

REPLICA = replicas.REPLICA_ALIAS  # the settings' alias of DATABASE_REPLICA_URL
REPLICA_APPS = frozenset({"calls", "monitoring"})
# The backfills' runs stay on the primary: an operator who pauses a run must see it paused at once.
PRIMARY_MODELS = frozenset({"backfillrun", "backfillbatch"})
CHECK_SECONDS = 2.0

_reading_replica: contextvars.ContextVar[bool] = contextvars.ContextVar("reading_replica", default=False)


@dataclass(frozen=True)
class ReplicaVerdict:
    use: bool
    notice: str | None  # why the page reads from the primary


_checked: tuple[float, ReplicaVerdict] | None = None
_check_lock = threading.Lock()


def replica_verdict() -> ReplicaVerdict:
    """Whether to read from the replica now (cached for ``CHECK_SECONDS``)."""
    global _checked
    with _check_lock:
        if _checked is not None and time.monotonic() - _checked[0] < CHECK_SECONDS:
            return _checked[1]
        view = replicas.replica_view(database.sqlalchemy_url(settings.DATABASES[REPLICA]))
        limit = settings.DATABASE_REPLICA_MAX_LAG
        if view.error or view.lag is None:
            verdict = ReplicaVerdict(False, f"Read from the primary: the replica is unavailable ({view.error}).")
        elif view.lag > limit:
            verdict = ReplicaVerdict(False, f"Read from the primary: the replica is {view.lag:.1f}s behind "
                                            f"(DATABASE_REPLICA_MAX_LAG {limit:g}s).")
        else:
            verdict = ReplicaVerdict(True, None)
        _checked = (time.monotonic(), verdict)
        return verdict


class ReplicaReadsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.replica_notice = None  # type: ignore[attr-defined]
        if REPLICA not in settings.DATABASES or request.method not in ("GET", "HEAD"):
            return self.get_response(request)
        verdict = replica_verdict()
        request.replica_notice = verdict.notice  # type: ignore[attr-defined]
        token = _reading_replica.set(verdict.use)
        try:
            return self.get_response(request)
        finally:
            _reading_replica.reset(token)


class ReplicaRouter:
    """Reads of the apps' models go to the replica while a request allows it; all writes to the primary."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        meta = model._meta
        if _reading_replica.get() and meta.app_label in REPLICA_APPS and meta.model_name not in PRIMARY_MODELS:
            return REPLICA
        return None

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True  # the replica holds the primary's rows

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if db == REPLICA:
            return False  # Alembic owns the schema, on the primary; a replica only replays it
        return None
