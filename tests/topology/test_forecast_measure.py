"""The forecast end to end on the topology's primary: a copy with data, the bench writers on it, the pending revisions
applied there one by one and measured, a declared backfill sampled, and the copy gone afterwards.

The database is at 005 with a little sample data; pending: the real 006 (columns added: a lock too
short to see), a scratch 007 that builds a plain index on conversation_history (ShareLock: the
writers' inserts wait) and holds it a moment, as a build on a large table would, and a scratch 008
that needs the messages backfill finished (refused on the copy, as the deploy would be; its
backfill is sampled there).
"""
from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from calls.sample_data import generate_sample_data
from calls.workload import Writer, Writers
from schema_engine import commands, database
from schema_engine.errors import Interrupted
from schema_engine.forecast import verdict
from schema_engine.forecast.clone import FollowerReady
from schema_engine.forecast.result import Forecast
from schema_engine.forecast.run import BackfillSampled, RevisionMeasured, WarmedUp, forecast
from schema_engine.forecast.sampler import LockSampler
from schema_engine.progress import Event
from tests.conftest import django_url, wait_for
from tests.topology.conftest import Topology
from tests.topology.test_forecast_base import captured_while

BLOCKING = '''"""A plain index build on conversation_history, held a moment as on a large table.

Revision ID: 007_blocking_index
Revises: 006_backfill_controls
"""
from alembic import op

revision = "007_blocking_index"
down_revision = "006_backfill_controls"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX forecast_blocking ON conversation_history (role, turn_index)")
    op.execute("SELECT pg_sleep(1)")


def downgrade() -> None:
    op.execute("DROP INDEX forecast_blocking")
'''

NEEDS_BACKFILL = '''"""Needs the messages backfill finished.

Revision ID: 008_needs_messages
Revises: 007_blocking_index
"""
revision = "008_needs_messages"
down_revision = "007_blocking_index"
branch_labels = None
depends_on = None
requires_backfills = ("messages",)


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
'''


@pytest.fixture
def at_005_with_data(topology_db: Topology, scratch_migrations: Path) -> Topology:
    versions = scratch_migrations / "versions"
    (versions / "007_blocking_index.py").write_text(BLOCKING)
    (versions / "008_needs_messages.py").write_text(NEEDS_BACKFILL)
    commands.upgrade(revision="005_backfill_runs", url=topology_db.primary)
    with database.connect(topology_db.primary) as conn:
        generate_sample_data(connection=conn, calls=20, seed=26)
    return topology_db


def test_a_forecast_measures_each_pending_revision_under_the_writers_and_removes_its_copy(
        at_005_with_data: Topology, forecast_root: Path) -> None:
    events: list[Event] = []
    result = forecast(url=at_005_with_data.primary, reporter=events.append, sample_batches=3, root=forecast_root,
                      warmup_transactions=100)

    assert isinstance(result, Forecast)
    assert result.copy_bytes > 0 and result.copy_seconds > 0
    assert "(default)" in result.workload and "password" not in result.database
    by_id = {rev.revision: rev for rev in result.revisions}
    assert list(by_id) == ["006_backfill_controls", "007_blocking_index", "008_needs_messages"]

    added = by_id["006_backfill_controls"]
    assert not added.error and added.seconds > 0 and added.wal_bytes > 0 and added.rewritten == ()
    assert added.size_change >= 0

    blocking = by_id["007_blocking_index"]
    assert not blocking.error, blocking.error
    assert blocking.seconds >= 1 and blocking.started > added.started
    held = {(lock.mode, lock.relation) for lock in blocking.locks}
    assert ("ShareLock", "conversation_history") in held, held
    assert blocking.waiting_statements > 0 and blocking.longest_wait > 0.5
    assert blocking.wal_bytes > 0 and blocking.size_change > 0  # the new index
    assert blocking.p50_before is not None and blocking.p99_before >= blocking.p50_before
    # The topology's primary has a replica: one followed the copy (how far behind: the held-back test below).
    assert blocking.replica_lag is not None

    refused = by_id["008_needs_messages"]
    assert "messages backfill" in refused.error

    fill, = result.backfills
    # Stopped by the brake after 3 batches: each worker the engine chose finishes the batch it has.
    assert fill.name == "messages" and fill.rows > 0 and fill.batches >= 3 and fill.rows_pending > 0
    assert fill.projected_seconds > 0

    # The writers' statements, timed; those that ended while the index was held waited for it.
    assert result.samples and all(sample.at >= 0 for sample in result.samples)
    during = [s.seconds for s in result.samples if blocking.started < s.at <= blocking.started + blocking.seconds + 1]
    assert max(during) > 0.5

    assert [type(e) for e in events if isinstance(e, (WarmedUp, RevisionMeasured, BackfillSampled))] == [
        WarmedUp, BackfillSampled, RevisionMeasured, RevisionMeasured, RevisionMeasured]
    assert list(forecast_root.iterdir()) == []  # the copy is gone


