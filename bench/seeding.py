"""What the backfill benchmarks share: a database seeded as it stands before a backfill, and a run's rate.

Imported after ``django.setup()`` by ``bench/backfill_*.py``.
"""
from __future__ import annotations

import re

import sqlalchemy as sa

from calls.sample_data import SampleDataCounts, generate_sample_data
from schema_engine import commands, database

_RATE = re.compile(r"\(([\d,]+) rows/s\)")


def seed_before_backfill(url: sa.URL | str, calls: int) -> SampleDataCounts:
    """Upgrade ``url`` to head, add ``calls`` sample calls (no counts filled), ``VACUUM ANALYZE`` as an established table is."""
    commands.upgrade(revision="head", url=url)
    with database.connect(url) as conn:
        counts = generate_sample_data(connection=conn, calls=calls)
    engine = database.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    finally:
        engine.dispose()
    return counts


def reported_rate(lines: list[str]) -> float:
    """The rows per second that ``backfill_context`` reported on its summary line (``(9,979 rows/s)``)."""
    return next(float(m.group(1).replace(",", "")) for line in lines if (m := _RATE.search(line)))
