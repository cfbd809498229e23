"""The operator's brake: pause, resume and cancel a backfill's run, from the command line or the admin.

Each is a move of the run's status (``runs.Run.pause``, ``resume``, ``cancel``, checked against
``runs.ALLOWED_MOVES``); every worker on every host sees it within one batch (``brake.py``).
Paused workers wait and continue when the run is resumed; on a cancel they stop, the run's
waiting batches are dropped, and a later run starts afresh where rows still need it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

import sqlalchemy as sa
from django.utils import timezone

from calls.backfill.errors import IllegalMove, NoRunToControl
from calls.backfill.runs import ALLOWED_MOVES, Run, moves_to, run_tables
from calls.backfill.specs import in_run_order
from calls.models import BackfillRun, BackfillStatus
from schema_engine import database

# Who may use the brake in the admin (BackfillRun's Meta.permissions); the command line is the host's.
PERMISSION = "calls.control_backfillrun"
ACTIONS = {"pause": "Pause", "resume": "Resume", "cancel": "Cancel"}
DONE = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}
# Where each action moves a run (runs.ALLOWED_MOVES says from where).
TARGETS = {"pause": BackfillStatus.PAUSED, "resume": BackfillStatus.RUNNING, "cancel": BackfillStatus.CANCELLED}
# A running run whose heartbeat is older than this shows as stalled (its workers died or hang);
# backfill_context's --stale-after (the same by default) decides when a new run takes it over.
STALLED_AFTER = timedelta(seconds=120)


def actions_for(status: str) -> list[str]:
    """Return the brake's actions that apply to a run in ``status``."""
    return [action for action, target in TARGETS.items() if target in ALLOWED_MOVES.get(status, ())]


def describe(run: BackfillRun, now: datetime | None = None) -> str:
    """Return a run's status as an operator needs it:
    stalled when running with no heartbeat; who paused or cancelled."""
    if run.status == BackfillStatus.RUNNING and (now or timezone.now()) - run.heartbeat_at > STALLED_AFTER:
        return f"stalled (no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S})"
    if run.status == BackfillStatus.PAUSED:
        return f"paused by {run.paused_by} at {run.paused_at:%Y-%m-%d %H:%M:%S}"
    if run.status == BackfillStatus.CANCELLED:
        return f"cancelled by {run.cancelled_by}"
    return run.get_status_display()


@dataclass(frozen=True, kw_only=True)
class ControlOutcome:
    """One run an operator's action changed."""

    backfill: str
    run_id: int
    status: str
    at: datetime


def refusal(*, run_id: int, backfill: str, status: str, current: int, action: str) -> str:
    """Return why the brake's ``action`` leaves run ``run_id`` alone:
    not the current run, or not in a state it acts on."""
    if run_id != current:
        return (f"run {run_id} of {backfill} is not its current run (run {current} is): the brake acts on the "
                f"current run only; nothing was {DONE[action]}")
    return f"nothing to {action}: run {run_id} of {backfill} is {status}; nothing was {DONE[action]}"


def pause(*, by: str, only: Sequence[str] | None = None, run_id: int | None = None,
          url: sa.URL | str | None = None) -> list[ControlOutcome]:
    """running -> paused: the run's workers finish their batch and wait; ``resume`` lets them go on.

    ``run_id``: act on that run only, refused (``NoRunToControl``) unless it is the one running.
    """
    return _brake("pause", only=only, run_id=run_id, url=url, by=by)


def resume(*, only: Sequence[str] | None = None, run_id: int | None = None,
           url: sa.URL | str | None = None) -> list[ControlOutcome]:
    """paused -> running: waiting workers go on from the cursor (a new invocation may join them)."""
    return _brake("resume", only=only, run_id=run_id, url=url)


def cancel(*, by: str, only: Sequence[str] | None = None, run_id: int | None = None,
           url: sa.URL | str | None = None) -> list[ControlOutcome]:
    """running or paused -> cancelled: workers stop at their next batch; a later run starts afresh."""
    return _brake("cancel", only=only, run_id=run_id, url=url, by=by)


def _brake(action: str, *, only: Sequence[str] | None, run_id: int | None, url: sa.URL | str | None,
           by: str = "") -> list[ControlOutcome]:
    """Make ``action``'s move on the runs of ``only`` (default: every backfill; a fill's name: each of its tables'
    runs) that may make it (or on run ``run_id``, refused if it may not)."""
    only = in_run_order(only)
    engine = database.create_engine(database.resolve_url(url))
    runs, _ = run_tables(engine.dialect.name)
    outcomes = []
    try:
        targets = sa.select(runs.c.id, runs.c.backfill).where(runs.c.backfill.in_(only)).order_by(runs.c.id)
        # The admin's page of one run: that run, never whichever is current.
        targets = targets.where(runs.c.id == run_id) if run_id is not None else targets.where(
            runs.c.status.in_(moves_to(TARGETS[action])))
        with engine.connect() as conn:
            found = conn.execute(targets).all()
        for row in found:
            run = Run.recorded(engine, run_id=row.id, backfill=row.backfill)
            try:
                at = run.resume() if action == "resume" else getattr(run, action)(by=by)
            except IllegalMove as refused:
                if run_id is None:
                    continue  # it moved since it was found (its workers ended it): nothing to do to it
                raise NoRunToControl(refusal(run_id=run_id, backfill=row.backfill, status=refused.status or "gone",
                                             current=_current(engine, row.backfill), action=action)) from None
            outcomes.append(ControlOutcome(backfill=row.backfill, run_id=row.id, status=TARGETS[action].value, at=at))
    finally:
        engine.dispose()
    if not outcomes:
        states = " or ".join(moves_to(TARGETS[action]))
        raise NoRunToControl(f"nothing to {action}: no {states} run of {', '.join(only)}")
    return sorted(outcomes, key=lambda outcome: (outcome.backfill, outcome.run_id))


def _current(engine: sa.Engine, backfill: str) -> int:
    """Return the id of ``backfill``'s latest run: the one the brake acts on."""
    runs, _ = run_tables(engine.dialect.name)
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.max(runs.c.id)).where(runs.c.backfill == backfill)).scalar_one()
