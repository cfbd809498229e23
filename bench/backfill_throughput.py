#!/usr/bin/env python
"""Backfill throughput against the bound this machine sets, and against a naive loop (run by hand).

    .venv/bin/python bench/backfill_throughput.py --calls 24000 --repeat 3   # about 600k messages

On a scratch PostgreSQL database seeded with calls/sample_data.py (no counts yet, vacuumed, as
before a first backfill), measures in one run:
- tiktoken alone: ``encode_ordinary`` over the same texts, in memory, one core;
- the database alone: the backfill's own results (computed beforehand, not timed) written the
  cheapest way, ``COPY`` into a temporary table and one ``UPDATE ... FROM``, one session;
- the bound: both kinds of work spread over every core, nothing else:
  ``cores / (1 / database alone + 1 / tiktoken alone)`` messages/s; no backfill can beat it;
- a naive loop: per message, read it, count it, ``UPDATE ... WHERE id = %s``, commit (on a sample);
- ``backfill_context`` with its defaults (workers and batch size chosen by the command), and any
  setting given with ``--workers``/``--batch-size``: the messages backfill's rate, its ratio to
  the bound (recomputed with tiktoken alone measured just before and after it: this machine's
  CPU speed drifts within minutes), and the whole command's (messages, then calls).
The database alone, the naive loop and each backfill run on a fresh copy of the seeded database.
``--repeat`` runs each setting several times and prints the median ratio. Target: the defaults at
0.8 of the bound or more. The databases are dropped at the end.
"""
from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import environment

environment.set_up()

import sqlalchemy as sa

from bench.seeding import seed_before_backfill
from calls import backfill, tokens
from calls.context_policy import importance_of
from schema_engine import database, scratch


@contextlib.contextmanager
def copy_of(admin: sa.Engine, template: str) -> Iterator[sa.URL]:
    """A fresh copy of the seeded database, as it was before any backfill; dropped afterwards.

    FILE_COPY starts from a checkpoint, so every measurement writes its full-page images from
    the same state (a long backfill in production spans many checkpoints).
    """
    with scratch.scratch_database(admin, f"{template}_copy", template=template, file_copy=True) as url:
        yield url


def load_texts(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.text("SELECT content FROM conversation_history ORDER BY id"))]


def tiktoken_alone(texts: list[str]) -> float:
    """Messages/s of ``encode_ordinary`` over ``texts``, in memory, one core."""
    encode = tokens.encoding().encode_ordinary
    started = time.perf_counter()
    for text in texts:
        len(encode(text))
    return len(texts) / (time.perf_counter() - started)


T = TypeVar("T")


def beside_tiktoken(texts: list[str], measure: Callable[[], T]) -> tuple[T, float]:
    """``measure()``'s result and tiktoken alone's rate, measured just before and after it.

    This machine's CPU speed drifts by a fifth to a third within minutes (other tenants): a
    ratio holds only against tiktoken measured at the same time.
    """
    before = tiktoken_alone(texts)
    result = measure()
    return result, (before + tiktoken_alone(texts)) / 2


def naive_loop(url: sa.URL, sample: int) -> tuple[int, float]:
    """What a first script does: one row at a time, a round trip and a commit per row."""
    engine = database.create_engine(url)
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
        engine.dispose()


CORES = os.cpu_count() or 1


def database_alone(url: sa.URL) -> float:
    """Messages/s the database alone writes the backfill's results at: COPY into a temporary table, one UPDATE ... FROM.

    The values (token counts, importance) are computed first and not timed: only the database's
    share of the work is.
    """
    engine = database.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, role, content FROM conversation_history ORDER BY id")).all()
        encode = tokens.encoding().encode_ordinary
        values = [(id_, len(encode(content)), importance_of(role, content)) for id_, role, content in rows]
        raw = engine.raw_connection()
        try:
            driver = raw.driver_connection
            started = time.perf_counter()
            with driver.cursor() as cursor:
                cursor.execute("CREATE TEMPORARY TABLE counted (id bigint, token_count integer, "
                               "importance double precision) ON COMMIT DROP")
                with cursor.copy("COPY counted (id, token_count, importance) FROM STDIN") as copy:
                    for row in values:
                        copy.write_row(row)
                cursor.execute("UPDATE conversation_history AS m SET token_count = c.token_count, "
                               "importance = c.importance FROM counted AS c WHERE m.id = c.id")
            driver.commit()
            return len(values) / (time.perf_counter() - started)
        finally:
            raw.close()
    finally:
        engine.dispose()


