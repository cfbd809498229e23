"""Checksums: each applied revision's rendered SQL (upgrade and downgrade) is recorded; a file changed since is
refused until accepted, by ``migrate_schema`` and the plain ``alembic`` CLI alike."""
from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from schema_engine import checksums, commands, errors, plan
from schema_engine.config import CHECKSUM_TABLE
from schema_engine.state import script_directory
from tests.conftest import REVISIONS, call, error_lines, previous, run_sql, scratch_alembic_cli


def recorded(url: sa.URL) -> dict[str, str]:
    return dict(run_sql(url, f"SELECT revision, sha256 FROM {CHECKSUM_TABLE}"))


def recorded_downgrades(url: sa.URL) -> dict[str, str | None]:
    return dict(run_sql(url, f"SELECT revision, downgrade_sha256 FROM {CHECKSUM_TABLE}"))


def both(revision: str) -> tuple[str, str]:
    script = script_directory().get_revision(revision)
    return checksums.checksum(script), checksums.checksum(script, upgrade=False)


def edit(migrations: Path, revision: str, old: str, new: str) -> None:
    path = next(p for p in (migrations / "versions").glob("*.py") if f'revision: str = "{revision}"' in p.read_text())
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("revision", REVISIONS)
def test_each_revision_renders_one_checksum(revision: str) -> None:
    script = script_directory().get_revision(revision)
    first = checksums.checksum(script), checksums.checksum(script, upgrade=False)
    checksums._rendered.clear()
    assert (checksums.checksum(script), checksums.checksum(script, upgrade=False)) == first
    assert len(first[0]) == len(first[1]) == 64 and first[0] != first[1]


def test_an_upgrade_records_each_revision_it_applies_and_a_downgrade_removes_it(empty_db: sa.URL) -> None:
    commands.upgrade(revision="head", url=empty_db)
    script = script_directory()
    assert recorded(empty_db) == {rev: checksums.checksum(script.get_revision(rev)) for rev in REVISIONS}
    assert recorded_downgrades(empty_db) == {rev: both(rev)[1] for rev in REVISIONS}
    commands.downgrade(revision=previous(REVISIONS[-1]), url=empty_db)
    assert set(recorded(empty_db)) == set(REVISIONS[:-1])


def test_a_database_migrated_before_checksums_gets_them_on_its_next_upgrade(pg_head_db: sa.URL) -> None:
    run_sql(pg_head_db, f"DROP TABLE {CHECKSUM_TABLE}")
    assert all(c.recorded is None and not c.changed for c in checksums.verify(url=pg_head_db))
    result = commands.upgrade(revision="head", url=pg_head_db)
    assert result.applied == ()
    assert set(recorded(pg_head_db)) == set(REVISIONS)


def test_a_comment_is_not_a_change(pg_head_db: sa.URL, scratch_migrations: Path) -> None:
    edit(scratch_migrations, REVISIONS[2], "def upgrade() -> None:\n", "def upgrade() -> None:\n    # reworded\n")
    assert not any(c.changed for c in checksums.verify(url=pg_head_db))


def test_a_changed_applied_revision_is_refused_by_plan_upgrade_and_verify_until_accepted(
        pg_db: sa.URL, scratch_migrations: Path) -> None:
    commands.upgrade(revision=previous(REVISIONS[-1]), url=pg_db)
    changed = "003_context_management"
    edit(scratch_migrations, changed, "server_default=sa.false()", "server_default=sa.true()")
    env = {"ALEMBIC_SCRIPT_LOCATION": str(scratch_migrations)}

    planned = plan.plan(url=pg_db)
    assert planned.changed_revisions == (changed,) and not planned.safe
    assert planned.as_dict()["changed_revisions"] == [changed]
    with pytest.raises(errors.AppliedRevisionChanged) as refused:
        commands.upgrade(revision="head", url=pg_db)
    assert refused.value.revisions == (changed,)
    assert run_sql(pg_db, "SELECT version_num FROM alembic_version") == [(previous(REVISIONS[-1]),)]

    verified = call(pg_db, "migrate_schema", "verify", **env)
    assert verified.returncode == 1
    assert f"  {changed:<30}" in verified.stdout and "CHANGED since it was applied" in verified.stdout
    assert error_lines(verified.stderr) == [
        f"CommandError: applied revision(s) {changed} changed since it was applied (the SQL its upgrade or "
        "downgrade renders is not what was recorded when it ran): put the file back as it was (git log -p on it) "
        "and write a new revision for the change; if the change is deliberate and the database needs nothing of "
        f"it, accept it with 'manage.py migrate_schema verify --accept {changed}'"]

    accepted = call(pg_db, "migrate_schema", "verify", "--accept", changed, **env)
    assert accepted.returncode == 0, accepted.stderr
    assert f"Accepted {changed}: checksum" in accepted.stdout
    assert call(pg_db, "migrate_schema", "verify", **env).returncode == 0
    assert call(pg_db, "migrate_schema", "upgrade", "head", **env).returncode == 0


