#!/usr/bin/env python
"""The default backfill over 1.2M messages on the topology's primary, with a replica-lag limit (run by hand).

    scripts/topology up
    .venv/bin/python bench/backfill_replica_lag.py                       # limit 2 s, replica at low CPU priority
    .venv/bin/python bench/backfill_replica_lag.py --max-lag 5 --no-slow-replica

Seeds a database on the topology's primary (scripts/topology: ``TOPOLOGY_PRIMARY_PORT``, 55432)
with calls/sample_data.py (49,000 calls, about 1.2M messages), waits for the replica to replay
it, then runs ``backfill_context --only messages`` with its defaults and
``BACKFILL_MAX_REPLICA_LAG=--max-lag``. On this machine's two cores the replica, left alone,
keeps up; ``--slow-replica`` (the default) runs its processes at the lowest CPU priority
(``renice 19``), as a replica on a smaller or busier host, so that it falls behind while the
backfill's workers take the cores. Meanwhile it samples the replica's lag as the primary sees it
(``pg_stat_replication``, every 0.1 s). Prints the backfill's rate, how long it held, the worst
lag it saw and the worst sampled, against the limit plus one batch's worth (the limit plus what
the workers write in one batch after a reading under the limit). The database is dropped at the end.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import environment

PRIMARY = f"postgresql://postgres@127.0.0.1:{os.environ.get('TOPOLOGY_PRIMARY_PORT', '55432')}/postgres"
REPLICA = f"postgresql://postgres@127.0.0.1:{os.environ.get('TOPOLOGY_REPLICA_PORT', '55433')}/postgres"
environment.set_up(server=PRIMARY)

import psycopg
import sqlalchemy as sa

from bench.seeding import reported_rate, seed_before_backfill
from schema_engine import database, scratch

LAG_SQL = ("SELECT coalesce(max(CASE WHEN replay_lsn >= pg_current_wal_lsn() THEN 0 "
           "ELSE EXTRACT(epoch FROM replay_lag) END), 0)::float8 FROM pg_stat_replication")


def replica_pids() -> list[int]:
    """The replica server's processes (its postmaster's children: startup, walreceiver, ...)."""
    with psycopg.connect(REPLICA, autocommit=True) as conn:
        postmaster = int(Path(conn.execute("SHOW data_directory").fetchone()[0], "postmaster.pid")
                         .read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    return [postmaster, *map(int, children)]


def renice(pids: list[int], priority: int) -> None:
    subprocess.run(["renice", "-n", str(priority), "-p", *map(str, pids)], check=True, capture_output=True)


def main() -> None:
    parser = environment.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=49_000, help="49,000: about 1.2M messages")
    parser.add_argument("--max-lag", type=float, default=2.0, help="BACKFILL_MAX_REPLICA_LAG, seconds")
    parser.add_argument("--slow-replica", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    admin = environment.admin_engine(PRIMARY)
    url = scratch.create_database(admin, scratch.unique_name("bench_replica_lag"))
    sampled: list[float] = []
    stop = threading.Event()
    pids = replica_pids() if args.slow_replica else []
    try:
        counts = seed_before_backfill(url, args.calls)
        engine = database.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            while conn.execute(sa.text(LAG_SQL)).scalar_one() > 0:  # the replica has the seeded data first
                time.sleep(0.1)
        print(f"seeded {counts.messages:,} messages on the primary; the replica has replayed them", flush=True)

        def sample() -> None:
            with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                                 autocommit=True) as conn:
                while not stop.wait(0.1):
                    sampled.append(conn.execute(LAG_SQL).fetchone()[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        if pids:
            renice(pids, 19)
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(environment.ROOT / "manage.py"), "backfill_context",
                               "--only", "messages"],
                              env=dict(os.environ, DATABASE_URL=dsn, BACKFILL_MAX_REPLICA_LAG=str(args.max_lag)),
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
        engine.dispose()
    finally:
        if pids:
            renice(pids, 0)
        scratch.drop_database(admin, url)
    if done.returncode:
        raise SystemExit(f"backfill_context failed: {done.stderr.strip()}")
    lines = [line for line in done.stdout.splitlines() if "rows scanned" not in line]
    rate = reported_rate(lines)
    held = next((line for line in lines if "slowed by the database's health" in line), "never held")
    notes = [line for line in done.stdout.splitlines() if "waiting: replica" in line]
    worst_seen = max(float(m.group(1)) for line in notes if (m := re.search(r"is ([\d.]+)s behind", line))) \
        if notes else 0.0
    batch_seconds = float(os.environ.get("BACKFILL_BATCH_SECONDS", "0.2"))
    print(f"backfill: {rate:,.0f} messages/s, {seconds:.0f} s in all, limit {args.max_lag:g} s"
          f"{' (replica at nice 19)' if args.slow_replica else ''}")
    for line in lines:
        print(f"  {line}")
    print(f"worst lag sampled every 0.1 s: {max(sampled, default=0):.2f} s; on the progress line: {worst_seen:.2f} s; "
          f"limit + one batch ({batch_seconds:g} s): {args.max_lag + batch_seconds:.2f} s; "
          f"{held.split(': ', 1)[-1]}")


if __name__ == "__main__":
    main()
