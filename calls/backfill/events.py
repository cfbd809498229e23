"""What a backfill reports while it goes: typed events on the engine's one progress channel.

``backfill_context`` sends them to the one ``schema_engine.progress.Reporter`` it is given and
never prints; ``manage.py backfill_context`` shows them (a bar on a terminal, lines otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass

from calls.backfill.options import BackfillResult
from schema_engine.progress import Event


@dataclass(frozen=True, kw_only=True)
class BackfillStarted(Event):
    """How a backfill started in this invocation: its run, and the workers and batches chosen."""

    backfill: str
    run_id: int | None
    joined: bool
    resumed_from: int | None
    workers: int
    workers_why: str  # "given", or what the choice rests on ("2 cores")
    batch_size: int | None  # None: sized to take target_seconds
    target_seconds: float
    fills: str = ""  # a declared fill's columns, for the operator (specs.ColumnFill.describes)


@dataclass(frozen=True, kw_only=True)
class BackfillProgress(Event):
    """Where a backfill stands, reported after each batch (and when its note changes)."""

    backfill: str
    scanned: int
    changed: int
    total: int | None
    note: str | None = None  # why it is slower or stopped, for the progress line ("paused by ...")


@dataclass(frozen=True, kw_only=True)
class BackfillSkipped(Event):
    """A declared fill has nothing to fill in this database (not expanded yet, contracted, or SQLite); no run."""

    backfill: str
    why: str
    named: bool  # the caller asked for it by name (else it was one of every backfill)


@dataclass(frozen=True, kw_only=True)
class BackfillFinished(Event):
    """A backfill ended in this invocation (a later one's failure does not hide it); what it did."""

    result: BackfillResult
