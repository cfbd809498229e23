"""A forecast held against what happened: the same revisions applied to the original beside the same writers.

The database is at 003 with a little sample data; pending: the real 004 (indexes built
CONCURRENTLY) to head, and a scratch revision after head that rewrites conversation_history
(``ALTER COLUMN ... TYPE``: an AccessExclusiveLock) and holds it a moment, as the rewrite of a
large table would. A window of the bench writers on the primary is captured and replayed on the
copy while the forecast runs; then the writers run on the original while the same revisions apply
there. ``bench/forecast_honesty.py`` does the same on about 3M messages (docs/benchmarks.md).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from calls.sample_data import generate_sample_data
from calls.workload import Writers, apply_beside, within
from schema_engine import commands, config, database
from schema_engine.forecast import verdict
from schema_engine.forecast.run import forecast
from tests.conftest import django_url, wait_for
from tests.topology.conftest import Topology
from tests.topology.test_forecast_base import captured_while

INDEXES = "004_performance_indexes"
REWRITE = "900_rewrite_messages"
REWRITE_SOURCE = '''"""Rewrites conversation_history: turn_index becomes bigint (an AccessExclusiveLock), held a moment.

Revision ID: 900_rewrite_messages
Revises: {head}
"""
from alembic import op

revision = "900_rewrite_messages"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE conversation_history ALTER COLUMN turn_index TYPE bigint")
    op.execute("SELECT pg_sleep(2)")  # as the rewrite of millions of rows holds its lock


def downgrade() -> None:
    op.execute("ALTER TABLE conversation_history ALTER COLUMN turn_index TYPE integer")
'''
WINDOW_STATEMENTS = 20_000  # the captured window: longer than the forecast's warm-up and revisions take


@pytest.fixture
def at_003_with_data(topology_db: Topology, scratch_migrations: Path) -> Topology:
    head = ScriptDirectory.from_config(config.alembic_config()).get_current_head()
    (scratch_migrations / "versions" / f"{REWRITE}.py").write_text(REWRITE_SOURCE.format(head=head))
    commands.upgrade(revision="003_context_management", url=topology_db.primary)
    with database.connect(topology_db.primary) as conn:
        generate_sample_data(connection=conn, calls=40, seed=28)
    return topology_db


def test_the_forecast_is_within_2x_of_the_same_revisions_beside_the_same_writers(
        at_003_with_data: Topology, forecast_root: Path, tmp_path: Path) -> None:
    primary = at_003_with_data.primary

    def window() -> None:
        writers = Writers(django_url(primary))
        wait_for(lambda: sum(len(writer.samples) for writer in writers.writers) >= WINDOW_STATEMENTS)
        writers.stop()

    taken = captured_while(window, primary, tmp_path / "window.log", root=forecast_root,
                           databases=[primary.database])
    forecasted = forecast(url=primary, capture=taken.path, root=forecast_root, sample_batches=1,
                          warmup_transactions=50)
    pending = [rev.revision for rev in forecasted.revisions]
    assert pending[0] == INDEXES and pending[-1] == REWRITE, pending
    assert not [rev.error for rev in forecasted.revisions if rev.error]

    writers = Writers(django_url(primary))
    try:
        wait_for(lambda: all(writer.samples for writer in writers.writers))
        happened = {applied.revision: applied for applied in apply_beside(writers, primary, pending)}
    finally:
        writers.stop()
    assert happened[REWRITE].longest_wait >= 1.5  # the writers did wait for the rewrite, on the original

    for rev in forecasted.revisions:
        if rev.revision in (INDEXES, REWRITE):
            real = happened[rev.revision]
            assert within(rev.seconds, real.seconds), (rev.revision, rev.seconds, real.seconds)
            assert within(rev.longest_wait, real.longest_wait), (rev.revision, rev.longest_wait, real.longest_wait)
    problems = verdict.problems(forecasted, verdict.Limits(writer_wait=1.0, duration=3600, replica_lag=3600))
    assert any(REWRITE in problem for problem in problems), problems
    assert not any(INDEXES in problem for problem in problems), problems
