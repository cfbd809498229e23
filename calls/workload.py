"""The agents' writes as a workload: the benchmarks' writers, and the forecast's default traffic without a capture.

Each writer is a thread with a connection of its own that, every ``interval`` seconds, inserts a
call, inserts two messages for it, marks a random call completed and sets a random message's
token count: each statement its own transaction, as the agents' requests are. It keeps each
statement's (end, seconds) and the errors it met. ``bench/writer_stall.py`` and
``bench/backfill_under_load.py`` measure with these writers; the schema engine's forecast runs them
against its copy when there is no capture (``register`` in ``CallsConfig.ready``), and
``apply_beside`` applies revisions to the real database beside them, timed as the forecast times
them on its copy, to hold a forecast against what happened (``bench/forecast_honesty.py``).
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import psycopg
import sqlalchemy as sa

from schema_engine import commands
from schema_engine.errors import first_line
from schema_engine.forecast import replay
from schema_engine.progress import Event

INSERT_CALL = (
    "INSERT INTO calls (contact_id, phone_number, direction, status, tier, created_at, updated_at, escalation_count, "
    "total_cost, context_pruned, pruning_count) VALUES (%s, '+15550100000', 'outbound', 'in_progress', 'tier1', now(), "
    "now(), 0, 0, false, 0) RETURNING id")
INSERT_MESSAGES = (
    "INSERT INTO conversation_history (call_id, role, content, turn_index, created_at) "
    "VALUES (%s, 'assistant', 'Hi, this is Ava from the agency.', 0, now()), "
    "(%s, 'user', 'Yes, I am still looking.', 1, now())")
COMPLETE_CALL = "UPDATE calls SET status = 'completed', updated_at = now() WHERE id = %s"
COUNT_TOKENS = "UPDATE conversation_history SET token_count = %s WHERE id = %s"
DEFAULT_WRITERS = 4
DEFAULT_INTERVAL = 0.005  # seconds between a writer's rounds


@dataclass(eq=False)  # a Thread must stay hashable
class Writer(threading.Thread):
    """One agent writing until ``stop`` is set; updates pick ids up to the largest there were when it started."""

    dsn: str
    interval: float
    max_call_id: int | None
    max_message_id: int | None
    stop: threading.Event
    samples: list[tuple[float, float]] = field(default_factory=list)  # (finished at, seconds), perf_counter
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True)

    def timed(self, conn: psycopg.Connection, sql: str, params: tuple) -> psycopg.Cursor:
        started = time.perf_counter()
        cursor = conn.execute(sql, params)
        finished = time.perf_counter()
        self.samples.append((finished, finished - started))
        return cursor

    def run(self) -> None:
        rng = random.Random(threading.get_ident())
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            contact_id = conn.execute("SELECT min(id) FROM contacts").fetchone()[0]
            while not self.stop.is_set():
                try:
                    call_id = self.timed(conn, INSERT_CALL, (contact_id,)).fetchone()[0]
                    self.timed(conn, INSERT_MESSAGES, (call_id, call_id))
                    if self.max_call_id:
                        self.timed(conn, COMPLETE_CALL, (rng.randint(1, self.max_call_id),))
                    if self.max_message_id:
                        self.timed(conn, COUNT_TOKENS, (rng.randint(1, 200), rng.randint(1, self.max_message_id)))
                except psycopg.Error as exc:  # counted, not hidden: a failed write is worse than a slow one
                    self.errors.append(first_line(exc))
                time.sleep(self.interval)


def largest_ids(dsn: str) -> tuple[int | None, int | None]:
    """The largest call and message ids now: the rows the writers' updates pick from."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return (conn.execute("SELECT max(id) FROM calls").fetchone()[0],
                conn.execute("SELECT max(id) FROM conversation_history").fetchone()[0])