def bound(database_rate: float, tiktoken_rate: float) -> float:
    """Messages/s no backfill can beat here: the database's work and tiktoken's share every core."""
    return CORES / (1 / database_rate + 1 / tiktoken_rate)


@dataclass(frozen=True)
class BackfillMeasure:
    """One ``backfill_context`` run: messages/s of the messages backfill and of the whole command."""

    messages_rate: float  # the messages backfill
    whole_rate: float  # the whole command (messages, then calls)
    started: backfill.BackfillStarted  # the workers and batches it chose


def backfill_rates(admin: sa.Engine, template: str, options: dict[str, int]) -> BackfillMeasure:
    """``backfill_context`` on a fresh copy, as the command runs it (``options`` as its flags)."""
    starts: list[backfill.BackfillStarted] = []
    with copy_of(admin, template) as copy:
        started = time.perf_counter()
        results = {r.backfill: r for r in backfill.backfill_context(
            url=copy, options=backfill.BackfillOptions(**options),
            reporter=lambda event: isinstance(event, backfill.BackfillStarted) and starts.append(event))}
        total = time.perf_counter() - started
    n = results["messages"].scanned
    return BackfillMeasure(n / results["messages"].seconds, n / total, starts[0])


def main() -> None:
    parser = environment.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=24_000)
    parser.add_argument("--naive-sample", type=int, default=20_000)
    environment.add_server_url_argument(parser)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each setting (the median ratio is printed)")
    parser.add_argument("--workers", type=int, help="also measure this many workers (with --batch-size if given)")
    parser.add_argument("--batch-size", type=int, help="also measure this batch size")
    args = parser.parse_args()
    settings_to_try: list[dict[str, int]] = [{}]
    given = {k: v for k, v in (("workers", args.workers), ("batch_size", args.batch_size)) if v}
    if given:
        settings_to_try.append(given)

    admin = scratch.admin_engine(args.server_url)
    template = scratch.unique_name("bench_backfill")
    scratch.create_database(admin, template)
    try:
        # The template: sample data as it stands before a backfill (no counts), vacuumed as an
        # established table is; each measurement runs on a copy of it.
        url = admin.url.set(database=template)
        counts = seed_before_backfill(url, args.calls)
        engine = database.create_engine(url, isolation_level="AUTOCOMMIT")
        print(f"seeded {counts.calls:,} calls, {counts.messages:,} messages; {CORES} cores")
        texts = load_texts(engine)
        engine.dispose()

        def database_rate() -> float:
            with copy_of(admin, template) as copy:
                return database_alone(copy)

        db, alone = beside_tiktoken(texts, database_rate)
        print(f"tiktoken alone, one core:             {alone:>9,.0f} messages/s")
        print(f"database alone (COPY + UPDATE ... FROM): {db:>7,.0f} messages/s")
        print(f"bound ({CORES} cores share both):          {bound(db, alone):>9,.0f} messages/s")

        def naive_rate() -> float:
            with copy_of(admin, template) as copy:
                n, seconds = naive_loop(copy, args.naive_sample)
            return n / seconds

        naive = naive_rate()
        print(f"naive per-row UPDATE loop:            {naive:>9,.0f} messages/s  "
              f"({args.naive_sample:,}-message sample)")
        for options in settings_to_try:
            label = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items()) or "defaults"
            ratios = []
            for _ in range(args.repeat):
                measure, alone = beside_tiktoken(texts, functools.partial(backfill_rates, admin, template, options))
                limit = bound(db, alone)
                ratio = measure.messages_rate / limit
                ratios.append(ratio)
                chosen = measure.started
                batches = f"batches of {chosen.batch_size}" if chosen.batch_size else \
                    f"batches sized to {chosen.target_seconds:g}s"
                print(f"backfill_context ({label}: {chosen.workers} workers ({chosen.workers_why}), {batches}): "
                      f"messages {measure.messages_rate:,.0f}/s = {ratio:.2f} of the bound ({limit:,.0f}/s with "
                      f"tiktoken alone at {alone:,.0f}/s), {measure.messages_rate / naive:.0f}x naive; "
                      f"whole command {measure.whole_rate:,.0f} messages/s")
            if args.repeat > 1:
                print(f"  median of {args.repeat}: {statistics.median(ratios):.2f} of the bound")
    finally:
        scratch.drop_database(admin, template)
        admin.dispose()


if __name__ == "__main__":
    main()
