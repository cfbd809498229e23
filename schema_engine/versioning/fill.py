"""The fill: each type-changed column's new copy, for the rows written before expand (``fill_name(E)``).

Rows written since expand have both columns (the sync trigger); older rows have the old one
only. The fill converts them one id range at a time, with ``FILL_SETTING`` on so the trigger
stands aside: it writes the new column of rows still without it, and never the old one. The
general backfill engine (``calls/backfill``) chooses the ranges and the pace; the gate counts what
is left with ``pending_fill_rows`` before a contract that ``requires_backfills`` it may run.
"""
from __future__ import annotations

from typing import Iterable

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from schema_engine.errors import InvalidExpandStep
from schema_engine.versioning.names import fill_name, physical_name, quoted, table_name
from schema_engine.versioning.phases import has_column_sql
from schema_engine.versioning.releases import expands
from schema_engine.versioning.steps import ChangeType, Step, changed_tables, of_table, up_sql
from schema_engine.versioning.sync import FILL_SETTING_SQL


def fill_tables(steps: Iterable[Step]) -> list[str]:
    """Return the tables with a column to fill (a ChangeType), in the order the steps name them."""
    return changed_tables(step for step in steps if isinstance(step, ChangeType))


def _changes(revision: str, table: str, steps: Iterable[Step]) -> list[tuple[ChangeType, str]]:
    """Return ``table``'s type changes, each with its new column's name."""
    return [(step, physical_name(revision, step.column)) for step in of_table(steps, table)
            if isinstance(step, ChangeType)]


def _unfilled(changes: list[tuple[ChangeType, str]], *, expanded: bool = True) -> str:
    """Return the condition of a row still to fill (before expand: any row with a value to convert)."""
    return " OR ".join(f"({quoted(new)} IS NULL AND {quoted(step.column)} IS NOT NULL)" if expanded
                       else f"{quoted(step.column)} IS NOT NULL" for step, new in changes)


def pending_sql(revision: str, table: str, steps: Iterable[Step]) -> str:
    """Return the condition of a row of ``table`` that expand ``revision``'s fill has still to write."""
    return _unfilled(_changes(revision, table, steps))


def declared_fills(script_directory: ScriptDirectory) -> dict[str, tuple[ChangeType, ...]]:
    """Return each fill the code's expand revisions declare (its name: its type changes), newest expand first."""
    return {fill_name(expand.revision): changes for expand in expands(script_directory)
            if (changes := tuple(step for step in expand.steps if isinstance(step, ChangeType)))}


def fill_sql(revision: str, table: str, steps: Iterable[Step]) -> str:
    """Return the UPDATE filling ``table``'s new columns for ids in ``(:lo, :hi]``; run after ``FILL_SETTING_SQL``.

    Only rows whose new column is still NULL while the old one has a value: a row written since
    expand, or filled by an earlier batch, is left alone.
    """
    changes = _changes(revision, table, steps)
    if not changes:
        raise InvalidExpandStep(f"expand {revision} changes no type in {table}: nothing to fill")
    if len(changes) == 1:
        ((step, new),) = changes
        assignments = f"{quoted(new)} = {up_sql(step, quoted(step.column))}"
    else:  # a row may need one column filled and not another
        assignments = ", ".join(f"{quoted(new)} = coalesce({quoted(new)}, {up_sql(step, quoted(step.column))})"
                                for step, new in changes)
    return f"UPDATE {table_name(table)} SET {assignments} WHERE id > :lo AND id <= :hi AND ({_unfilled(changes)})"


def fill_range(connection: sa.Connection, revision: str, table: str, steps: Iterable[Step], *,
               lo: int, hi: int) -> int:
    """Fill ``table``'s new columns for ids in ``(lo, hi]`` in the caller's transaction; return the rows written.

    A transaction of its own: the setting that makes the sync triggers stand aside lasts until it ends.
    """
    connection.execute(sa.text(FILL_SETTING_SQL))
    return connection.execute(sa.text(fill_sql(revision, table, steps)), {"lo": lo, "hi": hi}).rowcount


def pending_fill_rows(connection: sa.Connection, revision: str, steps: Iterable[Step]) -> int:
    """Return how many rows still need expand ``revision``'s fill (0 on SQLite, where expand converted them all).

    Before expand has added the new columns: every row with a value in an old one.
    """
    if connection.dialect.name != "postgresql":
        return 0
    steps = tuple(steps)
    total = 0
    for table in fill_tables(steps):
        changes = _changes(revision, table, steps)
        expanded = connection.execute(sa.text(f"SELECT {has_column_sql(table, changes[0][1])}")).scalar()
        total += connection.execute(sa.text(
            f"SELECT count(*) FROM {table_name(table)} WHERE {_unfilled(changes, expanded=bool(expanded))}")).scalar()
    return total