def test_accepting_a_revision_the_database_has_not_applied_is_refused(pg_db: sa.URL) -> None:
    commands.upgrade(revision=REVISIONS[1], url=pg_db)
    done = call(pg_db, "migrate_schema", "verify", "--accept", REVISIONS[-1])
    assert done.returncode == 1
    assert error_lines(done.stderr) == [f"CommandError: {REVISIONS[-1]} is not a revision this database has applied; "
                                        "'manage.py migrate_schema verify' lists them"]


def test_the_plain_alembic_upgrade_records_checksums_and_refuses_a_changed_applied_revision(
        pg_db: sa.URL, scratch_migrations: Path) -> None:
    """Both spellings pass env.py: ``alembic upgrade head`` is guarded as ``migrate_schema upgrade`` is."""
    applied = scratch_alembic_cli(scratch_migrations, pg_db, "upgrade", previous(REVISIONS[-1]))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert recorded(pg_db) == {rev: both(rev)[0] for rev in REVISIONS[:-1]}
    assert recorded_downgrades(pg_db) == {rev: both(rev)[1] for rev in REVISIONS[:-1]}

    changed = "003_context_management"
    edit(scratch_migrations, changed, "server_default=sa.false()", "server_default=sa.true()")
    refused = scratch_alembic_cli(scratch_migrations, pg_db, "upgrade", "head")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stdout.strip() == f"FAILED: {checksums.changed_message([changed])}"
    assert run_sql(pg_db, "SELECT version_num FROM alembic_version") == [(previous(REVISIONS[-1]),)]


def test_an_edited_downgrade_is_changed_for_verify_and_plan_and_refused_by_downgrade(
        pg_head_db: sa.URL, scratch_migrations: Path) -> None:
    """A downgrade that no longer archives would lose the data a rollback drops: it must not run."""
    changed = "006_backfill_controls"
    edit(scratch_migrations, changed, "archive_columns(", "(lambda *args, **kwargs: None)(")
    env = {"ALEMBIC_SCRIPT_LOCATION": str(scratch_migrations)}

    (found,) = [c for c in checksums.verify(url=pg_head_db) if c.changed]
    assert (found.revision, found.changed_parts) == (changed, ("downgrade",))
    verified = call(pg_head_db, "migrate_schema", "verify", **env)
    assert verified.returncode == 1
    assert f"  {changed:<30} {found.current[:12]}  CHANGED since it was applied (downgrade)" in verified.stdout

    planned = plan.plan(url=pg_head_db)
    assert planned.changed_revisions == (changed,) and not planned.safe
    with pytest.raises(errors.AppliedRevisionChanged) as refused:
        commands.downgrade(revision="-1", url=pg_head_db)
    assert refused.value.revisions == (changed,)
    with pytest.raises(errors.AppliedRevisionChanged):
        commands.downgrade_target("-1", url=pg_head_db)  # scripts/rollback's step 0, before the application stops
    assert run_sql(pg_head_db, "SELECT version_num FROM alembic_version") == [(REVISIONS[-1],)]

    for spelling in (call(pg_head_db, "migrate_schema", "downgrade", "-1", **env),
                     scratch_alembic_cli(scratch_migrations, pg_head_db, "downgrade", "-1")):
        assert spelling.returncode != 0 and "Traceback" not in spelling.stderr
        assert checksums.changed_message([changed]) in spelling.stdout + spelling.stderr
    assert run_sql(pg_head_db, "SELECT version_num FROM alembic_version") == [(REVISIONS[-1],)]


def test_checksums_recorded_before_downgrades_were_covered_gain_them_on_the_next_upgrade(
        pg_head_db: sa.URL, scratch_migrations: Path) -> None:
    """An older table (no downgrade column): upgrades compare as before; the next upgrade records the downgrades."""
    run_sql(pg_head_db, f"ALTER TABLE {CHECKSUM_TABLE} DROP COLUMN downgrade_sha256")
    found = checksums.verify(url=pg_head_db)
    assert not any(c.changed for c in found)
    assert {c.state for c in found} == {"ok; its downgrade not recorded yet (recorded by the next upgrade)"}

    commands.upgrade(revision="head", url=pg_head_db)
    assert recorded_downgrades(pg_head_db) == {rev: both(rev)[1] for rev in REVISIONS}
    assert {c.state for c in checksums.verify(url=pg_head_db)} == {"ok"}
    edit(scratch_migrations, "006_backfill_controls", "archive_columns(", "(lambda *args, **kwargs: None)(")
    assert [c.revision for c in checksums.verify(url=pg_head_db) if c.changed] == ["006_backfill_controls"]
