"""The backfill's replica-lag signal against a real streaming replica whose replay is paused, then resumed."""
from __future__ import annotations

import threading

import sqlalchemy as sa

from calls import backfill
from calls.sample_data import generate_sample_data
from schema_engine import commands, database
from tests.conftest import wait_for
from tests.topology.conftest import Replay, Topology

BATCH = 20


def test_the_workers_hold_while_the_replica_lags_and_go_on_once_it_replays(
        topology_db: Topology, replay: Replay, settings) -> None:
    settings.BACKFILL_MAX_REPLICA_LAG = 0.5
    primary = topology_db.primary
    commands.upgrade(revision="head", url=primary)
    with database.connect(primary) as conn:
        generate_sample_data(connection=conn, calls=40, seed=3)
    replay.pause()
    # The replica reports its lag as WAL reaches it: a transaction at each look, until it is over the limit.
    wait_for(lambda: (_scalar(primary, "SELECT txid_current(), (SELECT EXTRACT(epoch FROM max(replay_lag)) "
                                       "FROM pg_stat_replication)", column=1) or 0) > 0.5)
    progress: list[backfill.BackfillProgress] = []
    results: list[backfill.BackfillResult] = []
    run = threading.Thread(target=lambda: results.extend(backfill.backfill_context(
        url=primary, only=("messages",), options=backfill.BackfillOptions(workers=1, batch_size=BATCH),
        on_progress=progress.append)), daemon=True)
    run.start()
    wait_for(lambda: any((p.note or "").startswith("waiting: replica ") for p in progress) or not run.is_alive())
    assert run.is_alive(), "the backfill ended without holding for the paused replica"
    replay.resume()
    run.join()
    result, = results
    held = [p.scanned for p in progress if (p.note or "").startswith("waiting: replica ")]
    assert held and max(held) == 0  # held from the first batch: the replica was already too far behind
    assert result.held_seconds > 0 and result.worst_replica_lag > 0.5
    assert result.complete and result.scanned == _count(primary)


def _count(url: sa.URL) -> int:
    return _scalar(url, "SELECT count(*) FROM conversation_history WHERE token_count IS NOT NULL")


def _scalar(url: sa.URL, sql: str, column: int = 0) -> object:
    """One value of a query's single row, in a transaction of its own that commits."""
    engine = database.create_engine(url)
    try:
        with engine.begin() as conn:
            return conn.execute(sa.text(sql)).one()[column]
    finally:
        engine.dispose()
