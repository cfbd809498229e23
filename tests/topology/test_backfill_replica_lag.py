"""The backfill's replica-lag signal against a real streaming replica whose replay is paused, then resumed."""
from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from calls import backfill
from calls.sample_data import generate_sample_data
from schema_engine import commands, database, errors, replicas
from tests.conftest import django_url, wait_for
from tests.topology.conftest import Replay, Topology

BATCH = 20
# DATABASE_REPLICA_URL is a DATABASES entry: these tests set it as the settings would.
REPLICA_URL_SETTING = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES:UserWarning")


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
        reporter=lambda event: progress.extend([event] if isinstance(event, backfill.BackfillProgress) else []))),
        daemon=True)
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


def _with_replica_url(settings, topology: Topology) -> None:
    """DATABASE_REPLICA_URL, as the settings make it from the environment."""
    replica = database.database_config(django_url(topology.replica), sqlite_path=Path("unused"))
    settings.DATABASES = {**settings.DATABASES, "replica": replica}


def _seeded_as_the_role(settings, topology: Topology) -> None:
    _with_replica_url(settings, topology)
    commands.upgrade(revision="head", url=topology.primary)
    with database.connect(topology.primary) as conn:
        generate_sample_data(connection=conn, calls=20, seed=5)


@REPLICA_URL_SETTING
def test_without_pg_monitor_the_workers_hold_on_the_replicas_own_replay(
        unprivileged_db: Topology, replay: Replay, settings) -> None:
    settings.BACKFILL_MAX_REPLICA_LAG = 0.5
    _seeded_as_the_role(settings, unprivileged_db)
    replay.pause()
    with psycopg.connect(django_url(unprivileged_db.primary), autocommit=True) as primary:
        wait_for(lambda: primary.execute("SELECT txid_current()")
                 and _scalar(unprivileged_db.replica, replicas.OWN_LAG_SQL, column=1) > 0.5)
    progress: list[backfill.BackfillProgress] = []
    results: list[backfill.BackfillResult] = []
    run = threading.Thread(target=lambda: results.extend(backfill.backfill_context(
        url=unprivileged_db.primary, only=("messages",), options=backfill.BackfillOptions(workers=1, batch_size=BATCH),
        reporter=lambda event: progress.extend([event] if isinstance(event, backfill.BackfillProgress) else []))),
        daemon=True)
    run.start()
    wait_for(lambda: any((p.note or "").startswith("waiting: replica 127.0.0.1:") for p in progress)
             or not run.is_alive())
    assert run.is_alive(), "the backfill ended without holding for the paused replica"
    replay.resume()
    run.join(timeout=300)
    assert not run.is_alive(), "the workers held on after the replica replayed"
    result, = results
    assert result.complete and result.scanned == _count(unprivileged_db.primary)


@REPLICA_URL_SETTING
def test_without_pg_monitor_nor_a_replica_url_the_backfill_refuses_naming_the_grant(
        unprivileged_db: Topology, settings) -> None:
    settings.BACKFILL_MAX_REPLICA_LAG = 0.5
    _seeded_as_the_role(settings, unprivileged_db)
    settings.DATABASES = {alias: config for alias, config in settings.DATABASES.items() if alias != "replica"}
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            backfill.backfill_context(url=unprivileged_db.primary, only=("messages",))
        except errors.ReplicasUnreadable as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the backfill held for a replica it cannot read"
    refused, = outcome
    assert f"GRANT pg_monitor TO {unprivileged_db.primary.username}" in str(refused)
    assert "BACKFILL_MAX_REPLICA_LAG=0" in str(refused)
    assert _scalar(unprivileged_db.primary, "SELECT count(*) FROM backfill_runs") == 0
