#!/usr/bin/env python
"""Backfill throughput against tiktoken alone and a naive loop, side by side (run by hand).

    .venv/bin/python bench/backfill_throughput.py --calls 12500 --repeat 3   # about 310k messages

On a scratch PostgreSQL database seeded with calls/sample_data.py, measures in one run:
- tiktoken alone: ``encode_ordinary`` over the same texts, in memory, one core;
- a naive loop: per message, read it, count it, ``UPDATE ... WHERE id = %s``, commit (on a sample);
- the database alone: the same rows written by SQL only, one backend per core (what no backfill
  can go below), its rate and CPU; with tiktoken alone's CPU, the best any backfill could do on
  this machine (both spread over every core, nothing else);
- tiktoken on one core while every core runs it, against one core alone: a backfill keeps every
  core busy, and on shared virtual cores a busy machine's cores run slower; the best possible
  again, at that speed;
- ``backfill_context`` (messages, then calls) with the settings listed: the messages backfill
  (what the other two do: read, count and write every message) and the whole command, which
  then computes every call's context fields; and the whole command's CPU per message, on the
  machine (Linux's /proc/stat: every process, PostgreSQL's too) and in Python (this process and
  its workers), which shows where the time goes and whether the cores were kept busy.
The naive loop and each backfill run on a fresh copy of the seeded database (no counts yet, as
before a first backfill). Prints messages/s for each and the ratios the README quotes, each
against tiktoken alone measured just before and after it (the CPU's speed drifts on a shared
machine); ``--repeat`` runs each setting several times and prints the median. The databases are
dropped at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reautomation.settings")
os.environ.setdefault("SECRET_KEY", "benchmark-only")
# Every measurement names its own database; Django's default one is the server's, for the settings' sake.
os.environ.setdefault("DATABASE_URL", os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
                      .replace("+psycopg", ""))

import django  # noqa: E402

django.setup()

import sqlalchemy as sa  # noqa: E402

from calls import backfill, tokens  # noqa: E402
from calls.context_policy import importance_of  # noqa: E402
from calls.sample_data import generate_sample_data  # noqa: E402
from schema_engine import commands, database, scratch


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


def tiktoken_every_core(texts: list[str]) -> float:
    """Messages/s of tiktoken alone on one core while every core runs it (one process each)."""
    fork = multiprocessing.get_context("fork")
    rates = fork.SimpleQueue()
    processes = [fork.Process(target=lambda: rates.put(tiktoken_alone(texts))) for _ in range(CORES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return statistics.mean(rates.get() for _ in processes)


SPEED_PAIRS = 5


def loaded_core_speed(texts: list[str], pairs: int = SPEED_PAIRS) -> float:
    """How fast a core runs tiktoken while every core does, against one core alone (median of pairs).

    The backfill keeps every core busy; tiktoken alone runs on one while the others idle. On a
    virtual machine's shared cores the two speeds differ (the cores share caches, memory and
    the host's power budget), which sets the best any backfill can do here.
    """
    sample = texts[::4]
    return statistics.median(tiktoken_every_core(sample) / tiktoken_alone(sample) for _ in range(pairs))


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


# The database's own share of the work, with no Python at all: the same rows written by SQL in
# batches of 2,000 ids, one transaction each, by one backend per core. The values are stand-ins:
# length(content) for a token count, a call's per-call sums for its fields (no policy, no replay).
DATABASE_ALONE = {
    "conversation_history": "UPDATE conversation_history SET token_count = length(content), importance = 0.5 "
                            "WHERE id > lo AND id <= lo + {batch}",
    "calls": "UPDATE calls AS c SET total_context_tokens = s.tokens + s.n, context_pruned = FALSE, "
             "pruning_count = 0 FROM (SELECT call_id, count(*) AS n, sum(token_count) AS tokens "
             "FROM conversation_history WHERE call_id > lo AND call_id <= lo + {batch} GROUP BY call_id) AS s "
             "WHERE c.id = s.call_id",
}


CORES = os.cpu_count() or 1


def machine_cpu_seconds() -> float:
    """CPU seconds every process on this machine has used so far (Linux: /proc/stat)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def database_alone(url: sa.URL, batch: int = 2000,
                   backends: int = CORES) -> dict[str, tuple[float, float]]:
    """Per table: the seconds the database alone takes to write its backfilled rows on every
    core, and the CPU seconds the machine spends meanwhile."""
    engine = database.create_engine(url)
    spent = {}
    try:
        for table, update in DATABASE_ALONE.items():
            with engine.connect() as conn:
                top = conn.execute(sa.text(f"SELECT max(id) FROM {table}")).scalar_one()

            def write_share(first: int, top: int = top, update: str = update) -> None:
                raw = engine.raw_connection()
                try:
                    raw.driver_connection.autocommit = True  # the DO block commits each batch itself
                    raw.driver_connection.execute(
                        f"DO $$ DECLARE lo bigint; BEGIN SET LOCAL synchronous_commit TO OFF; "
                        f"FOR lo IN SELECT generate_series({first}, {top}, {batch * backends}) LOOP "
                        f"{update.format(batch=batch)}; COMMIT; END LOOP; END $$")
                finally:
                    raw.close()

            threads = [threading.Thread(target=write_share, args=(i * batch,)) for i in range(backends)]
            started, cpu = time.perf_counter(), machine_cpu_seconds()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            spent[table] = (time.perf_counter() - started, machine_cpu_seconds() - cpu)
    finally:
        engine.dispose()
    return spent


