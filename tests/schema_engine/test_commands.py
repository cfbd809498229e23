"""``commands.upgrade`` and ``downgrade`` report through one reporter, as each revision starts, runs and commits."""
from __future__ import annotations

import sqlalchemy as sa

from schema_engine import commands, progress
from tests.conftest import REVISIONS, previous, run_sql

BACKFILL_RUNS_REVISION = next(rev for rev in REVISIONS if rev.startswith("005_"))  # creates backfill_runs


def moves(events: list[progress.Event]) -> list[tuple[str, str, bool]]:
    """Return (kind, revision, is_upgrade) of each revision started or applied, in the order reported."""
    return [(type(event).__name__, event.revision, event.is_upgrade) for event in events
            if isinstance(event, (commands.RevisionStarted, commands.RevisionApplied))]


def test_an_upgrade_reports_each_revision_started_then_applied_in_order(empty_db: sa.URL) -> None:
    events: list[progress.Event] = []
    result = commands.upgrade(revision="head", url=empty_db, reporter=events.append)
    assert moves(events) == [(kind, rev, True) for rev in REVISIONS for kind in ("RevisionStarted", "RevisionApplied")]
    applied = [event for event in events if isinstance(event, commands.RevisionApplied)]
    assert result.applied == tuple(applied), "the result holds the applied events the reporter heard"
    assert all(event.doc and event.seconds >= 0 for event in applied)
    assert applied[0].describe().startswith(f"Applied {REVISIONS[0]} ")


def test_a_downgrade_reports_the_rows_it_archives_within_their_revision(empty_db: sa.URL) -> None:
    commands.upgrade(revision="head", url=empty_db)
    run_sql(empty_db, "INSERT INTO backfill_runs (id, backfill, status) VALUES (101, 'messages', 'completed')")
    events: list[progress.Event] = []
    commands.downgrade(revision=previous(BACKFILL_RUNS_REVISION), url=empty_db, reporter=events.append)

    reverted = list(reversed(REVISIONS[REVISIONS.index(BACKFILL_RUNS_REVISION):]))
    assert moves(events) == [(kind, rev, False) for rev in reverted for kind in ("RevisionStarted", "RevisionApplied")]
    notes = [i for i, event in enumerate(events) if isinstance(event, commands.ArchiveNote)]
    assert len(notes) == 1
    note = events[notes[0]]
    assert note.describe() == ("archived 1 row(s) of backfill_runs in archive_005_backfill_runs; "
                               "the next upgrade puts them back")
    # Between its revision's start and commit: it is part of that revision.
    started, applied = events[notes[0] - 1], events[notes[0] + 1]
    assert isinstance(started, commands.RevisionStarted) and started.revision == BACKFILL_RUNS_REVISION
    assert isinstance(applied, commands.RevisionApplied) and applied.revision == BACKFILL_RUNS_REVISION
    assert applied.describe().startswith(f"Reverted {BACKFILL_RUNS_REVISION} ")


def test_the_result_says_what_applied_without_a_reporter(empty_db: sa.URL) -> None:
    result = commands.upgrade(revision=REVISIONS[1], url=empty_db)
    assert [step.revision for step in result.applied] == REVISIONS[:2]
