"""The operator's brake: pause, resume and cancel a backfill's run, from the command line or the admin.

Each is one UPDATE of the run's status; every worker on every host sees it at its next batch
(``runs.Run.process_batch`` returns the status, ``runs.Run.claim`` reads it). Paused workers wait
and continue when the run is resumed; on a cancel they stop, the run's waiting batches are
dropped, and a later run starts afresh where rows still need it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

import sqlalchemy as sa
from django.utils import timezone

from calls.backfill.errors import NoRunToControl
from calls.backfill.runs import CANCELLED, PAUSED, RUNNING, run_tables
from calls.backfill.specs import BACKFILLS
from calls.models import BackfillRun
from schema_engine import database

# Who may use the brake in the admin (BackfillRun's Meta.permissions); the command line is the host's.
PERMISSION = "calls.control_backfillrun"
ACTIONS = {"pause": "Pause", "resume": "Resume", "cancel": "Cancel"}
DONE = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}
# A running run whose heartbeat is older than this shows as stalled (its workers died or hang);
# backfill_context's --stale-after (the same by default) decides when a new run takes it over.
STALLED_AFTER = timedelta(seconds=120)


def actions_for(status: str) -> list[str]:
    """Return the brake's actions that apply to a run in ``status``."""
    return {RUNNING: ["pause", "cancel"], PAUSED: ["resume", "cancel"]}.get(status, [])


def describe(run: BackfillRun, now: datetime | None = None) -> str:
    """Return a run's status as an operator needs it: stalled when running with no heartbeat; who paused or cancelled."""
    if run.status == RUNNING and (now or timezone.now()) - run.heartbeat_at > STALLED_AFTER:
        return f"stalled (no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S})"
    if run.status == PAUSED:
        return f"paused by {run.paused_by} at {run.paused_at:%Y-%m-%d %H:%M:%S}"
    if run.status == CANCELLED:
        return f"cancelled by {run.cancelled_by}"
    return run.get_status_display()


@dataclass(frozen=True)
class ControlOutcome:
    """One run an operator's action changed."""

    backfill: str
    run_id: int
    status: str
    at: datetime


def refusal(*, run_id: int, backfill: str, status: str, current: int, action: str) -> str:
    """Return why the brake's ``action`` leaves run ``run_id`` alone: not the current run, or not in a state it acts on."""
    if run_id != current:
        return (f"run {run_id} of {backfill} is not its current run (run {current} is): the brake acts on the "
                f"current run only; nothing was {DONE[action]}")
    return f"nothing to {action}: run {run_id} of {backfill} is {status}; nothing was {DONE[action]}"


def _change(only: Sequence[str], *, from_statuses: tuple[str, ...], url: sa.URL | str | None,
            what: str, run_id: int | None = None, **values: object) -> list[ControlOutcome]:
    engine = database.create_engine(database.resolve_url(url))
    runs, batches = run_tables(engine.dialect.name)
    try:
        with engine.begin() as conn:
            # now() is the transaction's start: the same moment the UPDATE's now() records.
            now = conn.execute(sa.select(sa.func.now(type_=sa.DateTime(timezone=True)))).scalar_one()
            targets = sa.select(runs.c.id).where(runs.c.backfill.in_(list(only)), runs.c.status.in_(from_statuses))
            if run_id is not None:  # the admin's page of one run: that run, never whichever is current
                targets = targets.where(runs.c.id == run_id)
            if values.get("status") == CANCELLED:
                # Batches handed out and not yet taken: nobody is to take them now. Deleted before the
                # run's row is locked, the order a worker's batch transaction locks them in (no deadlock).
                conn.execute(sa.delete(batches).where(batches.c.run_id.in_(targets)))
            changed = conn.execute(
                sa.update(runs).where(runs.c.id.in_(targets))
                .values(**values)
                .returning(runs.c.backfill, runs.c.id, runs.c.status)).all()
            if not changed and run_id is not None:
                run = conn.execute(sa.select(runs.c.backfill, runs.c.status).where(runs.c.id == run_id)).first()
                if run is not None:
                    current = conn.execute(sa.select(sa.func.max(runs.c.id))
                                           .where(runs.c.backfill == run.backfill)).scalar_one()
                    raise NoRunToControl(refusal(run_id=run_id, backfill=run.backfill, status=run.status,
                                                 current=current, action=what))
    finally:
        engine.dispose()
    if not changed:
        states = " or ".join(from_statuses)
        raise NoRunToControl(f"nothing to {what}: no {states} run of {', '.join(only)}")
    return [ControlOutcome(row.backfill, row.id, row.status, now) for row in sorted(changed)]


def pause(*, by: str, only: Sequence[str] = BACKFILLS, run_id: int | None = None,
          url: sa.URL | str | None = None) -> list[ControlOutcome]:
    """running -> paused: the run's workers finish their batch and wait; ``resume`` lets them go on.

    ``run_id``: act on that run only, refused (``NoRunToControl``) unless it is the one running.
    """
    return _change(only, from_statuses=(RUNNING,), url=url, what="pause", run_id=run_id, status=PAUSED,
                   paused_by=by[:150], paused_at=sa.func.now())


def resume(*, only: Sequence[str] = BACKFILLS, run_id: int | None = None,
           url: sa.URL | str | None = None) -> list[ControlOutcome]:
    """paused -> running: waiting workers go on from the cursor (a new invocation may join them)."""
    return _change(only, from_statuses=(PAUSED,), url=url, what="resume", run_id=run_id, status=RUNNING,
                   heartbeat_at=sa.func.now())


def cancel(*, by: str, only: Sequence[str] = BACKFILLS, run_id: int | None = None,
           url: sa.URL | str | None = None) -> list[ControlOutcome]:
    """running or paused -> cancelled: workers stop at their next batch; a later run starts afresh."""
    return _change(only, from_statuses=(RUNNING, PAUSED), url=url, what="cancel", run_id=run_id, status=CANCELLED,
                   cancelled_by=by[:150], finished_at=sa.func.now())
