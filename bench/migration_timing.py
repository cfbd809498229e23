#!/usr/bin/env python
"""Time each revision on a seeded PostgreSQL database (run by hand; figures go in the README).

    .venv/bin/python bench/migration_timing.py --calls 30000     # about 1M messages

Creates a scratch database, upgrades it to 002, seeds realistic data (calls/sample_data.py),
then records: each upgrade 003 and 004 on that data; the downgrade to 002 after the context
fields are filled (it archives them) and the upgrade back to head (it restores them).
Nothing is asserted: the numbers are the result. The scratch database is dropped at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reautomation.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")
# Every measurement names its own database; Django's default one is the server's, for the settings' sake.
os.environ.setdefault("DATABASE_URL", os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
                      .replace("+psycopg", ""))

import django  # noqa: E402

django.setup()

import sqlalchemy as sa  # noqa: E402

from calls.sample_data import generate_sample_data  # noqa: E402
from schema_engine import commands, database, scratch


def time_revisions(*, server_url: str, calls: int) -> list[tuple[str, str, float]]:
    """Return (step, revision, seconds) for each timed step on a freshly seeded database."""
    admin = scratch.admin_engine(server_url)
    url = scratch.create_database(admin, scratch.unique_name("bench_migration_timing"))
    results: list[tuple[str, str, float]] = []
    record = lambda step: results.append(("upgrade" if step.is_upgrade else "downgrade", step.revision, step.seconds))  # noqa: E731
    try:
        commands.upgrade(revision="002_voice_agent_integration", url=url, on_applied=record)
        started = time.perf_counter()
        with database.connect(url) as conn:
            counts = generate_sample_data(connection=conn, calls=calls)
        results.append(("seed", f"{counts.calls} calls, {counts.messages} messages", time.perf_counter() - started))
        commands.upgrade(revision="head", url=url, on_applied=record)
        with database.connect(url) as conn:  # as if backfill_context had run
            conn.execute(sa.text("UPDATE conversation_history SET token_count = length(content) / 4, importance = 0.5"))
            conn.execute(sa.text("UPDATE calls SET total_context_tokens = 100, context_pruned = (id % 20 = 0)"))
        commands.downgrade(revision="002_voice_agent_integration", url=url, on_applied=record)
        commands.upgrade(revision="head", url=url, on_applied=record)
    finally:
        scratch.drop_database(admin, url)
        admin.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=30_000)
    parser.add_argument("--server-url", default=os.environ.get(
        "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    for step, revision, seconds in time_revisions(server_url=args.server_url, calls=args.calls):
        print(f"{step:<10} {revision:<40} {seconds:8.2f}s")


if __name__ == "__main__":
    main()
