#!/usr/bin/env python
"""Backfill throughput against tiktoken alone and a naive loop, side by side (run by hand).

    .venv/bin/python bench/backfill_throughput.py --calls 12500     # about 306k messages

On a scratch PostgreSQL database seeded with calls/sample_data.py, measures in one run:
- tiktoken alone: ``encode_ordinary`` over the same texts, in memory, one core;
- a naive loop: per message, read it, count it, ``UPDATE ... WHERE id = %s``, commit (on a sample);
- ``backfill_context`` (messages, then calls) with the settings listed, from NULL each time:
  the messages backfill alone (what the other two do: read, count, write every message) and
  the whole command, which then computes every call's context fields.
Prints messages/s for each and the ratios the README quotes. The database is dropped at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reautomation.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")

import django  # noqa: E402

django.setup()

import sqlalchemy as sa  # noqa: E402

from calls import backfill, tokens  # noqa: E402
from calls.context_policy import importance_of  # noqa: E402
from calls.sample_data import generate_sample_data  # noqa: E402
from reautomation import database, schema  # noqa: E402

RESET = [
    "UPDATE conversation_history SET token_count = NULL, importance = NULL",
    "UPDATE calls SET total_context_tokens = NULL, context_pruned = FALSE, pruning_count = 0",
    "DELETE FROM backfill_runs",
]


def reset(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for statement in RESET:
            conn.execute(sa.text(statement))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))


def tiktoken_alone(engine: sa.Engine) -> tuple[int, float]:
    with engine.connect() as conn:
        texts = [row[0] for row in conn.execute(sa.text("SELECT content FROM conversation_history ORDER BY id"))]
    encode = tokens.encoding().encode_ordinary
    started = time.perf_counter()
    for text in texts:
        len(encode(text))
    return len(texts), time.perf_counter() - started


def naive_loop(engine: sa.Engine, sample: int) -> tuple[int, float]:
    """What a first script does: one row at a time, a round trip and a commit per row."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT id FROM conversation_history ORDER BY id LIMIT %s", (sample,))
        ids = [row[0] for row in cursor.fetchall()]
        raw.commit()
        started = time.perf_counter()
        for id_ in ids:
            cursor.execute("SELECT role, content FROM conversation_history WHERE id = %s", (id_,))
            role, content = cursor.fetchone()
            cursor.execute("UPDATE conversation_history SET token_count = %s, importance = %s WHERE id = %s",
                           (tokens.count_tokens(content), importance_of(role, content), id_))
            raw.commit()
        return len(ids), time.perf_counter() - started
    finally:
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=12_500)
    parser.add_argument("--naive-sample", type=int, default=20_000)
    parser.add_argument("--server-url", default=os.environ.get(
        "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    settings_to_try = [dict(workers=1), dict(workers=2), dict(workers=2, batch_size=2000),
                       dict(workers=3, batch_size=2000)]

    admin = database.create_engine(args.server_url, isolation_level="AUTOCOMMIT")
    name = f"bench_backfill_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name)
    engine = database.create_engine(url)
    try:
        schema.upgrade(revision="head", url=url)
        with schema.connect(url) as conn:
            counts = generate_sample_data(connection=conn, calls=args.calls)
        reset(engine)
        print(f"seeded {counts.calls:,} calls, {counts.messages:,} messages")
        n, seconds = tiktoken_alone(engine)
        alone = n / seconds
        print(f"tiktoken alone, one core:          {alone:>10,.0f} messages/s")
        n, seconds = naive_loop(engine, args.naive_sample)
        naive = n / seconds
        print(f"naive per-row UPDATE loop:         {naive:>10,.0f} messages/s  ({n:,}-message sample)")
        for options in settings_to_try:
            reset(engine)
            started = time.perf_counter()
            results = {r.backfill: r for r in backfill.backfill_context(url=url, options=backfill.BackfillOptions(**options))}
            total = time.perf_counter() - started
            messages = results["messages"]
            label = ", ".join(f"{k}={v}" for k, v in options.items())
            phase = messages.scanned / messages.seconds
            print(f"backfill_context ({label}): messages backfill {phase:,.0f} messages/s "
                  f"= {phase / alone:.2f}x tiktoken alone, {phase / naive:.0f}x naive; "
                  f"whole command (messages, then {results['calls'].scanned:,} calls) {messages.scanned / total:,.0f} "
                  f"messages/s = {messages.scanned / total / alone:.2f}x, {messages.scanned / total / naive:.0f}x naive")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