class Writers:
    """``count`` writers against one database, as the forecast's default workload (``replay.Workload``)."""

    def __init__(self, dsn: str, *, count: int = DEFAULT_WRITERS, interval: float = DEFAULT_INTERVAL) -> None:
        self.description = (f"the bench writers: {count} connections, each every {interval * 1000:g} ms inserting a "
                            "call and two messages, completing a random call and counting a random message's tokens")
        max_call_id, max_message_id = largest_ids(dsn)
        self._stop = threading.Event()
        self.writers = [Writer(dsn, interval, max_call_id, max_message_id, self._stop) for _ in range(count)]
        self.started = time.monotonic()
        self._clock_offset = time.monotonic() - time.perf_counter()
        self._result: replay.WorkloadResult | None = None
        for writer in self.writers:
            writer.start()

    def finished(self) -> bool:
        return False  # they write until stopped

    def stop(self) -> replay.WorkloadResult:
        if self._result is None:
            self._stop.set()
            for writer in self.writers:
                writer.join()
            errors = [error for writer in self.writers for error in writer.errors]
            latencies = sorted((at + self._clock_offset, seconds) for writer in self.writers
                               for at, seconds in writer.samples)
            self._result = replay.WorkloadResult(
                description=self.description, seconds=time.monotonic() - self.started, complete=False,
                statements=len(latencies), failed=len(errors), errors=tuple(dict.fromkeys(errors))[:5],
                latencies=tuple(latencies))
        return self._result


def start_writers(url: sa.URL) -> Writers:
    """Start the default writers against ``url`` (the forecast's copy)."""
    return Writers(url.set(drivername="postgresql").render_as_string(hide_password=False))


@dataclass(frozen=True, kw_only=True)
class AppliedBeside:
    """A revision applied to the real database beside the writers: what happened, in the forecast's terms."""

    revision: str
    seconds: float  # from its start to the upgrade's return (its replicas' replay included), as a forecast's
    longest_wait: float  # the longest writer statement that ran while it did


def apply_beside(writers: Writers, url: sa.URL, revisions: Sequence[str], *, settle_seconds: float = 60.0
                 ) -> tuple[AppliedBeside, ...]:
    """Upgrade ``url`` to each of ``revisions`` in turn while ``writers`` write to it; time each and its writers.

    After each revision, waits until every writer has finished a statement begun after it (the ones
    it held back have ended and been timed), at most ``settle_seconds``.
    """
    applied = []
    for revision in revisions:
        started = [time.perf_counter()]

        def heard(event: Event, revision: str = revision, started: list[float] = started) -> None:
            if isinstance(event, commands.RevisionStarted) and event.revision == revision:
                started[0] = time.perf_counter()  # the revision itself, after the guards' checks, as measure.py

        commands.upgrade(revision=revision, url=url, reporter=heard)
        ended = time.perf_counter()
        deadline = ended + settle_seconds
        while not all(_began_after(writer, ended) for writer in writers.writers if writer.is_alive()):
            if time.perf_counter() > deadline:
                break
            time.sleep(0.01)
        longest = max((seconds for writer in writers.writers for at, seconds in list(writer.samples)
                       if at > started[0] and at - seconds < ended), default=0.0)
        applied.append(AppliedBeside(revision=revision, seconds=ended - started[0], longest_wait=longest))
    return tuple(applied)


def _began_after(writer: Writer, moment: float) -> bool:
    samples = list(writer.samples)
    return bool(samples) and samples[-1][0] - samples[-1][1] > moment


def within(forecast: float, real: float, *, factor: float = 2.0, slack: float = 0.25) -> bool:
    """Whether a forecast figure is within ``factor`` of the real one, or ``slack`` seconds of it.

    The slack is for figures too short for a factor to mean anything (a lock wait of a few ms, a
    revision that takes 0.1 s): the lock sampler's interval and a connection's start are of that order.
    """
    return abs(forecast - real) <= slack or max(forecast, real) <= factor * min(forecast, real)
