"""The engine's record of each expand (``schema_versions``): its steps, and what the database was before it.

Created by the first expand (as the checksums table by the first upgrade); one row per expand
applied, kept until it is undone. ``facts`` holds what only the database could tell when expand
ran (each changed or removed column's type, NOT NULL and default) and what contract took away
(the other versions' views), so that the later phases can put things back as they were.
"""
from __future__ import annotations

import json
from typing import Iterable

import sqlalchemy as sa

from schema_engine.versioning.names import SCHEMA, VERSIONS, VERSIONS_TABLE, literal, version_schema
from schema_engine.versioning.steps import ChangeType, DropColumn, Step

CREATE_VERSIONS_SQL = (
    f"CREATE TABLE IF NOT EXISTS {VERSIONS} (revision text PRIMARY KEY, schema text, steps jsonb NOT NULL, "
    "facts jsonb NOT NULL DEFAULT '{}', expanded_at timestamptz NOT NULL DEFAULT now(), contracted_at timestamptz)")


def record_sql(revision: str, steps: Iterable[Step]) -> str:
    """Return the SQL recording expand ``revision`` and its steps."""
    recorded = json.dumps([step.as_json() for step in steps])
    return (f"INSERT INTO {VERSIONS} (revision, schema, steps) VALUES ({literal(revision)}, "
            f"{literal(version_schema(revision))}, {literal(recorded)}::jsonb)")


def record_facts_sql(revision: str, steps: Iterable[Step]) -> str | None:
    """Return the SQL recording, for each column the steps change or remove, its type, NOT NULL and default.

    Read back by ``column_fact``; None if no step changes or removes a column.
    """
    kept = [(step.table, step.column) for step in steps if isinstance(step, (ChangeType, DropColumn))]
    if not kept:
        return None
    pairs = ", ".join(f"({literal(table)}, {literal(column)})" for table, column in kept)
    return (f"UPDATE {VERSIONS} SET facts = facts || jsonb_build_object('columns', (\n"
            "    SELECT jsonb_object_agg(c.relname || '.' || a.attname, jsonb_build_object(\n"
            "        'type', format_type(a.atttypid, a.atttypmod), 'not_null', a.attnotnull,\n"
            "        'default', pg_get_expr(d.adbin, d.adrelid)))\n"
            "    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid\n"
            f"    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = {literal(SCHEMA)}\n"
            "    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum\n"
            f"    WHERE (c.relname::text, a.attname::text) IN ({pairs}) AND a.attnum > 0 AND NOT a.attisdropped))\n"
            f"WHERE revision = {literal(revision)}")


def column_fact(revision: str, table: str, column: str, key: str) -> str:
    """Return the SQL (a scalar subquery, text) reading ``key`` (type, not_null, default) of ``table.column``."""
    path = literal("{columns," + f"{table}.{column},{key}" + "}")
    return f"(SELECT facts #>> {path} FROM {VERSIONS} WHERE revision = {literal(revision)})"


def was_not_null(revision: str, table: str, column: str) -> str:
    """Return the SQL condition: ``table.column`` was NOT NULL when expand ``revision`` ran."""
    return f"coalesce({column_fact(revision, table, column, 'not_null')}::boolean, false)"


def null_allowed_by_expand(revision: str, table: str, column: str) -> str:
    """Return the SQL condition: expand ``revision`` let ``table.column`` be NULL (``phases.allow_null_sql``)."""
    return f"{was_not_null(revision, table, column)} AND {column_fact(revision, table, column, 'default')} IS NULL"


def contracted_sql(revision: str, contracted: bool) -> str:
    """Return the SQL marking expand ``revision`` contracted (or, its contract undone, not)."""
    return (f"UPDATE {VERSIONS} SET contracted_at = {'now()' if contracted else 'NULL'} "
            f"WHERE revision = {literal(revision)}")


def forget_sql(revision: str) -> str:
    """Return the SQL forgetting expand ``revision`` (it is undone)."""
    return f"DELETE FROM {VERSIONS} WHERE revision = {literal(revision)}"


def contracted_versions(connection: sa.Connection) -> frozenset[str]:
    """Return the expand revisions whose contract has run on this database (none before the first expand)."""
    if not sa.inspect(connection).has_table(VERSIONS_TABLE):
        return frozenset()
    return frozenset(connection.execute(sa.text(
        f"SELECT revision FROM {VERSIONS_TABLE} WHERE contracted_at IS NOT NULL")).scalars())
