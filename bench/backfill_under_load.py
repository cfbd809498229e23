#!/usr/bin/env python
"""The default backfill beside live writers: their latency without it and with it, and its rate (run by hand).

    .venv/bin/python bench/backfill_under_load.py                  # seeds 1.2M messages, runs, drops all
    .venv/bin/python bench/backfill_under_load.py --keep-template  # keeps the seeded database for a rerun
    .venv/bin/python bench/backfill_under_load.py --reuse          # reuses the kept one (skips the seeding)

Seeds a PostgreSQL database at head with calls/sample_data.py (49,000 calls, about 1.2M messages
with no token counts), vacuumed, then on fresh copies of it (CREATE DATABASE ... TEMPLATE):

- idle: ``manage.py backfill_context --only messages`` with its defaults, nothing else running;
- baseline: ``--writers`` threads that each, every ``--interval-ms``, insert a call, insert two
  messages for it, update a random call and update a random message (each statement its own
  transaction, as the agents' requests are; calls/workload.py's writers), for as long as the
  idle backfill took;
- loaded: the same writers, and the same backfill started once they write.

Prints the writers' p50/p99/longest statement latency in the baseline and while the backfill ran,
the backfill's rate idle and loaded, and what slowed it (its last lines). Target: p99 at most 2x
the baseline's, longest at most 200 ms, and the loaded backfill at least half its idle rate.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import environment

environment.set_up()

import psycopg

from bench.seeding import reported_rate, seed_before_backfill
from calls.workload import Writer

TEMPLATE = "bench_backfill_load_template"
TARGET = "bench_backfill_load"
P99_FACTOR, LONGEST_MS, RATE_SHARE = 2.0, 200.0, 0.5


def seed(calls: int) -> None:
    url = environment.sqlalchemy_url(environment.fresh_database(TEMPLATE))
    started = time.perf_counter()
    counts = seed_before_backfill(url, calls)
    print(f"seeded {counts.calls:,} calls and {counts.messages:,} messages in {time.perf_counter() - started:.0f} s",
          flush=True)


def fresh_copy() -> str:
    return environment.fresh_database(TARGET, template=TEMPLATE)


def backfill(dsn: str) -> tuple[float, float, list[str]]:
    """``manage.py backfill_context --only messages`` as an operator runs it: (seconds, rows/s, its lines)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(environment.ROOT / "manage.py"),
                           "backfill_context", "--only", "messages"],
                          env=dict(os.environ, DATABASE_URL=dsn), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"backfill_context failed: {done.stderr.strip()}")
    lines = done.stdout.strip().splitlines()
    rate = reported_rate(lines)
    return seconds, rate, [line for line in lines if "rows scanned" not in line]


def writers_for(dsn: str, args: argparse.Namespace, stop: threading.Event) -> list[Writer]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        max_call_id = conn.execute("SELECT max(id) FROM calls").fetchone()[0]
        max_message_id = conn.execute("SELECT max(id) FROM conversation_history").fetchone()[0]
    writers = [Writer(dsn, args.interval_ms / 1000, max_call_id, max_message_id, stop) for _ in range(args.writers)]
    for writer in writers:
        writer.start()
    return writers


def latencies(writers: list[Writer], start: float, end: float) -> tuple[int, float, float, float, int]:
    """Statements in the window, p50/p99/longest in ms, and failed writes."""
    samples = sorted(s for w in writers for at, s in w.samples if start <= at <= end)
    if not samples:
        raise SystemExit("no writer statement finished in the window")
    return (len(samples), samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99) - 1] * 1000,
            samples[-1] * 1000, sum(len(w.errors) for w in writers))


def main() -> None:
    parser = environment.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=49_000, help="49,000: about 1.2M messages")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--interval-ms", type=float, default=5.0, help="pause between a writer's rounds")
    parser.add_argument("--warm-up", type=float, default=2.0, help="seconds of writing before the backfill starts")
    environment.add_template_arguments(parser)
    args = parser.parse_args()
    if not args.reuse:
        seed(args.calls)
    try:
        idle_seconds, idle_rate, idle_lines = backfill(fresh_copy())
        print(f"idle: backfill {idle_rate:,.0f} messages/s in {idle_seconds:.0f} s", flush=True)

        dsn, stop = fresh_copy(), threading.Event()
        writers = writers_for(dsn, args, stop)
        time.sleep(args.warm_up)
        start = time.perf_counter()
        time.sleep(idle_seconds)
        baseline = latencies(writers, start, time.perf_counter())
        stop.set()
        for writer in writers:
            writer.join()

        dsn, stop = fresh_copy(), threading.Event()
        writers = writers_for(dsn, args, stop)
        time.sleep(args.warm_up)
        start = time.perf_counter()
        loaded_seconds, loaded_rate, loaded_lines = backfill(dsn)
        loaded = latencies(writers, start, time.perf_counter())
        stop.set()
        for writer in writers:
            writer.join()
    finally:
        environment.drop_database(TARGET)
        if not args.keep_template:
            environment.drop_database(TEMPLATE)

    print(f"\n{'writers':<26} {'statements':>10} {'p50':>8} {'p99':>8} {'longest':>9} failed")
    for label, (n, p50, p99, longest, failed) in (("baseline (no backfill)", baseline),
                                                  ("with the default backfill", loaded)):
        print(f"{label:<26} {n:>10,} {p50:>6.1f}ms {p99:>6.1f}ms {longest:>7.1f}ms {failed}")
    print(f"\nbackfill: idle {idle_rate:,.0f} messages/s ({idle_seconds:.0f} s); beside the writers "
          f"{loaded_rate:,.0f} messages/s ({loaded_seconds:.0f} s) = {loaded_rate / idle_rate:.2f} of idle")
    for line in loaded_lines:
        print(f"  {line}")
    met = (loaded[2] <= P99_FACTOR * baseline[2] and loaded[3] <= LONGEST_MS
           and loaded_rate >= RATE_SHARE * idle_rate and not loaded[4])
    print(f"\ntarget: writers' p99 <= {P99_FACTOR:g}x baseline ({loaded[2] / baseline[2]:.2f}x), longest <= "
          f"{LONGEST_MS:g} ms ({loaded[3]:.0f} ms), backfill >= {RATE_SHARE:g} of idle "
          f"({loaded_rate / idle_rate:.2f}), no failed write: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
