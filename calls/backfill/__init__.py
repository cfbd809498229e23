"""Fill token counts, importance and the call context fields for existing data (``backfill_context``).

The package, along its seams:
- ``specs``: what each backfill computes (the ``Backfill`` protocol: messages, then calls);
- ``batching``: which rows the next batches take (keyset ranges of ids, never OFFSET);
- ``sql``: reading and writing a batch in one round trip on the driver's cursor;
- ``runs``: the run record (``backfill_runs``), its batches and its state transitions;
- ``pacing``: how many workers, how big each batch, how long to wait between batches;
- ``health``: the database's health signals, read while a run goes, and the workers' verdict;
- ``workers``: this invocation's worker threads or processes, their pace and progress;
- ``options``, ``errors``: what a caller gives and gets back.

Idempotent (only rows with NULL fields are visited and only changed rows written: a second run
changes nothing), resumable after a kill (each batch is taken and committed in one transaction),
one run per backfill with cooperating workers and hosts.
"""
from __future__ import annotations

from typing import Callable, Sequence

import sqlalchemy as sa
from django.conf import settings

from calls import tokens
from calls.backfill import health
from calls.backfill.errors import (
    BackfillAlreadyRunning,
    BackfillCancelled,
    BackfillError,
    BackfillFailed,
    BackfillInterrupted,
    InvalidBackfillOption,
    NoRunToControl,
    SchemaNotReady,
)
from calls.backfill.options import (
    BackfillOptions,
    BackfillProgress,
    BackfillResult,
    BackfillStart,
    ProgressCallback,
    StartCallback,
)
from calls.backfill.specs import BACKFILLS, backfill_named, count_needing
from calls.backfill.workers import run_backfill
from calls.context_policy import ContextPolicy
from schema_engine import database, state

CONTEXT_REVISION = "003_context_management"
RUNS_REVISION = "006_backfill_controls"

__all__ = [
    "BACKFILLS", "BackfillAlreadyRunning", "BackfillCancelled", "BackfillError", "BackfillFailed",
    "BackfillInterrupted", "BackfillOptions", "BackfillProgress", "BackfillResult", "BackfillStart", "InvalidBackfillOption",
    "NoRunToControl", "SchemaNotReady",
    "backfill_context", "ensure_schema", "pending_rows",
]


def ensure_schema(*, url: sa.URL | str | None = None) -> None:
    """Raise ``SchemaNotReady`` unless the database has the fields to fill and the run tables."""
    applied = state.applied_revisions(url=url)
    if CONTEXT_REVISION not in applied:
        raise SchemaNotReady(
            f"the schema is below {CONTEXT_REVISION}, which adds the fields to fill: "
            "run 'manage.py migrate_schema upgrade head' first")
    if RUNS_REVISION not in applied:
        raise SchemaNotReady(
            f"backfill_context records its runs (and the operator's brake) in tables up to {RUNS_REVISION}: "
            "run 'manage.py migrate_schema upgrade head' first")


def pending_rows(*, url: sa.URL | str | None = None, only: tuple[str, ...] = BACKFILLS) -> dict[str, int]:
    """Return, per backfill, how many rows still need it (a count over each table: not free)."""
    ensure_schema(url=url)
    with database.connect(url) as conn:
        return {name: count_needing(conn, backfill_named(name), recompute=False) for name in BACKFILLS
                if name in only}


def backfill_context(
    *,
    only: Sequence[str] = BACKFILLS,
    options: BackfillOptions = BackfillOptions(),
    url: sa.URL | str | None = None,
    policy: ContextPolicy | None = None,
    on_progress: ProgressCallback | None = None,
    on_start: StartCallback | None = None,
    on_finish: Callable[[BackfillResult], None] | None = None,
) -> list[BackfillResult]:
    """Run the backfills in ``only`` (messages before calls) and return what each did.

    ``on_finish`` hears of each as it ends, so a later one's failure does not hide it.
    """
    ensure_schema(url=url)
    tokens.encoding()  # fail before any run is recorded if the encoding cannot load
    url = database.resolve_url(url)
    if url.get_backend_name() == "postgresql":
        # Before a run is recorded: its coordination and session settings need sessions of their own,
        # and its replica brake replicas it can read.
        database.require_session(url)
        with database.connect(url) as conn:
            health.refuse_blind_replica_brake(conn, settings.BACKFILL_MAX_REPLICA_LAG)
    # Every session of the backfill says so: the health signals tell its sessions from live traffic.
    engine = database.create_engine(url, **({"connect_args": {"application_name": health.APPLICATION_NAME}}
                                            if url.get_backend_name() == "postgresql" else {}))
    results = []
    try:
        for name in (b for b in BACKFILLS if b in only):
            results.append(run_backfill(engine, backfill_named(name, policy), options, on_progress, on_start))
            if on_finish:
                on_finish(results[-1])
    finally:
        engine.dispose()
    return results