def best_possible(messages: int, database_cpu: float, tiktoken_rate: float) -> float:
    """Messages/s with the database alone's CPU and tiktoken's spread over every core, nothing else."""
    return messages * CORES / (database_cpu + messages / tiktoken_rate)


def python_cpu_seconds() -> float:
    """CPU seconds of this process and its ended children (the forked workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class BackfillMeasure:
    """One ``backfill_context`` run: messages/s, and CPU per message (the whole command)."""

    messages_rate: float  # the messages backfill
    whole_rate: float  # the whole command (messages, then calls)
    python_cpu: float  # seconds per message: the command and its workers
    machine_cpu: float  # seconds per message: every process (PostgreSQL's the rest, with other tenants')
    cores_busy: float  # share of the machine's cores in use during the run


def backfill_rates(admin: sa.Engine, template: str, options: dict[str, int]) -> BackfillMeasure:
    """``backfill_context`` on a fresh copy: the messages backfill, the whole command and its CPU."""
    with copy_of(admin, template) as copy:
        machine, python, started = machine_cpu_seconds(), python_cpu_seconds(), time.perf_counter()
        results = {r.backfill: r for r in backfill.backfill_context(
            url=copy, options=backfill.BackfillOptions(**options))}
        total = time.perf_counter() - started
        machine, python = machine_cpu_seconds() - machine, python_cpu_seconds() - python
    n = results["messages"].scanned
    return BackfillMeasure(n / results["messages"].seconds, n / total, python / n, machine / n,
                           machine / total / CORES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=12_500)
    parser.add_argument("--naive-sample", type=int, default=20_000)
    parser.add_argument("--server-url", default=os.environ.get(
        "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--repeat", type=int, default=1, help="runs of each setting (the median is printed)")
    parser.add_argument("--workers", type=int, help="measure only this setting (with --batch-size)")
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args()
    settings_to_try = ([dict(workers=args.workers, batch_size=args.batch_size)] if args.workers else
                       [dict(workers=1), dict(workers=2), dict(workers=2, batch_size=2000),
                        dict(workers=3, batch_size=2000)])

    admin = scratch.admin_engine(args.server_url)
    template = scratch.unique_name("bench_backfill")
    scratch.create_database(admin, template)
    try:
        # The template: sample data as it stands before a backfill (no counts), vacuumed as an
        # established table is; each measurement runs on a copy of it.
        url = admin.url.set(database=template)
        commands.upgrade(revision="head", url=url)
        with database.connect(url) as conn:
            counts = generate_sample_data(connection=conn, calls=args.calls)
        engine = database.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
        print(f"seeded {counts.calls:,} calls, {counts.messages:,} messages")
        texts = load_texts(engine)
        engine.dispose()

        def naive_rate() -> float:
            with copy_of(admin, template) as copy:
                n, seconds = naive_loop(copy, args.naive_sample)
            return n / seconds

        naive, alone = beside_tiktoken(texts, naive_rate)
        print(f"tiktoken alone, one core:          {alone:>10,.0f} messages/s")
        print(f"naive per-row UPDATE loop:         {naive:>10,.0f} messages/s  ({args.naive_sample:,}-message sample)")

        def database_seconds() -> dict[str, tuple[float, float]]:
            with copy_of(admin, template) as copy:
                return database_alone(copy)

        db, alone = beside_tiktoken(texts, database_seconds)
        (messages_s, messages_cpu), (calls_s, calls_cpu) = db["conversation_history"], db["calls"]
        print(f"database alone (SQL, {CORES} backends): messages {counts.messages / messages_s:,.0f}/s, "
              f"then calls {counts.calls / calls_s:,.0f}/s; CPU per message {messages_cpu / counts.messages * 1e6:.1f} "
              f"us, then {calls_cpu / counts.messages * 1e6:.1f} us for the calls")
        best = best_possible(counts.messages, messages_cpu, alone)
        best_whole = best_possible(counts.messages, messages_cpu + calls_cpu, alone)
        print(f"best possible on this machine's {CORES} cores (the database alone's CPU and tiktoken's, every core "
              f"busy, no other work): messages {best:,.0f}/s = {best / alone:.2f}x tiktoken alone; whole command "
              f"{best_whole:,.0f}/s = {best_whole / alone:.2f}x")
        speed = loaded_core_speed(texts)
        loaded = best_possible(counts.messages, messages_cpu, alone * speed)
        loaded_whole = best_possible(counts.messages, messages_cpu + calls_cpu, alone * speed)
        print(f"tiktoken on each core while all {CORES} run it: {speed:.2f}x one core alone (median of {SPEED_PAIRS}); "
              f"at that speed the best possible is messages {loaded / alone:.2f}x, whole command {loaded_whole / alone:.2f}x")
        for options in settings_to_try:
            label = ", ".join(f"{k}={v}" for k, v in options.items())
            ratios = []
            for _ in range(args.repeat):
                measure, alone = beside_tiktoken(texts, functools.partial(backfill_rates, admin, template, options))
                phase, whole = measure.messages_rate, measure.whole_rate
                ratios.append((phase / alone, whole / alone))
                print(f"backfill_context ({label}): messages backfill {phase:,.0f} messages/s "
                      f"= {phase / alone:.2f}x tiktoken alone ({alone:,.0f}/s), {phase / naive:.0f}x naive; "
                      f"whole command (messages, then calls) {whole:,.0f} messages/s "
                      f"= {whole / alone:.2f}x, {whole / naive:.0f}x naive")
                print(f"  CPU per message, whole command: {measure.machine_cpu * 1e6:.1f} us on the machine "
                      f"(cores {measure.cores_busy:.0%} busy), {measure.python_cpu * 1e6:.1f} us of it in Python "
                      f"(tiktoken alone: {1e6 / alone:.1f} us), the rest PostgreSQL's")
            if args.repeat > 1:
                print(f"  median of {args.repeat}: messages backfill {statistics.median(r[0] for r in ratios):.2f}x, "
                      f"whole command {statistics.median(r[1] for r in ratios):.2f}x tiktoken alone")
    finally:
        scratch.drop_database(admin, template)
        admin.dispose()


if __name__ == "__main__":
    main()
