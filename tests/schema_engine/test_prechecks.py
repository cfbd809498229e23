"""Data pre-checks: run by plan and before the upgrade's locks; a failing one refuses with its name and rows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from schema_engine import commands, errors, plan
from tests.conftest import HEAD, call, error_lines, run_sql, scratch_alembic_cli
from tests.schema_engine.conftest import add_column_revision

UNIQUE_PHONE = '''"""Make calls.phone_number unique: one call row per number (the dialler's dedup).

Serves ``SELECT id FROM calls WHERE phone_number = '+15550000001'``.
"""
from alembic import op

from migrations_alembic.helpers import build_index, drop_index

revision = "007_unique_phone"
down_revision = "{down}"
branch_labels = None
depends_on = None

DATA_CHECKS = {{
    "no duplicate phone_number": "SELECT phone_number, count(*) FROM calls GROUP BY phone_number HAVING count(*) > 1 "
                                 "ORDER BY phone_number",
}}


def upgrade() -> None:
    with op.get_context().autocommit_block():
        build_index("ux_calls_phone_number", "calls", ["phone_number"], unique=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        drop_index("ux_calls_phone_number", "calls")
'''

REGION_CHECKED = '''"""Say that every call has a region (the check only: the constraint comes later)."""
from alembic import op

revision = "008_region_checked"
down_revision = "007_add_region"
branch_labels = None
depends_on = None

DATA_CHECKS = {{"every call has a region": "SELECT id FROM calls WHERE region IS NULL ORDER BY id"}}


def upgrade() -> None:
    op.execute("SELECT 1")


def downgrade() -> None:
    op.execute("SELECT 1")
'''


def add(migrations: Path, name: str, text: str) -> None:
    (migrations / "versions" / f"{name}.py").write_text(text.format(down=HEAD))


def insert_calls(url: sa.URL, *phones: str) -> None:
    for phone in phones:
        run_sql(url, "INSERT INTO calls (phone_number) VALUES (:phone)", {"phone": phone})


def recorded(url: sa.URL) -> list[str]:
    return [row[0] for row in run_sql(url, "SELECT version_num FROM alembic_version")]


def test_a_failing_check_is_refused_by_plan_and_upgrade_with_its_rows(
        head_db: sa.URL, scratch_migrations: Path) -> None:
    add(scratch_migrations, "007_unique_phone", UNIQUE_PHONE)
    insert_calls(head_db, "+15550000001", "+15550000001", "+15550000002", "+15550000003", "+15550000003")

    planned = plan.plan(url=head_db)
    (check,) = planned.pending[0].data_checks
    assert check.status == "failed" and check.sample == (("+15550000001", 2), ("+15550000003", 2))
    expected = ('revision 007_unique_phone: data check "no duplicate phone_number" found rows it forbids, e.g. '
                "('+15550000001', 2); ('+15550000003', 2): correct the data (or the check) before applying it")
    assert expected in planned.problems

    with pytest.raises(errors.DataCheckFailed) as refused:
        commands.upgrade(revision="head", url=head_db)
    assert (refused.value.revision, refused.value.check) == ("007_unique_phone", "no duplicate phone_number")
    assert str(refused.value) == f"{expected}; nothing was changed"
    assert recorded(head_db) == [HEAD]

    env = {"ALEMBIC_SCRIPT_LOCATION": str(scratch_migrations)}
    shown = call(head_db, "migrate_schema", "plan", "--json", **env)
    assert shown.returncode == 3
    assert json.loads(shown.stdout)["pending"][0]["data_checks"] == [{
        "name": "no duplicate phone_number", "status": "failed", "deferred": "",
        "query": "SELECT phone_number, count(*) FROM calls GROUP BY phone_number HAVING count(*) > 1 "
                 "ORDER BY phone_number",
        "sample": [["+15550000001", "2"], ["+15550000003", "2"]]}]
    upgraded = call(head_db, "migrate_schema", "upgrade", "head", **env)
    assert upgraded.returncode == 1
    assert error_lines(upgraded.stderr) == [f"CommandError: {expected}; nothing was changed"]

    run_sql(head_db, "DELETE FROM calls WHERE id NOT IN (SELECT min(id) FROM calls GROUP BY phone_number)")
    shown = call(head_db, "migrate_schema", "plan", **env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert '    data check "no duplicate phone_number": passed' in shown.stdout.splitlines()
    assert commands.upgrade(revision="head", url=head_db).current == ("007_unique_phone",)


@pytest.fixture
def region_then_its_check(pg_head_db: sa.URL, scratch_migrations: Path) -> sa.URL:
    """Two pending revisions, 007 adding calls.region and 008 checking it (a deferred check); a call without one."""
    add_column_revision(scratch_migrations, revision="007_add_region", column="region",
                        why="filled by the dialler from now on")
    add(scratch_migrations, "008_region_checked", REGION_CHECKED)
    insert_calls(pg_head_db, "+15550000001")
    return pg_head_db


def test_a_check_on_what_an_earlier_pending_revision_adds_runs_just_before_its_own(
        region_then_its_check: sa.URL) -> None:
    pg_head_db = region_then_its_check

    (check,) = plan.plan(url=pg_head_db).pending[1].data_checks
    assert check.status == "deferred" and check.deferred.startswith("runs before 008_region_checked is applied: ")

    with pytest.raises(errors.DataCheckFailed) as refused:
        commands.upgrade(revision="head", url=pg_head_db)
    assert str(refused.value).endswith("; the revisions before it stay applied")
    assert recorded(pg_head_db) == ["007_add_region"]

    run_sql(pg_head_db, "UPDATE calls SET region = 'us-east'")
    assert commands.upgrade(revision="head", url=pg_head_db).current == ("008_region_checked",)


def test_a_check_that_cannot_run_is_the_revisions_fault(pg_head_db: sa.URL, scratch_migrations: Path) -> None:
    add(scratch_migrations, "007_unique_phone", UNIQUE_PHONE.replace("GROUP BY phone_number HAVING",
                                                                      "GROUP BY phone_numbr HAVING"))
    with pytest.raises(errors.InvalidDataChecks, match=r'^revision 007_unique_phone: data check "no duplicate '
                                                       r'phone_number" cannot run: column "phone_numbr" does not'):
        plan.plan(url=pg_head_db)


def test_a_check_cannot_write(pg_head_db: sa.URL, scratch_migrations: Path) -> None:
    add(scratch_migrations, "007_unique_phone", UNIQUE_PHONE.replace(
        '"SELECT phone_number, count(*) FROM calls GROUP BY phone_number HAVING count(*) > 1 "\n'
        '                                 "ORDER BY phone_number"', '"DELETE FROM calls RETURNING id"'))
    insert_calls(pg_head_db, "+15550000001")
    with pytest.raises(errors.InvalidDataChecks, match="read-only transaction"):
        plan.plan(url=pg_head_db)
    assert run_sql(pg_head_db, "SELECT count(*) FROM calls") == [(1,)]


def test_the_plain_alembic_upgrade_runs_the_same_checks(head_db: sa.URL, scratch_migrations: Path) -> None:
    """``alembic upgrade head`` passes env.py as ``migrate_schema upgrade`` does: a failing check refuses it."""
    add(scratch_migrations, "007_unique_phone", UNIQUE_PHONE)
    insert_calls(head_db, "+15550000001", "+15550000001")
    refused = scratch_alembic_cli(scratch_migrations, head_db, "upgrade", "head")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stdout.strip() == (
        'FAILED: revision 007_unique_phone: data check "no duplicate phone_number" found rows it forbids, e.g. '
        "('+15550000001', 2): correct the data (or the check) before applying it; nothing was changed")
    assert recorded(head_db) == [HEAD]


def test_the_plain_alembic_upgrade_runs_a_deferred_check_just_before_its_revision(
        region_then_its_check: sa.URL, scratch_migrations: Path) -> None:
    pg_head_db = region_then_its_check

    refused = scratch_alembic_cli(scratch_migrations, pg_head_db, "upgrade", "head")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stdout.strip().startswith('FAILED: revision 008_region_checked: data check "every call has a '
                                             'region" found rows it forbids')
    assert refused.stdout.strip().endswith("; the revisions before it stay applied")
    assert recorded(pg_head_db) == ["007_add_region"]

    run_sql(pg_head_db, "UPDATE calls SET region = 'us-east'")
    applied = scratch_alembic_cli(scratch_migrations, pg_head_db, "upgrade", "head")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert recorded(pg_head_db) == ["008_region_checked"]
