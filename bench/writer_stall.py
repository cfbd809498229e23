#!/usr/bin/env python
"""How long live writers stall while ``migrate_schema upgrade`` runs 003 -> head (run by hand).

    .venv/bin/python bench/writer_stall.py                 # seeds once, runs both variants, drops all
    .venv/bin/python bench/writer_stall.py --keep-template # keeps the seeded 003 database for a rerun
    .venv/bin/python bench/writer_stall.py --reuse         # reuses the kept one (skips the seeding)

Seeds a PostgreSQL database at revision 003 with calls/sample_data.py (400k calls, about 3.3M
messages with ``--max-turns 13``), then for each variant copies it (CREATE DATABASE ... TEMPLATE),
starts ``--writers`` threads that each, every ``--interval-ms``, insert a call, insert two
messages for it, update a random call and update a random message (each statement its own
transaction, as the application's requests are: ``calls/workload.py``, also the forecast's default
workload), and while they write runs the upgrade to head:

- ``concurrent``: ``manage.py migrate_schema upgrade head``, exactly as a deploy runs it
  (revision 004's indexes built CONCURRENTLY);
- ``blocking``: the same indexes first built by plain ``CREATE INDEX`` in one transaction (what
  004 would be without CONCURRENTLY; the definitions are read from revision 004 itself), then
  the same ``migrate_schema upgrade head``, which finds them valid and goes on to 005.

A stall is the time one writer statement took while the upgrade ran. Prints, per variant, the
statements measured, p50/p99/longest stall, the upgrade's duration and any INVALID index left.
Target (concurrent): longest stall <= 500 ms and no INVALID index.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import environment

environment.set_up()

import psycopg
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql

from bench.seeding import seed_before_backfill
from calls.workload import Writer
from schema_engine import config, database, state

TEMPLATE = "bench_writer_stall_template"
TARGET = "bench_writer_stall"
TARGET_MS = 500
HEAD = ScriptDirectory.from_config(config.alembic_config()).get_current_head()


def seed(calls: int, max_turns: int) -> None:
    url = environment.sqlalchemy_url(environment.fresh_database(TEMPLATE))
    started = time.perf_counter()
    counts = seed_before_backfill(url, calls, revision="003_context_management", max_turns=max_turns)
    print(f"seeded {counts.calls:,} calls and {counts.messages:,} messages at 003 "
          f"in {time.perf_counter() - started:.0f} s")


def plain_index_builds() -> list[str]:
    """Revision 004's indexes as plain ``CREATE INDEX`` statements (no CONCURRENTLY)."""
    script = ScriptDirectory.from_config(config.alembic_config()).get_revision("004_performance_indexes")
    statements = []
    for name, table, columns, options in script.module.INDEXES:
        included = list(options.get("postgresql_include", []))
        target = sa.Table(table, sa.MetaData(), *(sa.Column(c) for c in columns + included))
        pg_options = {k: v for k, v in options.items() if k.startswith("postgresql_")}
        index = sa.Index(name, *(target.c[c] for c in columns), **pg_options)
        statements.append(str(sa.schema.CreateIndex(index).compile(dialect=postgresql.dialect())))
    return statements


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, object]:
    started = time.perf_counter()
    dsn = environment.fresh_database(TARGET, template=TEMPLATE)
    print(f"[{variant}] copied the 003 database in {time.perf_counter() - started:.0f} s", flush=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        max_call_id = conn.execute("SELECT max(id) FROM calls").fetchone()[0]
        max_message_id = conn.execute("SELECT max(id) FROM conversation_history").fetchone()[0]
    stop = threading.Event()
    writers = [Writer(dsn, args.interval_ms / 1000, max_call_id, max_message_id, stop) for _ in range(args.writers)]
    for writer in writers:
        writer.start()
    time.sleep(args.warm_up)
    env = dict(os.environ, DATABASE_URL=dsn)
    window_start = time.perf_counter()
    if variant == "blocking":
        with psycopg.connect(dsn) as conn:  # one transaction, as a non-concurrent 004 would run
            for statement in plain_index_builds():
                conn.execute(statement)
    upgrade = subprocess.run(
        [sys.executable, str(environment.ROOT / "manage.py"), "migrate_schema", "-v0", "upgrade", "head"],
        env=env, capture_output=True, text=True,
    )
    window_end = time.perf_counter()
    time.sleep(args.warm_up)
    stop.set()
    for writer in writers:
        writer.join()
    if upgrade.returncode:
        raise SystemExit(f"[{variant}] migrate_schema upgrade failed: {upgrade.stderr.strip() or upgrade.stdout}")
    stalls = sorted(s for w in writers for at, s in w.samples if window_start <= at <= window_end + 0.001)
    before = sorted(s for w in writers for at, s in w.samples if at < window_start)
    engine = database.create_engine(environment.sqlalchemy_url(dsn))
    with engine.connect() as conn:
        invalid = state.invalid_indexes(conn)
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    errors = [e for w in writers for e in w.errors]
    return {
        "variant": variant,
        "upgrade_s": window_end - window_start,
        "statements": len(stalls),
        "p50_ms": statistics.median(stalls) * 1000,
        "p99_ms": stalls[int(len(stalls) * 0.99) - 1] * 1000,
        "max_ms": stalls[-1] * 1000,
        "baseline_max_ms": (before[-1] * 1000) if before else float("nan"),
        "invalid": invalid,
        "version": version,
        "errors": errors,
    }


def main() -> None:
    parser = environment.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=400_000)
    parser.add_argument("--max-turns", type=int, default=13, help="13: about 8 messages a call")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--interval-ms", type=float, default=5.0, help="pause between a writer's rounds")
    parser.add_argument("--warm-up", type=float, default=2.0, help="seconds of writing before and after")
    parser.add_argument("--variants", default="concurrent,blocking")
    environment.add_template_arguments(parser)
    args = parser.parse_args()

    if not args.reuse:
        seed(args.calls, args.max_turns)
    results = []
    try:
        for variant in args.variants.split(","):
            results.append(run_variant(variant, args))
    finally:
        environment.drop_database(TARGET)
        if not args.keep_template:
            environment.drop_database(TEMPLATE)

    print(f"\n{'variant':<11} {'upgrade':>8} {'writes':>7} {'p50':>8} {'p99':>9} {'longest':>9} "
          f"{'(before)':>9}  INVALID  errors")
    for r in results:
        print(f"{r['variant']:<11} {r['upgrade_s']:>7.1f}s {r['statements']:>7,} {r['p50_ms']:>6.1f}ms "
              f"{r['p99_ms']:>7.1f}ms {r['max_ms']:>7.1f}ms {r['baseline_max_ms']:>7.1f}ms  "
              f"{len(r['invalid']) or 'none':<7}  {len(r['errors'])}")
        for message in sorted(set(r["errors"]))[:3]:
            print(f"    error: {message}")
        if r["version"] != HEAD:
            print(f"    ended at {r['version']}, not head")
    concurrent = next((r for r in results if r["variant"] == "concurrent"), None)
    if concurrent:
        ok = concurrent["max_ms"] <= TARGET_MS and not concurrent["invalid"] and not concurrent["errors"]
        print(f"\ntarget: longest stall <= {TARGET_MS} ms, no INVALID index, no failed write: "
              f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
