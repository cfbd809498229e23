"""The backfill's SQL on the driver's own cursor: reading a batch, and writing it in one round trip.

For the hot path: no statement object to build, no result object per query, plain tuples. On
PostgreSQL a batch is written by one ``UPDATE`` over its id range, each row's values picked by
position out of arrays (docs/benchmarks.md, "Backfill throughput" has the measurements behind these choices).
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa


def driver_sql(conn: sa.Connection, sql: str, params: tuple) -> list[tuple]:
    """Run ``sql`` (``{p}`` marks each parameter) on the driver's cursor, in ``conn``'s transaction.

    Returns its rows (none for a statement that returns none). For the hot path: no statement
    object to build, no result object per query, plain tuples.
    """
    placeholder = "%s" if conn.dialect.name == "postgresql" else "?"
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(sql.replace("{p}", placeholder), params)
        return cursor.fetchall() if cursor.description is not None else []
    finally:
        cursor.close()


# Rows are written by position when their ids span at most this many times their number.
DENSE_SPAN = 4


def bulk_update(
    conn: sa.Connection, table: str, columns: list[str], pg_types: list[str], rows: list[tuple],
    keep_existing: set[str] = frozenset(),
) -> None:
    """Write ``rows`` of (id, *values), one per id, in one round trip; ``keep_existing`` columns only fill NULLs."""
    def value(column: str, stored: str, given: str) -> str:
        return f"COALESCE({stored}, {given})" if column in keep_existing else given

    if not rows:
        return
    if conn.dialect.name != "postgresql":
        assignments = ", ".join(f"{c} = {value(c, c, '?')}" for c in columns)
        conn.connection.driver_connection.executemany(
            f"UPDATE {table} SET {assignments} WHERE id = ?", [(*row[1:], row[0]) for row in rows])
        return
    rows = sorted(rows)
    first, last = rows[0][0], rows[-1][0]
    given: list[Sequence] = list(zip(*rows))  # the ids, then each column's values
    cursor = conn.connection.driver_connection.cursor()
    try:
        if last - first < DENSE_SPAN * len(rows):
            # A batch's ids are (nearly) a range: read it by the primary key, each row's values
            # at its position (id - base) in arrays with a slot per id of the range; a slot
            # whose id is 0 has no row to write. PostgreSQL spends less on it than on joining
            # unnest(ids, ...), which probes the primary key once per row (docs/benchmarks.md, "Backfill throughput").
            base, size = first - 1, last - first + 1
            slots, id_check = given, ""
            if size > len(rows):  # gaps: spread the values to their positions
                positions = [id_ - first for id_ in given[0]]
                slots = []
                for values, pg_type in zip(given, ["bigint", *pg_types]):
                    slot = [False if pg_type == "boolean" else 0] * size
                    for position, value_given in zip(positions, values):
                        slot[position] = value_given
                    slots.append(slot)
                id_check = "AND (CAST(%(v0)s AS bigint[]))[id - %(base)s] = id"
            # Without gaps every id of the range is one of the rows given (ids are unique): no
            # other row can be in it, so the ids need neither sending nor checking.
            assignments = ", ".join(
                f"{c} = {value(c, c, f'(CAST(%(v{i})s AS {t}[]))[id - %(base)s]')}"
                for i, (c, t) in enumerate(zip(columns, pg_types), start=1))
            cursor.execute(
                f"UPDATE {table} SET {assignments} WHERE id >= %(first)s AND id <= %(last)s {id_check}",
                {"base": base, "first": first, "last": last,
                 **{f"v{i}": array_literal(slot) for i, slot in enumerate(slots) if i or id_check}})
        else:
            names = ["id", *columns]
            assignments = ", ".join(f"{c} = {value(c, f't.{c}', f'v.{c}')}" for c in columns)
            arrays = ", ".join(f"CAST(%s AS {t}[])" for t in ["bigint", *pg_types])
            cursor.execute(
                f"UPDATE {table} AS t SET {assignments} "
                f"FROM unnest({arrays}) AS v({', '.join(names)}) WHERE t.id = v.id",
                [array_literal(values) for values in given])
    finally:
        cursor.close()


def array_literal(values: Sequence[int | float | bool | None]) -> str:
    """Return PostgreSQL's text form of an array of numbers or booleans.

    psycopg adapts a list element by element (checking each one's type), which for a batch's
    arrays costs several times what joining their text does (docs/benchmarks.md, "Backfill throughput").
    """
    return "{" + ",".join(["NULL" if value is None else str(value) for value in values]) + "}"
