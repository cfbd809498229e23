"""The models are the one description of the schema: a test fails when they and the revisions drift."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from django.db import models
from sqlalchemy.dialects import postgresql, sqlite

from calls.models import Call
from schema_engine import commands, errors, metadata
from tests.conftest import run_sql


@pytest.fixture
def priority_field() -> Iterator[models.Field]:
    """The guide's example model change: ``Call.priority``, NOT NULL, server default 0, indexed."""
    field = models.IntegerField(db_default=0, db_index=True)
    field.contribute_to_class(Call, "priority")
    yield field
    Call._meta.local_fields.remove(field)
    Call._meta._expire_cache()


def test_check_is_quiet_at_head(head_db: sa.URL) -> None:
    commands.check(url=head_db)


def test_check_is_loud_after_a_model_change(head_db: sa.URL, priority_field: models.Field) -> None:
    with pytest.raises(errors.SchemaDrift, match="priority.*revision --autogenerate") as caught:
        commands.check(url=head_db)
    assert any("priority" in repr(diff) for diff in caught.value.diffs)


@pytest.mark.parametrize(
    "change",
    [
        "DROP INDEX ix_calls_tier_created_at",
        "CREATE INDEX ix_calls_outcome ON calls (outcome)",
        "ALTER TABLE call_notes ADD COLUMN reviewed BOOLEAN",
    ],
)
def test_check_is_loud_when_the_database_drifts(head_db: sa.URL, change: str) -> None:
    run_sql(head_db, change)
    with pytest.raises(errors.SchemaDrift):
        commands.check(url=head_db)


def test_autogenerate_writes_the_guides_priority_revision(
    head_db: sa.URL, priority_field: models.Field, scratch_migrations: Path
) -> None:
    """As the guide's "Adding New Fields": change the model, autogenerate, get add_column and its index."""
    revision = commands.create_revision(message="add_priority_field_to_calls", autogenerate=True, url=head_db)
    assert revision is not None
    (written,) = (scratch_migrations / "versions").glob(f"{revision}_add_priority_field_to_calls.py")
    text = written.read_text()
    # op.add_column('calls', ...) on PostgreSQL; batch_op.add_column(...) inside batch_alter_table on SQLite.
    assert re.search(r"add_column\((?:'calls', )?sa\.Column\('priority', sa\.Integer\(\), "
                     r"server_default=sa\.text\('0'\), nullable=False\)\)", text)
    assert re.search(r"create_index\((?:batch_)?op\.f\('ix_calls_priority'\)", text)
    assert re.search(r"drop_column\((?:'calls', )?'priority'\)", text)
    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    commands.downgrade(revision="-1", url=head_db)
    assert "priority" not in {c["name"] for c in sa.inspect(sa.create_engine(head_db)).get_columns("calls")}


def test_autogenerate_without_changes_writes_nothing(head_db: sa.URL, scratch_migrations: Path) -> None:
    before = sorted((scratch_migrations / "versions").glob("*.py"))
    assert commands.create_revision(message="nothing", autogenerate=True, url=head_db) is None
    assert sorted((scratch_migrations / "versions").glob("*.py")) == before


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_some_tables_of_the_metadata_are_those_of_the_whole(dialect: str) -> None:
    # The backfill builds only its run tables: they must be what the whole schema holds.
    sql_dialect = {"postgresql": postgresql.dialect, "sqlite": sqlite.dialect}[dialect]()

    def ddl(table: sa.Table) -> list[str]:
        return [str(sa.schema.CreateTable(table).compile(dialect=sql_dialect)),
                *sorted(str(sa.schema.CreateIndex(index).compile(dialect=sql_dialect)) for index in table.indexes)]

    whole = metadata.build_metadata(dialect).tables
    some = metadata.build_metadata(dialect, tables={"backfill_runs", "backfill_batches"}).tables
    assert sorted(some) == ["backfill_batches", "backfill_runs"]
    assert {name: ddl(table) for name, table in some.items()} == {name: ddl(whole[name]) for name in some}
