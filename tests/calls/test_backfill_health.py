"""The health signals, each provoked for real on PostgreSQL, and the backfill seen reacting (and saying why).

Replica lag needs a streaming replica: ``tests/topology/test_backfill_replica_lag.py``.
"""
from __future__ import annotations

import threading
from typing import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from calls import backfill
from calls.backfill import health
from calls.backfill.pacing import Pace
from calls.backfill.throttle import AfterBatch, Throttle
from schema_engine.progress import Event
from tests.conftest import django_url, run_sql, wait_for


class Backfill(threading.Thread):
    """The messages backfill in a thread (one worker: its pace is this process's), with its progress notes."""

    def __init__(self, url: sa.URL, **options: object) -> None:
        super().__init__(daemon=True)
        self.url, self.options = url, backfill.BackfillOptions(workers=1, **options)
        self.notes: list[str] = []
        self.result: backfill.BackfillResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result, = backfill.backfill_context(url=self.url, only=("messages",), options=self.options,
                                                      reporter=self.note)
        except BaseException as exc:  # noqa: BLE001 - the test re-raises it
            self.error = exc

    def note(self, event: Event) -> None:
        if isinstance(event, backfill.BackfillProgress) and event.note:
            self.notes.append(event.note)

    def outcome(self) -> backfill.BackfillResult:
        self.join()
        if self.error:
            raise self.error
        assert self.result is not None
        return self.result


def recorded_batch_size(url: sa.URL) -> int:
    return run_sql(url, "SELECT batch_size FROM backfill_runs ORDER BY id DESC LIMIT 1")[0][0]


@pytest.mark.sample_calls(300)
def test_slow_batches_shrink_to_the_floor_and_the_line_says_why(seeded: sa.URL, settings) -> None:
    settings.BACKFILL_BATCH_SECONDS = 0.02
    # Every write of a batch takes at least 0.1 s: five times the target, whatever its size.
    run_sql(seeded, "CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_sleep(0.1); RETURN NULL; END $$")
    run_sql(seeded, "CREATE TRIGGER slow_write AFTER UPDATE ON conversation_history "
                    "FOR EACH STATEMENT EXECUTE FUNCTION slow_write()")
    run = Backfill(seeded)
    run.start()
    result = run.outcome()
    assert result.scanned == run_sql(seeded, "SELECT count(*) FROM conversation_history")[0][0]
    assert recorded_batch_size(seeded) == 50  # shrunk from 1,000 to the floor
    assert result.slowed.get("latency", 0) > 0
    assert any("against the 0.02s target" in note for note in run.notes), run.notes


@pytest.fixture
def held_batch(seeded: sa.URL, settings) -> Iterator[psycopg.Connection]:
    """A backfill batch that stops at the last message while this fixture's session holds advisory lock 42."""
    settings.BACKFILL_LOCK_TIMEOUT = "0"  # the batch waits for the test, however slow the machine
    (last,), = run_sql(seeded, "SELECT max(id) FROM conversation_history")
    run_sql(seeded, "CREATE FUNCTION held() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF NEW.id = {last} THEN PERFORM pg_advisory_lock(42); PERFORM pg_advisory_unlock(42); END IF; "
                    "RETURN NEW; END $$")
    run_sql(seeded, "CREATE TRIGGER held BEFORE UPDATE ON conversation_history FOR EACH ROW EXECUTE FUNCTION held()")
    with psycopg.connect(django_url(seeded), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(42)")
        yield holder


def test_sessions_waiting_on_its_locks_halve_its_batches(seeded: sa.URL, held_batch: psycopg.Connection) -> None:
    run = Backfill(seeded)
    run.start()
    wait_for(lambda: run_sql(seeded, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' "
                                     f"AND application_name = '{health.APPLICATION_NAME}' "
                                     "AND datname = current_database()")[0][0] == 1)
    # A live writer updates a message the held batch has already written: it waits on the backfill.
    with psycopg.connect(django_url(seeded), autocommit=True, application_name="voice-agent") as writer:
        writing = threading.Thread(target=writer.execute, args=(
            "UPDATE conversation_history SET content = content WHERE id = (SELECT min(id) FROM conversation_history)",))
        writing.start()
        wait_for(lambda: any("waited on the backfill's locks" in note for note in run.notes))
        held_batch.execute("SELECT pg_advisory_unlock(42)")
        writing.join()
    result = run.outcome()
    assert result.slowed.get("locks", 0) >= 1


def pin_a_page_to_freeze(pinning: psycopg.Connection) -> bool:
    """Pin the table's first heap page with a cursor, in a snapshot under which its rows are old enough to
    freeze; False (and rolled back) while some transaction older than those rows still runs.

    VACUUM (FREEZE) waits for a pinned page only when it has rows to freeze, that is rows written before
    every transaction still running, in any database of the server: one that began before the seeding
    (another test's, a CREATE DATABASE, anyone's on this shared server) leaves it nothing to freeze, and it
    finishes without waiting.
    """
    # A sequential scan, whatever the planner would choose: an index scan pins index pages, not the heap.
    pinning.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_indexonlyscan = off;"
                    " SET LOCAL enable_bitmapscan = off")
    cursor = pinning.cursor(name="pin")
    cursor.execute("SELECT id FROM conversation_history")
    cursor.fetchone()
    newest_row, oldest_running = pinning.execute(
        "SELECT (SELECT max(xmin::text::bigint) FROM conversation_history),"
        " pg_snapshot_xmin(pg_current_snapshot())::text::bigint % 4294967296").fetchone()
    if newest_row < oldest_running:
        return True
    pinning.rollback()
    return False


