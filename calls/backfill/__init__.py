"""Fill token counts, importance and the call context fields for existing data (``backfill_context``).

The package, along its seams (a new backfill is a spec; the engine around it is the same):
- ``specs``: what each backfill computes (the ``Backfill`` protocol), and the registry of names;
- ``batching``: which rows the next batches take (keyset ranges of ids, never OFFSET);
- ``sql``: reading and writing a batch in one round trip on the driver's cursor;
- ``runs``: the run record (``backfill_runs``), its batches, and its status's moves (``ALLOWED_MOVES``);
- ``pacing``: how many workers, how big each batch;
- ``health``: the database's health signals, read while a run goes, and their verdict;
- ``throttle``: one worker's pacing decision from its throttle, its latency and the health verdict;
- ``brake``: the operator's pause and cancel as the workers meet them, within one batch;
- ``workers``: one worker's loop (claim, process, halve a failing batch) and its typed messages;
- ``supervisor``: this invocation's workers (threads or processes), their messages, the run's end;
- ``control``: the operator's brake (pause, resume, cancel) from the command line or the admin;
- ``events``: what a run reports (``BackfillStarted``, ``BackfillProgress``, ``BackfillFinished``)
  to the one ``schema_engine.progress.Reporter`` it is given;
- ``options``, ``errors``: what a caller gives and gets back.

Idempotent (only rows with NULL fields are visited and only changed rows written: a second run
changes nothing), resumable after a kill (each batch is taken and committed in one transaction),
one run per backfill with cooperating workers and hosts.
"""
from __future__ import annotations

from typing import Sequence

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
    IllegalMove,
    InvalidBackfillOption,
    NoRunToControl,
    SchemaNotReady,
    UnknownBackfill,
)
from calls.backfill.events import BackfillFinished, BackfillProgress, BackfillStarted
from calls.backfill.options import BackfillOptions, BackfillResult
from calls.backfill.specs import BACKFILLS, backfill_named, count_needing, in_run_order
from calls.backfill.supervisor import run_backfill
from calls.context_policy import ContextPolicy
from schema_engine import database, state
from schema_engine.progress import Reporter, ignore

CONTEXT_REVISION = "003_context_management"
RUNS_REVISION = "006_backfill_controls"

__all__ = [
    "BACKFILLS", "BackfillAlreadyRunning", "BackfillCancelled", "BackfillError", "BackfillFailed", "BackfillFinished",
    "BackfillInterrupted", "BackfillOptions", "BackfillProgress", "BackfillResult", "BackfillStarted", "IllegalMove",
    "InvalidBackfillOption", "NoRunToControl", "SchemaNotReady", "UnknownBackfill",
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
    names = in_run_order(only)
    ensure_schema(url=url)
    with database.connect(url) as conn:
        return {name: count_needing(conn, backfill_named(name), recompute=False) for name in names}


def backfill_context(
    *,
    only: Sequence[str] = BACKFILLS,
    options: BackfillOptions = BackfillOptions(),
    url: sa.URL | str | None = None,
    policy: ContextPolicy | None = None,
    reporter: Reporter = ignore,
) -> list[BackfillResult]:
    """Run the backfills in ``only`` (messages before calls) and return what each did.

    ``reporter`` hears how each starts, goes and ends (``events``): of each as it ends, so a later
    one's failure does not hide it. ``UnknownBackfill`` refuses a name none answers to, before anything runs.
    """
    chosen = [backfill_named(name, policy) for name in in_run_order(only)]
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
        for spec in chosen:
            results.append(run_backfill(engine, spec, options, reporter))
            reporter(BackfillFinished(result=results[-1]))
    finally:
        engine.dispose()
    return results
