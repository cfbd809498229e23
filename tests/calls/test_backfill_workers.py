"""``calls/backfill/workers.py``: a batch that hits a lock or statement timeout, or a deadlock,
is halved and retried."""
from __future__ import annotations

import math

import pytest
import sqlalchemy as sa

from calls import backfill
from schema_engine import database
from tests.conftest import run_sql

pytestmark = [pytest.mark.postgres, pytest.mark.sample_calls(12)]
BATCH = 64


def test_a_batch_behind_a_row_lock_is_halved_until_only_that_row_waits(seeded: sa.URL, settings) -> None:
    settings.BACKFILL_LOCK_TIMEOUT = "100ms"
    ids = [row[0] for row in run_sql(seeded, "SELECT id FROM conversation_history ORDER BY id")]
    locked = ids[len(ids) // 2]
    engine = database.create_engine(seeded)
    holder = engine.connect()
    holder.execute(sa.text("SELECT 1 FROM conversation_history WHERE id = :id FOR UPDATE"), {"id": locked})
    try:
        with pytest.raises(backfill.BackfillFailed,
                           match=rf"row {locked} of conversation_history failed 3 times: .*lock timeout"):
            backfill.backfill_context(url=seeded, only=("messages",),
                                      options=backfill.BackfillOptions(batch_size=BATCH))
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    ((status, error, splits),) = run_sql(seeded, "SELECT status, error, batch_splits FROM backfill_runs")
    assert status == "failed" and f"row {locked}" in error
    assert splits >= math.log2(BATCH)  # halved down to the one row
    assert run_sql(seeded, "SELECT token_count FROM conversation_history WHERE id = :id", {"id": locked}) == [(None,)]
    assert run_sql(seeded, "SELECT count(*) FROM conversation_history WHERE id < :id AND token_count IS NULL",
                   {"id": locked})[0][0] == 0  # every row before it was written, in smaller batches

    # Resumable after the fix (here: the lock is gone).
    backfill.backfill_context(url=seeded, only=("messages",), options=backfill.BackfillOptions(batch_size=BATCH))
    assert run_sql(seeded, "SELECT count(*) FROM conversation_history WHERE token_count IS NULL")[0][0] == 0
    assert run_sql(seeded, "SELECT count(*) FROM backfill_batches")[0][0] == 0


def test_other_errors_are_not_retried(seeded: sa.URL) -> None:
    run_sql(seeded, "ALTER TABLE conversation_history ADD CONSTRAINT ck_small CHECK (token_count < 3) NOT VALID")
    with pytest.raises(backfill.BackfillFailed, match="ck_small"):
        backfill.backfill_context(url=seeded, only=("messages",), options=backfill.BackfillOptions(batch_size=BATCH))
    assert run_sql(seeded, "SELECT batch_splits FROM backfill_runs") == [(0,)]
