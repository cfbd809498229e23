"""What can stop a backfill: one root, ``BackfillError``, whose message is one line that says what to do."""
from __future__ import annotations


class BackfillError(Exception):
    """A backfill cannot go on; the message is one line that says what to do."""


class SchemaNotReady(BackfillError):
    """The schema lacks what the backfill fills or records."""


class BackfillAlreadyRunning(BackfillError):
    """A run of this backfill with other options is under way."""


class BackfillFailed(BackfillError):
    """A batch failed; the run is recorded as failed and can be resumed."""


class RowFailed(BackfillFailed):
    """One row failed every try, alone in its batch; the run fails naming it, resumable after the fix."""


class BackfillInterrupted(BackfillError):
    """Stopped by the operator; the run is recorded as interrupted and can be resumed."""


class InvalidBackfillOption(BackfillError):
    """An option is out of its range; nothing ran."""


class BackfillCancelled(BackfillError):
    """An operator cancelled the run (``--cancel`` or the admin); a later run starts afresh."""


class NoRunToControl(BackfillError):
    """``--pause``, ``--resume`` or ``--cancel`` found no run in the state it acts on."""


class UnknownBackfill(BackfillError):
    """A name no backfill answers to (``specs.backfill_named``); nothing ran."""


class InvalidFill(BackfillError):
    """An expand revision declares a fill the backfill cannot run (a name too long for its runs, an odd identifier)."""


class IllegalMove(BackfillError):
    """A run's status may not move where asked (``runs.ALLOWED_MOVES``):
    it was not, or is no longer, where the move starts."""

    def __init__(self, *, run_id: int | None, backfill: str, action: str, status: str | None) -> None:
        super().__init__(f"cannot {action} run {run_id} of {backfill}: it is {status or 'gone'}")
        self.run_id, self.backfill, self.action, self.status = run_id, backfill, action, status
