#!/usr/bin/env python
"""A forecast held against what happened, on about 3M messages (run by hand, on the topology's primary).

    scripts/topology up > topology.env && set -a && . ./topology.env && set +a
    export TEST_POSTGRES_URL=$MIGRATION_DATABASE_URL      # the topology's primary
    .venv/bin/python bench/forecast_honesty.py                   # seeds about 3.3M messages, runs, drops all
    .venv/bin/python bench/forecast_honesty.py --keep-template   # keeps the seeded database; then --reuse
    .venv/bin/python bench/forecast_honesty.py --calls 2000 --capture-seconds 20   # a quick check

The forecast copies a whole server (pg_basebackup), so it runs against one the forecast may copy:
the topology's primary (``scripts/topology up``), named by ``TEST_POSTGRES_URL``.

Seeds a database at revision 003 with calls/sample_data.py (400k calls, about 3.3M messages with
``--max-turns 13``), kept as a template; a copy of it (CREATE DATABASE ... TEMPLATE) is the
"production" database. Pending there: the real 004 (its indexes built CONCURRENTLY) to head, and a
deliberately blocking revision written on top of head into a scratch copy of migrations_alembic,
``ALTER TABLE conversation_history ALTER COLUMN turn_index TYPE bigint`` (a rewrite of every row
and index under an AccessExclusiveLock). Then:

1. ``capture``: the bench writers (calls/workload.py, ``--writers`` threads each every
   ``--interval-ms`` inserting a call and two messages, completing a random call, counting a random
   message's tokens) write to it for ``--capture-seconds`` while ``migrate_schema capture`` records
   the primary's statements;
2. ``forecast``: the pending revisions on a copy of the primary (and a replica following it), that
   capture replayed by pgreplay at its recorded pace; the default limits' verdict;
3. what happened: the same writers on the original while the same revisions apply there
   (``calls.workload.apply_beside``), each timed as the forecast times it.

Prints, per revision, the duration and the writers' longest wait forecast and real, their ratio, and
whether they agree (within 2x, or 0.25 s for figures too short for a factor: ``calls.workload.within``);
then the verdict. Target: 004 and the blocking revision agree on both figures, the blocking revision
is refused and 004 passes. ``--json`` prints the same as one JSON object.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import environment
from alembic.script import ScriptDirectory

SCRATCH = Path(tempfile.mkdtemp(prefix="bench-forecast-"))
MIGRATIONS = SCRATCH / "migrations_alembic"
TEMPLATE = "bench_forecast_template"
TARGET = "bench_forecast"
INDEXES = "004_performance_indexes"
BLOCKING = "900_rewrite_messages"
BLOCKING_SOURCE = '''"""Rewrites conversation_history: turn_index becomes bigint (the bench's blocking revision).

Revision ID: {revision}
Revises: {head}
"""
from alembic import op

revision = "{revision}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE conversation_history ALTER COLUMN turn_index TYPE bigint")


def downgrade() -> None:
    op.execute("ALTER TABLE conversation_history ALTER COLUMN turn_index TYPE integer")
'''


def scratch_migrations() -> None:
    """migrations_alembic with the blocking revision on top of its head, where ALEMBIC_SCRIPT_LOCATION points."""
    shutil.copytree(environment.ROOT / "migrations_alembic", MIGRATIONS, ignore=shutil.ignore_patterns("__pycache__"))
    head = ScriptDirectory(str(environment.ROOT / "migrations_alembic")).get_current_head()
    (MIGRATIONS / "versions" / f"{BLOCKING}.py").write_text(BLOCKING_SOURCE.format(revision=BLOCKING, head=head))


scratch_migrations()  # before Django starts: the site reads the chain where ALEMBIC_SCRIPT_LOCATION points
environment.set_up(ALEMBIC_SCRIPT_LOCATION=str(MIGRATIONS))

from bench.seeding import seed_before_backfill
from calls.workload import DEFAULT_INTERVAL, DEFAULT_WRITERS, Writers, apply_beside, within
from schema_engine.forecast import capture, verdict
from schema_engine.forecast.run import forecast
from schema_engine.progress import Event


def say(event: Event) -> None:
    print(f"  {event.describe()}", flush=True)


def run(args: object) -> dict[str, object]:
    if not args.reuse:
        started = time.perf_counter()
        counts = seed_before_backfill(environment.fresh_database(TEMPLATE), args.calls,
                                      revision="003_context_management", max_turns=args.max_turns)
        print(f"seeded {counts.calls:,} calls and {counts.messages:,} messages at 003 in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    dsn = environment.fresh_database(TARGET, template=TEMPLATE, file_copy=True)
    url = environment.sqlalchemy_url(dsn)
    window = SCRATCH / "window.log"
    print(f"capture: the bench writers on {TARGET} for {args.capture_seconds:g} s", flush=True)
    writers = Writers(dsn, count=args.writers, interval=args.interval_ms / 1000)
    try:
        taken = capture.capture(window, url=url, seconds=args.capture_seconds, databases=[TARGET], reporter=say)
    finally:
        captured_writes = writers.stop()
    print(f"  captured {taken.describe()}; the writers made {captured_writes.statements:,} statements", flush=True)

    print("forecast: the pending revisions on a copy, the capture replayed", flush=True)
    forecasted = forecast(url=url, capture=taken.path, sample_batches=args.sample_batches, reporter=say)
    pending = [rev.revision for rev in forecasted.revisions]
    problems = verdict.problems(forecasted, verdict.Limits.from_settings())

    print("what happened: the same revisions on the original beside the same writers", flush=True)
    writers = Writers(dsn, count=args.writers, interval=args.interval_ms / 1000)
    try:
        time.sleep(args.warm_up)  # the writers' steady pace before the first revision, as in the capture
        happened = {applied.revision: applied for applied in apply_beside(writers, url, pending)}
    finally:
        live = writers.stop()
    rows = []
    for rev in forecasted.revisions:
        real = happened[rev.revision]
        rows.append({"revision": rev.revision, "forecast_seconds": rev.seconds, "real_seconds": real.seconds,
                     "forecast_longest_wait": rev.longest_wait, "real_longest_wait": real.longest_wait,
                     "replica_lag": rev.replica_lag, "error": rev.error,
                     "agrees": within(rev.seconds, real.seconds) and within(rev.longest_wait, real.longest_wait)})
    return {"copy_bytes": forecasted.copy_bytes, "copy_seconds": forecasted.copy_seconds,
            "capture": {"statements": taken.statements, "seconds": taken.seconds, "bytes": taken.bytes},
            "writers_failed_live": live.failed, "revisions": rows, "problems": problems,
            "limits": asdict(verdict.Limits.from_settings()),
            "target_met": all(row["agrees"] for row in rows if row["revision"] in (INDEXES, BLOCKING))
            and any(BLOCKING in problem for problem in problems)
            and not any(INDEXES in problem for problem in problems)}


def ratio(forecast_value: float, real: float) -> str:
    return f"{forecast_value / real:.2f}x" if real > 0 else "-"


def main() -> None:
    parser = environment.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=400_000)
    parser.add_argument("--max-turns", type=int, default=13, help="13: about 8 messages a call")
    parser.add_argument("--writers", type=int, default=DEFAULT_WRITERS)
    parser.add_argument("--interval-ms", type=float, default=DEFAULT_INTERVAL * 1000,
                        help="pause between a writer's rounds")
    parser.add_argument("--capture-seconds", type=float, default=240.0,
                        help="the captured window: longer than the pending revisions take on the copy")
    parser.add_argument("--warm-up", type=float, default=2.0, help="seconds of writing before the real revisions")
    parser.add_argument("--sample-batches", type=int, default=5)
    parser.add_argument("--json", action="store_true", dest="as_json")
    environment.add_template_arguments(parser)
    args = parser.parse_args()
    try:
        result = run(args)
    finally:
        environment.drop_database(TARGET)
        if not args.keep_template:
            environment.drop_database(TEMPLATE)
        shutil.rmtree(SCRATCH, ignore_errors=True)
    if args.as_json:
        print(json.dumps(result, indent=2))
        return
    print(f"\ncopy: {result['copy_bytes'] / 2**20:,.0f} MiB in {result['copy_seconds']:.1f} s; capture: "
          f"{result['capture']['statements']:,} statements in {result['capture']['seconds']:.0f} s")
    print(f"{'revision':<28} {'duration: forecast':>18} {'real':>8} {'ratio':>6}   "
          f"{'longest wait: forecast':>22} {'real':>8} {'ratio':>6}  {'replica lag':>11}  agrees")
    for row in result["revisions"]:
        lag = "-" if row["replica_lag"] is None else f"{row['replica_lag']:.2f}s"
        print(f"{row['revision']:<28} {row['forecast_seconds']:>17.2f}s {row['real_seconds']:>7.2f}s "
              f"{ratio(row['forecast_seconds'], row['real_seconds']):>6}   {row['forecast_longest_wait']:>21.2f}s "
              f"{row['real_longest_wait']:>7.2f}s {ratio(row['forecast_longest_wait'], row['real_longest_wait']):>6}"
              f"  {lag:>11}  {'yes' if row['agrees'] else 'NO'}")
    print("\nverdict (default limits):" if result["problems"] else "\nverdict (default limits): within every limit")
    for problem in result["problems"]:
        print(f"  refused: {problem}")
    print(f"failed writes while the revisions applied for real: {result['writers_failed_live']}")
    print(f"\ntarget: 004 and {BLOCKING} within 2x on duration and longest wait, {BLOCKING} refused, 004 passes: "
          f"{'met' if result['target_met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
