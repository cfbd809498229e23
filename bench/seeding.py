"""What the benchmarks share about data: a database seeded as it stands before a backfill, and a run's rate.

Imported after ``environment.set_up()``.
"""
from __future__ import annotations

import re

import sqlalchemy as sa

from calls.sample_data import SampleDataCounts, generate_sample_data
from schema_engine import commands, database

_RATE = re.compile(r"\(([\d,]+) rows/s\)")


def seed_before_backfill(url: sa.URL | str, calls: int, *, revision: str = "head",
                         max_turns: int = 60) -> SampleDataCounts:
    """Upgrade ``url`` to ``revision``, add ``calls`` sample calls (no counts filled),
    vacuum as an established table is."""
    commands.upgrade(revision=revision, url=url)
    with database.connect(url) as conn:
        counts = generate_sample_data(connection=conn, calls=calls, max_turns=max_turns)
    vacuum_analyze(url)
    return counts


def vacuum_analyze(url: sa.URL | str) -> None:
    """``VACUUM ANALYZE`` the database: visibility map and statistics as a long-established one has them."""
    engine = database.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    finally:
        engine.dispose()


def reported_rate(lines: list[str]) -> float:
    """The rows per second that ``backfill_context`` reported on its summary line (``(9,979 rows/s)``)."""
    return next(float(m.group(1).replace(",", "")) for line in lines if (m := _RATE.search(line)))
