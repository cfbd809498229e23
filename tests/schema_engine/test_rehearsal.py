"""Rehearsal (``plan --rehearse``) and the drift check at head: a wrong stamp is reported, not "safe"."""
from __future__ import annotations

import json

import sqlalchemy as sa

from schema_engine import commands, plan
from tests.conftest import HEAD, REVISIONS, call, previous, run_sql


def rehearsal_databases(url: sa.URL) -> list[str]:
    """The rehearsals' copies of ``url``'s database on its server (other tests' are named for theirs)."""
    if url.get_backend_name() != "postgresql":
        return []
    return [name for (name,) in run_sql(url, "SELECT datname FROM pg_database WHERE starts_with(datname, "
                                             "'rehearsal_' || current_database() || '_')")]


def test_the_pending_revisions_apply_to_a_copy_of_the_schema_and_leave_the_database_as_it_was(
        empty_db: sa.URL) -> None:
    commands.upgrade(revision=REVISIONS[3], url=empty_db)
    run_sql(empty_db, "INSERT INTO calls (phone_number) VALUES ('+15550000001')")
    before = rehearsal_databases(empty_db)

    result = plan.plan(url=empty_db, rehearse=True)
    assert result.safe, result.problems
    assert [step.revision for step in result.rehearsal.revisions] == REVISIONS[4:]
    assert all(not step.error and step.seconds > 0 for step in result.rehearsal.revisions)
    assert run_sql(empty_db, "SELECT version_num FROM alembic_version") == [(REVISIONS[3],)]
    assert run_sql(empty_db, "SELECT count(*) FROM calls") == [(1,)]
    assert rehearsal_databases(empty_db) == before


def test_a_stamp_below_the_schema_is_caught_by_the_rehearsal(head_db: sa.URL) -> None:
    commands.stamp(revision=previous(HEAD), url=head_db)
    assert plan.plan(url=head_db).safe  # the files alone cannot tell

    result = plan.plan(url=head_db, rehearse=True)
    (step,) = result.rehearsal.revisions
    assert step.revision == HEAD and step.error
    assert result.problems == [
        f"rehearsal: revision {HEAD} cannot apply to this schema ({step.error}); the database may record another "
        "revision than its schema is at (a stamp): compare 'manage.py migrate_schema current' with the tables, "
        "and stamp the revision it really is at"]


def test_stamp_head_after_a_failed_revision_is_drift_not_safe(pg_db: sa.URL) -> None:
    commands.upgrade(revision=previous(HEAD), url=pg_db)
    commands.stamp(revision="head", url=pg_db)  # the guide's old "Solution 2"

    result = plan.plan(url=pg_db)
    assert not result.safe and result.drift
    assert result.problems[0].startswith(f"the database records head ({HEAD}) but differs from the models (")

    shown = call(pg_db, "migrate_schema", "plan", "--rehearse", "--json")
    assert shown.returncode == 3
    planned = json.loads(shown.stdout)
    assert planned["drift"] and planned["rehearsal"]["revisions"] == [] and planned["rehearsal"]["drift"]


def test_plan_rehearse_reports_each_revision_and_its_duration(pg_db: sa.URL) -> None:
    commands.upgrade(revision=previous(HEAD), url=pg_db)
    shown = call(pg_db, "migrate_schema", "plan", "--rehearse")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1] == "Rehearsal: the pending revisions on a copy of the schema (no data), dropped afterwards"
    assert lines[2].startswith(f"  rehearsed {HEAD:<28} ") and lines[2].endswith("s  applied")
    assert any(line.startswith("  rehearsal: 1 revision(s) applied to the copy in ") for line in lines)