@pytest.mark.sample_calls(60)
def test_vacuum_on_its_table_halves_its_speed(seeded: sa.URL, quiet_server: None) -> None:
    with psycopg.connect(django_url(seeded)) as pinning:
        # VACUUM (FREEZE) waits for the pinned page, and shows in pg_stat_progress_vacuum all along, as a
        # long autovacuum does.
        try:
            wait_for(lambda: pin_a_page_to_freeze(pinning))
        except AssertionError:
            older = run_sql(seeded, "SELECT datname, application_name, state, left(query, 80) FROM pg_stat_activity"
                                    " WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()")
            raise AssertionError(f"transactions older than the seeded rows kept running: {older}") from None
        with psycopg.connect(django_url(seeded), autocommit=True) as vacuuming:
            vacuum = threading.Thread(target=vacuuming.execute, args=("VACUUM (FREEZE) conversation_history",))
            vacuum.start()
            wait_for(lambda: run_sql(seeded, "SELECT count(*) FROM pg_stat_progress_vacuum WHERE datname = "
                                             "current_database()")[0][0] == 1)
            run = Backfill(seeded, batch_size=20)
            run.start()
            result = run.outcome()
            pinning.rollback()
            vacuum.join()
    assert result.slowed.get("vacuum", 0) >= 1
    assert any("vacuum is running on conversation_history: half speed" in note for note in run.notes), run.notes


@pytest.mark.sample_calls(60)
def test_beside_live_traffic_half_the_workers_hold_and_the_run_still_ends(seeded: sa.URL) -> None:
    # A live session at work all along: an agent's query waiting on a lock this test holds.
    with psycopg.connect(django_url(seeded), autocommit=True) as holder, \
            psycopg.connect(django_url(seeded), autocommit=True, application_name="voice-agent") as agent:
        holder.execute("SELECT pg_advisory_lock(43)")
        waiting = threading.Thread(target=agent.execute, args=("SELECT pg_advisory_lock(43)",))
        waiting.start()
        wait_for(lambda: run_sql(seeded, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                         "'voice-agent' AND state = 'active'")[0][0] == 1)
        notes: list[str] = []
        result, = backfill.backfill_context(url=seeded, only=("messages",),
                                            options=backfill.BackfillOptions(workers=2, batch_size=30),
                                            reporter=lambda event: notes.extend(
                                                [event.note] if isinstance(event, backfill.BackfillProgress)
                                                and event.note else []))
        holder.execute("SELECT pg_advisory_unlock(43)")
        waiting.join()
    assert result.complete and result.scanned == run_sql(seeded, "SELECT count(*) FROM conversation_history")[0][0]
    assert any("live traffic: 1 of 2 workers" in note for note in notes), notes


def test_live_sessions_hold_half_the_workers_until_they_are_gone() -> None:
    signals = health.Signals()
    watch = health.HealthWatch("conversation_history", signals, max_replica_lag=10, workers=4)
    watch.judge(health.Reading(0, 0, 0.0, None, live_sessions=3))
    assert signals.workers_allowed.value == 2 and "live traffic: 2 of 4 workers" in watch.notes()
    watch.judge(health.Reading(0, 0, 0.0, None, live_sessions=0))
    assert signals.workers_allowed.value == 4
    alone = health.HealthWatch("conversation_history", health.Signals(), max_replica_lag=10, workers=1)
    alone.judge(health.Reading(0, 0, 0.0, None, live_sessions=3))
    assert alone.signals.workers_allowed.value == 1  # one worker always works


@pytest.mark.parametrize(("duty", "wait"), [(0.25, 0.6), (0.5, 0.2), (1.0, 0.0)],
                         ids=["a fill", "half the time", "the built-ins"])
def test_beside_live_traffic_a_fill_works_its_share_of_the_time(duty: float, wait: float) -> None:
    signals = health.Signals()
    watch = health.HealthWatch("calls", signals, max_replica_lag=10, workers=2)
    throttle = Throttle(pace=Pace(100, 0.2), signals=signals, rate=None, pause=0.0, duty_beside_traffic=duty)
    assert throttle.after_batch(scanned=100, span=100, seconds=0.2) == AfterBatch(wait=0.0, slowed_by=())
    watch.judge(health.Reading(0, 0, 0.0, None, live_sessions=1))
    beside = throttle.after_batch(scanned=100, span=100, seconds=0.2)
    assert beside.wait == pytest.approx(wait) and beside.slowed_by == (("live",) if duty < 1 else ())
    watch.judge(health.Reading(0, 0, 0.0, None, live_sessions=0))
    assert throttle.after_batch(scanned=100, span=100, seconds=0.2).wait == 0.0


def test_the_replay_clock_ages_what_a_stalled_replica_has_not_replayed() -> None:
    clock = health.ReplayClock()
    assert clock.lag(0.0, 100, [100]) == 0  # caught up
    assert clock.lag(1.0, 200, [100]) == 0  # the primary moved on just now
    assert clock.lag(3.0, 200, [100]) == 2.0  # position 200 is 2 s old and not replayed yet
    assert clock.lag(4.0, 300, [100]) == 3.0  # replay stalled: it keeps ageing
    assert clock.lag(5.0, 300, [250]) == 1.0  # 200 replayed; 300 is 1 s old
    assert clock.lag(6.0, 300, [300]) == 0
    assert clock.lag(7.0, 300, []) == 0  # no replica


def test_an_lsn_reads_as_a_number() -> None:
    assert health.lsn_number("0/16B3748") == 0x16B3748
    assert health.lsn_number("16/B374D848") == (0x16 << 32) + 0xB374D848
