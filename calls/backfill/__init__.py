"""Fill token counts, importance and the call context fields for existing data, and the columns
expand revisions declare (``backfill_context``).

The package, along its seams (a new backfill is a spec; the engine around it is the same):
- ``specs``: what each backfill computes (the ``Backfill`` protocol), the built-ins' registry of
  names, and the fills the code's expand revisions declare (``ColumnFill``, ``expand_<revision>``);
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
- ``events``: what a run reports (``BackfillStarted``, ``BackfillProgress``, ``BackfillFinished``,
  ``BackfillSkipped`` for a fill with nothing to fill here)
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
    InvalidFill,
    NoRunToControl,
    SchemaNotReady,
    UnknownBackfill,
)
from calls.backfill.events import BackfillFinished, BackfillProgress, BackfillSkipped, BackfillStarted
from calls.backfill.options import BackfillOptions, BackfillResult
from calls.backfill.specs import (
    BACKFILLS,
    Catalog,
    backfill_named,
    backfill_names,
    count_needing,
    in_run_order,
    skip_reason,
)
from calls.backfill.supervisor import run_backfill
from calls.context_policy import ContextPolicy
from schema_engine import database, state
from schema_engine.progress import Reporter, ignore

CONTEXT_REVISION = "003_context_management"
RUNS_REVISION = "006_backfill_controls"

__all__ = [
    "BACKFILLS", "BackfillAlreadyRunning", "BackfillCancelled", "BackfillError", "BackfillFailed", "BackfillFinished",
    "BackfillInterrupted", "BackfillOptions", "BackfillProgress", "BackfillResult", "BackfillSkipped",
    "BackfillStarted", "IllegalMove", "InvalidBackfillOption", "InvalidFill", "NoRunToControl", "SchemaNotReady",
    "UnknownBackfill", "backfill_context", "backfill_named", "backfill_names", "ensure_schema", "in_run_order",
    "pending_rows",
]


def ensure_schema(*, url: sa.URL | str | None = None) -> set[str]:
    """Raise ``SchemaNotReady`` unless the database has the fields to fill and the run tables; return its revisions."""
    applied = state.applied_revisions(url=url)
    if CONTEXT_REVISION not in applied:
        raise SchemaNotReady(
            f"the schema is below {CONTEXT_REVISION}, which adds the fields to fill: "
            "run 'manage.py migrate_schema upgrade head' first")
    if RUNS_REVISION not in applied:
        raise SchemaNotReady(
            f"backfill_context records its runs (and the operator's brake) in tables up to {RUNS_REVISION}: "
            "run 'manage.py migrate_schema upgrade head' first")
    return applied


def pending_rows(*, url: sa.URL | str | None = None, only: Sequence[str] | None = None) -> dict[str, int]:
    """Return, per backfill (default: every one), how many rows still need it (a count over each table: not free).

    A fill over several tables counts them all; one with nothing to fill here counts 0 (``specs.skip_reason``).
    """
    catalog = Catalog.load()
    grouped = catalog.grouped(only)
    applied = ensure_schema(url=url)
    policy = ContextPolicy.from_settings()
    with database.connect(url) as conn:
        counts = {}
        for name, parts in grouped.items():
            specs = [catalog.spec(part, policy) for part in parts]
            counts[name] = sum(count_needing(conn, spec, recompute=False) for spec in specs
                               if skip_reason(conn, spec, applied) is None)
        return counts


def backfill_context(
    *,
    only: Sequence[str] | None = None,
    options: BackfillOptions = BackfillOptions(),
    url: sa.URL | str | None = None,
    policy: ContextPolicy | None = None,
    reporter: Reporter = ignore,
) -> list[BackfillResult]:
    """Run the backfills in ``only`` (default: every one; messages before calls, then the declared fills)
    and return what each did.

    ``reporter`` hears how each starts, goes and ends (``events``): of each as it ends, so a later
    one's failure does not hide it. A fill with nothing to fill in this database (its expand not
    applied, or contracted, or on SQLite) does not run: the reporter hears ``BackfillSkipped``.
    ``UnknownBackfill`` refuses a name none answers to, before anything runs.
    """
    catalog = Catalog.load()
    chosen = catalog.specs(only, policy)
    applied = ensure_schema(url=url)
    tokens.encoding()  # fail before any run is recorded if the encoding cannot load
    url = database.resolve_url(url)
    if url.get_backend_name() == "postgresql":
        # Before a run is recorded: its coordination and session settings need sessions of their own,
        # and its replica brake replicas it can read.
        database.require_session(url)
        with database.connect(url) as conn:
            health.refuse_blind_replica_brake(conn, settings.BACKFILL_MAX_REPLICA_LAG)
    with database.connect(url) as conn:
        skipped = {spec.name: why for spec in chosen if (why := skip_reason(conn, spec, applied))}
    # Every session of the backfill says so: the health signals tell its sessions from live traffic.
    engine = database.create_engine(url, **({"connect_args": {"application_name": health.APPLICATION_NAME}}
                                            if url.get_backend_name() == "postgresql" else {}))
    results = []
    try:
        for spec in chosen:
            if spec.name in skipped:
                reporter(BackfillSkipped(backfill=spec.name, why=skipped[spec.name], named=only is not None))
                continue
            results.append(run_backfill(engine, spec, options, reporter))
            reporter(BackfillFinished(result=results[-1]))
    finally:
        engine.dispose()
    return results
