"""``revision --autogenerate`` writes revisions that ``plan`` accepts unchanged: concurrent indexes, expand/contract."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from django.db import models

from schema_engine import commands, errors, plan
from tests.conftest import HEAD, run_sql


def written(migrations: Path, revision: str) -> str:
    (path,) = (migrations / "versions").glob(f"{revision}_*.py")
    return path.read_text()


def columns(url: sa.URL) -> dict[str, bool]:
    engine = sa.create_engine(url)
    try:
        return {c["name"]: c["nullable"] for c in sa.inspect(engine).get_columns("calls")}
    finally:
        engine.dispose()


def test_the_guides_new_indexed_field_is_generated_deployable(
        head_db: sa.URL, priority_field: models.Field, scratch_migrations: Path) -> None:
    """The guide's "Adding New Fields": change the model, autogenerate, and plan says safe as it is."""
    (revision,) = commands.create_revision(message="add_priority_field_to_calls", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    # op.add_column('calls', ...) on PostgreSQL; batch_op.add_column(...) inside batch_alter_table on SQLite.
    assert re.search(r"add_column\((?:'calls', )?sa\.Column\('priority', sa\.Integer\(\), "
                     r"server_default=sa\.text\('0'\), nullable=False\)\)", text)
    assert ("    with op.get_context().autocommit_block():\n"
            "        build_index('ix_calls_priority', 'calls', ['priority'])\n") in text
    assert ("    with op.get_context().autocommit_block():\n"
            "        drop_index('ix_calls_priority', 'calls')\n") in text
    assert "from migrations_alembic.helpers import build_index" in text
    assert "- ix_calls_priority on calls: which query does it serve? Quote it here" in text.split('"""')[1]
    assert "create_index(" not in text and "op.drop_index(" not in text

    planned = plan.plan(url=head_db)
    assert planned.safe, planned.problems
    assert [rev.revision for rev in planned.pending] == [revision]
    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    commands.downgrade(revision="-1", url=head_db)
    assert "priority" not in columns(head_db)


def test_a_required_column_on_an_existing_table_is_generated_as_expand_and_contract(
        pg_head_db: sa.URL, region_field: models.Field, scratch_migrations: Path) -> None:
    expand, contract = commands.create_revision(message="add_region", autogenerate=True, url=pg_head_db)
    assert "sa.Column('region', sa.String(length=8), nullable=True)" in written(scratch_migrations, expand)
    contract_text = written(scratch_migrations, contract)
    assert f"down_revision: str | Sequence[str] | None = '{expand}'" in contract_text
    assert "    set_not_null('calls', 'region', sa.String(length=8))\n" in contract_text
    assert "    drop_not_null('calls', 'region', sa.String(length=8))\n" in contract_text
    assert ("DATA_CHECKS = {\n    'no NULL in calls.region': 'SELECT id FROM calls WHERE region IS NULL ORDER BY id',\n}"
            in contract_text)

    run_sql(pg_head_db, "INSERT INTO calls (phone_number) VALUES ('+15550000001')")
    planned = plan.plan(url=pg_head_db)
    assert planned.safe, planned.problems
    assert planned.pending[1].data_checks[0].status == "deferred"

    with pytest.raises(errors.DataCheckFailed, match=r"no NULL in calls\.region\" found rows it forbids, e\.g\. \(1,\)"):
        commands.upgrade(revision="head", url=pg_head_db)
    assert commands.upgrade(revision=expand, url=pg_head_db).current == (expand,)  # the expand step stayed applied
    assert columns(pg_head_db)["region"] is True

    run_sql(pg_head_db, "UPDATE calls SET region = 'us-east'")  # the data step between
    assert commands.upgrade(revision="head", url=pg_head_db).current == (contract,)
    assert columns(pg_head_db)["region"] is False
    commands.check(url=pg_head_db)
    commands.downgrade(revision=HEAD, url=pg_head_db)
    assert "region" not in columns(pg_head_db)


def test_autogenerate_without_changes_writes_nothing(head_db: sa.URL, scratch_migrations: Path) -> None:
    before = sorted((scratch_migrations / "versions").glob("*.py"))
    assert commands.create_revision(message="nothing", autogenerate=True, url=head_db) == ()
    assert sorted((scratch_migrations / "versions").glob("*.py")) == before
