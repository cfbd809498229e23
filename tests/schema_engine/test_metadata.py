"""The models are the one description of the schema: a test fails when they and the revisions drift."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from django.db import models
from sqlalchemy.dialects import postgresql, sqlite

from schema_engine import commands, errors, metadata
from tests.conftest import run_sql


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
