"""``calls/backfill/runs.py``: a run's status moves only as ``ALLOWED_MOVES`` says, each move by its method."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from calls import backfill
from calls.backfill import control, runs
from calls.models import BackfillStatus
from schema_engine import database
from tests.conftest import run_sql

# Every move, written out: (from, the method that makes it) -> to. Any other pair is refused.
LEGAL = {
    ("running", "pause"): "paused",
    ("running", "cancel"): "cancelled",
    ("running", "succeed"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "interrupt"): "interrupted",
    ("paused", "resume"): "running",
    ("paused", "cancel"): "cancelled",
}
METHODS = {
    "pause": lambda run: run.pause(by="ops"), "resume": lambda run: run.resume(),
    "cancel": lambda run: run.cancel(by="ops"), "succeed": lambda run: run.succeed(),
    "fail": lambda run: run.fail("disk full"), "interrupt": lambda run: run.interrupt("stopped by the operator"),
}


def test_each_move_is_made_by_its_method_and_every_other_is_refused(head_db: sa.URL) -> None:
    engine = database.create_engine(head_db)
    try:
        for status in BackfillStatus:
            for action, move in METHODS.items():
                run_sql(head_db, "DELETE FROM backfill_runs")
                run_sql(head_db, "INSERT INTO backfill_runs (backfill, status) VALUES ('messages', :s)", {"s": status})
                run_id = run_sql(head_db, "SELECT id FROM backfill_runs")[0][0]
                run = runs.Run.recorded(engine, run_id=run_id, backfill="messages")
                if (status, action) in LEGAL:
                    move(run)
                    assert run.status() == LEGAL[status, action], (status, action)
                else:
                    with pytest.raises(backfill.IllegalMove, match=f"cannot {action} run {run_id} of messages: "
                                                                   f"it is {status}"):
                        move(run)
                    assert run.status() == status, (status, action)  # nothing moved
    finally:
        engine.dispose()


def test_the_table_is_the_moves_written_out() -> None:
    assert {(source, target) for source, targets in runs.ALLOWED_MOVES.items() for target in targets} == {
        (source, target) for (source, _), target in LEGAL.items()}
    assert runs.COMPLETED == {status for status, targets in runs.ALLOWED_MOVES.items() if not targets}
    assert runs.ACTIVE == {status for status, targets in runs.ALLOWED_MOVES.items() if targets}
    assert runs.STOPPING == runs.ALLOWED_MOVES["running"] - {"succeeded", "failed", "interrupted"}
    # The brake offers what the table allows.
    assert {status: control.actions_for(status) for status in BackfillStatus} == {
        "running": ["pause", "cancel"], "paused": ["resume", "cancel"], "succeeded": [], "failed": [],
        "interrupted": [], "cancelled": []}


def test_a_run_with_batches_waiting_does_not_succeed_yet(head_db: sa.URL) -> None:
    engine = database.create_engine(head_db)
    try:
        run_sql(head_db, "INSERT INTO backfill_runs (backfill, status) VALUES ('messages', 'running')")
        run_sql(head_db, "INSERT INTO backfill_batches (run_id, backfill, lo, hi) VALUES (1, 'messages', 0, 10)")
        run = runs.Run.recorded(engine, run_id=1, backfill="messages")
        assert run.succeed() is False and run.status() == "running"
        run_sql(head_db, "DELETE FROM backfill_batches")
        assert run.succeed() is True and run.status() == "succeeded"
    finally:
        engine.dispose()


def test_only_a_running_run_is_joined(head_db: sa.URL) -> None:
    engine = database.create_engine(head_db)
    try:
        run_sql(head_db, "INSERT INTO backfill_runs (backfill, status) VALUES ('messages', 'failed')")
        (row,) = run_sql(head_db, "SELECT * FROM backfill_runs")
        with pytest.raises(backfill.IllegalMove, match="cannot join run 1 of messages: it is failed"):
            runs.Run(engine, backfill.backfill_named("messages"), backfill.BackfillOptions()).join(row)
    finally:
        engine.dispose()