def test_ctrl_c_while_a_revision_applies_stops_the_traffic_and_removes_the_copy(
        at_005_with_data: Topology, forecast_root: Path) -> None:
    def interrupt(event: Event) -> None:
        if isinstance(event, commands.RevisionStarted) and event.revision == "007_blocking_index":
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="007_blocking_index rolled back"):
        forecast(url=at_005_with_data.primary, reporter=interrupt, root=forecast_root, warmup_transactions=10)

    assert list(forecast_root.iterdir()) == []
    assert not [thread for thread in threading.enumerate()
                if isinstance(thread, (Writer, LockSampler)) and thread.is_alive()]


def test_under_a_capture_the_latencies_come_from_the_copy_s_log(
        topology_db: Topology, forecast_root: Path, tmp_path: Path) -> None:
    primary = topology_db.primary
    commands.upgrade(revision="005_backfill_runs", url=primary)
    with database.connect(primary) as conn:
        generate_sample_data(connection=conn, calls=5, seed=27)

    def write() -> None:  # the bench writers on the primary, for a window of a few hundred statements
        writers = Writers(django_url(primary))
        wait_for(lambda: sum(len(writer.samples) for writer in writers.writers) >= 400)
        writers.stop()

    taken = captured_while(write, primary, tmp_path / "window.log", root=forecast_root,
                           databases=[primary.database])
    result = forecast(url=primary, capture=taken.path, root=forecast_root, warmup_transactions=20)

    assert result.workload.startswith(f"capture {taken.path} ({taken.statements:,} statements")
    rev, = result.revisions
    assert rev.revision == "006_backfill_controls" and not rev.error
    # The replayed statements as the copy timed them: none of the forecast's own sessions among them.
    assert len(result.samples) >= 20 and all(sample.at >= 0 and sample.seconds >= 0 for sample in result.samples)
    assert rev.p50_before is not None
    assert list(forecast_root.iterdir()) == []


def test_a_replica_held_back_by_a_revision_shows_as_its_lag_and_passes_the_limit(
        at_005_with_data: Topology, forecast_root: Path) -> None:
    followers: list[FollowerReady] = []
    paused: list[psycopg.Connection] = []

    def hold_the_replica(event: Event) -> None:  # as a replica busy replaying 007's big write would be
        if isinstance(event, FollowerReady):
            followers.append(event)
        elif isinstance(event, commands.RevisionStarted) and event.revision == "007_blocking_index":
            paused.append(psycopg.connect(host=followers[0].socket_folder, port=followers[0].port, dbname="postgres",
                                          user="postgres", autocommit=True))
            paused[0].execute("SELECT pg_wal_replay_pause()")
        elif isinstance(event, commands.WaitingForReplicas) and paused:  # the upgrade waits for it: let it replay
            paused.pop().execute("SELECT pg_wal_replay_resume()")

    result = forecast(url=at_005_with_data.primary, reporter=hold_the_replica, sample_batches=1,
                      root=forecast_root, warmup_transactions=10, replica=True)

    by_id = {rev.revision: rev for rev in result.revisions}
    # Held for the whole revision, its pg_sleep(1) within (less a sample interval: the lag is a lower bound).
    assert by_id["007_blocking_index"].replica_lag >= 0.9
    assert by_id["006_backfill_controls"].replica_lag < by_id["007_blocking_index"].replica_lag
    problems = verdict.problems(result, verdict.Limits(writer_wait=3600, duration=3600, replica_lag=0.5))
    assert any("007_blocking_index put the replica" in problem for problem in problems), problems
    assert list(forecast_root.iterdir()) == []


def test_no_replica_is_started_when_asked_not_to(at_005_with_data: Topology, forecast_root: Path) -> None:
    events: list[Event] = []
    result = forecast(url=at_005_with_data.primary, reporter=events.append, sample_batches=1, root=forecast_root,
                      warmup_transactions=10, replica=False)
    assert all(rev.replica_lag is None for rev in result.revisions)
    assert not [event for event in events if isinstance(event, FollowerReady)]
