"""How many workers and how big a batch: chosen by the backfill, overridable; batches sized to the target duration."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from calls import backfill
from calls.backfill import pacing
from schema_engine import database
from tests.conftest import run_sql


@pytest.mark.parametrize(("cores", "free", "workers"), [
    (2, 90, 2),  # an idle server: one worker per core
    (64, 500, pacing.MAX_AUTO_WORKERS),
    (8, 11, 3),  # few free connections: at most half of them, less the reserve
    (4, 3, 1),  # none to spare: still one
])
def test_workers_follow_the_cores_and_the_free_connections(cores: int, free: int, workers: int) -> None:
    choice = pacing.worker_choice(cores, free)
    assert choice.workers == workers
    assert f"{cores} core" in choice.why and (("free connection" in choice.why) == (workers < min(cores, 8)))


def test_the_free_connections_are_read_from_the_server(pg_head_db: sa.URL) -> None:
    engine = database.create_engine(pg_head_db)
    try:
        with engine.connect() as conn:
            choice = pacing.choose_workers(conn)
    finally:
        engine.dispose()
    (limit,), = run_sql(pg_head_db, "SELECT current_setting('max_connections')::int")
    assert 1 <= choice.workers <= min(pacing.MAX_AUTO_WORKERS, limit // 2)


def test_batches_grow_to_the_target_duration_by_at_most_double() -> None:
    pace = pacing.Pace(None, target_seconds=0.2)
    assert pace.size == pacing.INITIAL_BATCH_SIZE
    sizes = []
    for _ in range(6):  # this database does 20,000 ids a second: 4,000 in 0.2 s
        pace.after_batch(pace.size, pace.size / 20_000)
        sizes.append(pace.size)
    assert sizes == [2000, 4000, 4000, 4000, 4000, 4000]


def test_slow_batches_shrink_by_at_most_half_down_to_the_floor() -> None:
    pace = pacing.Pace(None, target_seconds=0.2)
    sizes = []
    for _ in range(7):  # 100 ids a second: the database is struggling
        pace.after_batch(pace.size, pace.size / 100)
        sizes.append(pace.size)
    assert sizes == [500, 250, 125, 62, 50, 50, 50]
    assert pace.slow  # at the floor and still over twice the target: the worker waits too


def test_a_given_batch_size_is_kept_within_the_target_and_is_the_ceiling() -> None:
    pace = pacing.Pace(300, target_seconds=0.2)
    pace.after_batch(300, 0.01)
    assert pace.size == 300  # fast, but the operator's size
    pace.halve()
    assert pace.size == 150
    pace.after_batch(150, 0.01)
    pace.after_batch(300, 0.01)
    assert pace.size == 300  # grown back, not beyond
    pace.after_batch(300, 1.0)
    assert pace.size == 150  # over the target: smaller, even though given


def test_the_command_says_what_it_chose(django_database, pg_head_db: sa.URL) -> None:
    import io

    from django.core.management import call_command

    django_database(pg_head_db)
    out = io.StringIO()
    call_command("backfill_context", "--only", "messages", stdout=out)
    assert "messages: run 1, " in out.getvalue()
    assert " core" in out.getvalue() and "batches sized to take 0.2s" in out.getvalue()
    out = io.StringIO()
    call_command("backfill_context", "--only", "messages", "--workers", "1", "--batch-size", "70", stdout=out)
    assert "1 worker (given), batches of 70 ids" in out.getvalue()


def test_options_accept_none_as_chosen_and_refuse_out_of_range() -> None:
    assert backfill.BackfillOptions().workers is None and backfill.BackfillOptions().batch_size is None
    with pytest.raises(backfill.InvalidBackfillOption, match="--workers 0"):
        backfill.BackfillOptions(workers=0)
