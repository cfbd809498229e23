"""Which rows the next batches take: keyset ranges of ids, never OFFSET.

A run's ``cursor`` (on its ``backfill_runs`` row) is the highest id handed out; the next batches
are the id ranges ``(cursor, b1], (b1, b2], ...`` that ``next_bounds`` returns.
"""
from __future__ import annotations

import sqlalchemy as sa

from calls.backfill.specs import Backfill
from calls.backfill.sql import driver_sql


def next_bounds(conn: sa.Connection, spec: Backfill, recompute: bool, cursor: int, batches_wanted: int,
                size: int) -> list[int]:
    """Return ``[cursor, b1, b2, ...]``: the next batches are the id ranges ``(cursor, b1], (b1, b2], ...``.

    Where rows to visit start and end is read from the backfill's partial index (two index
    probes, no table read): ranges of ``size`` ids from the first, up to the last (ids
    are a sequence, so a range holds at most that many rows). Once the index has none left,
    the whole condition finds the rare rest (messages with a token count but no importance),
    reading the table. A batch visits every row to visit in its range, whichever found it.
    """
    table = spec.table
    where = "" if recompute else f" AND {spec.indexed_pending}"
    # min and max in separate queries: SQLite reads the index from one end only for a lone min() or max().
    first, last = (driver_sql(conn, f"SELECT {end}(id) FROM {table} WHERE id > {{p}}{where}", (cursor,))[0][0]
                   for end in ("min", "max"))
    if first is not None:
        ends = [min(first - 1 + size * k, last) for k in range(1, batches_wanted + 1)]
        return [cursor, *sorted(set(ends))]
    if recompute or spec.indexed_pending == spec.pending:
        return []
    ids = [row[0] for row in driver_sql(
        conn, f"SELECT id FROM {table} WHERE id > {{p}} AND {spec.pending} ORDER BY id LIMIT {{p}}",
        (cursor, size * batches_wanted))]
    if not ids:
        return []
    return [cursor, *sorted({*ids[size - 1::size], ids[-1]})]
