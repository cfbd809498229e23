"""The operator's brake as the workers meet it: pause or cancel within one batch.

``control.py`` moves the run's status; a worker sees the move as its batch commits
(``runs.Run.process_batch`` returns the status) or at its next claim (``runs.RunStopped``), and
follows it here: it waits while the run is paused, polling its status, and stops once it is
cancelled. The invoking process polls it too, to say on the progress line why nothing moves.
"""
from __future__ import annotations

import multiprocessing.synchronize
from typing import Callable

import sqlalchemy as sa

from calls.backfill.runs import Run
from calls.models import BackfillStatus

# How often a paused worker, and the invoking process, look whether the run was resumed or cancelled.
BRAKE_POLL_SECONDS = 1.0


def obey(run: Run, status: str, *, stop: multiprocessing.synchronize.Event, orphaned: Callable[[], bool]) -> bool:
    """Follow the brake from ``status``: wait while the run is paused; return whether to go on (not once cancelled).

    ``stop`` is set when the worker is to stop: cancelled, ended otherwise, or ``orphaned`` (its invoking process died).
    """
    while status == BackfillStatus.PAUSED and not stop.is_set():
        stop.wait(BRAKE_POLL_SECONDS)
        if orphaned():
            break
        status = run.status()
    if status != BackfillStatus.RUNNING or orphaned():
        stop.set()
    return not stop.is_set()


def note(state: sa.Row) -> str | None:
    """Return the progress line's note for the run's brake (``Run.control_state``): who paused it, how to resume."""
    if state.status != BackfillStatus.PAUSED:
        return None
    return (f"paused by {state.paused_by} at {state.paused_at:%Y-%m-%d %H:%M:%S}; waiting: resume with "
            "'manage.py backfill_context --resume' or the admin")
