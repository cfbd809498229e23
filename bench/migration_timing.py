#!/usr/bin/env python
"""Time each revision on a seeded PostgreSQL database (run by hand; figures go in docs/benchmarks.md).

    .venv/bin/python bench/migration_timing.py --calls 30000     # about 1M messages

Creates a scratch database, upgrades it to 002, seeds realistic data (calls/sample_data.py),
then records: each upgrade 003 and 004 on that data; the downgrade to 002 after the context
fields are filled (it archives them) and the upgrade back to head (it restores them).
Nothing is asserted: the numbers are the result. The scratch database is dropped at the end.
"""
from __future__ import annotations

import time

import environment

environment.set_up()

import sqlalchemy as sa

from calls.sample_data import generate_sample_data
from schema_engine import commands, database, scratch


def time_revisions(*, server_url: str, calls: int) -> list[tuple[str, str, float]]:
    """Return (step, revision, seconds) for each timed step on a freshly seeded database."""
    admin = scratch.admin_engine(server_url)
    url = scratch.create_database(admin, scratch.unique_name("bench_migration_timing"))
    results: list[tuple[str, str, float]] = []

    def record(result: commands.MigrationResult) -> None:
        results.extend(("upgrade" if step.is_upgrade else "downgrade", step.revision, step.seconds)
                       for step in result.applied)

    try:
        record(commands.upgrade(revision="002_voice_agent_integration", url=url))
        started = time.perf_counter()
        with database.connect(url) as conn:
            counts = generate_sample_data(connection=conn, calls=calls)
        results.append(("seed", f"{counts.calls} calls, {counts.messages} messages", time.perf_counter() - started))
        record(commands.upgrade(revision="head", url=url))
        with database.connect(url) as conn:  # as if backfill_context had run
            conn.execute(sa.text("UPDATE conversation_history SET token_count = length(content) / 4, importance = 0.5"))
            conn.execute(sa.text("UPDATE calls SET total_context_tokens = 100, context_pruned = (id % 20 = 0)"))
        record(commands.downgrade(revision="002_voice_agent_integration", url=url))
        record(commands.upgrade(revision="head", url=url))
    finally:
        scratch.drop_database(admin, url)
        admin.dispose()
    return results


def main() -> None:
    parser = environment.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=30_000)
    environment.add_server_url_argument(parser)
    args = parser.parse_args()
    for step, revision, seconds in time_revisions(server_url=args.server_url, calls=args.calls):
        print(f"{step:<10} {revision:<40} {seconds:8.2f}s")


if __name__ == "__main__":
    main()
