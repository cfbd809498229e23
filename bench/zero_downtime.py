#!/usr/bin/env python
"""What a zero-downtime change costs live writers: an expand's dual-write triggers, and its fill beside them (by hand).

    .venv/bin/python bench/zero_downtime.py                   # seeds about 3M messages, runs, drops all
    .venv/bin/python bench/zero_downtime.py --keep-template   # keeps the seeded database; then --reuse
    .venv/bin/python bench/zero_downtime.py --calls 2000 --seconds 5   # a quick check (measures little)

Seeds a PostgreSQL database at head with calls/sample_data.py (121,000 calls, about 3M messages),
runs the built-in backfills on it (token counts filled, as an established database has them),
then compacts it (``VACUUM FULL``: no free space in its pages, so no fill update is HOT for free)
and vacuums it. Two expand revisions are written on top of the real chain into a scratch copy of
migrations_alembic, as ``revision --autogenerate`` writes them for a widened field: ``ChangeType``
of ``calls.duration_seconds`` and of ``conversation_history.token_count``, integer -> bigint.
Applied by ``migrate_schema upgrade``, each adds its new column, its real sync trigger and its
version schema (schema_engine/versioning). On fresh copies of the seeded database
(CREATE DATABASE ... TEMPLATE):

- idle: the expands, then ``manage.py backfill_context --only expand_<messages' expand>`` alone;
- live: ``--writers`` threads that each, every ``--interval-ms``, insert a call, insert two messages
  for it, update a random call and update a random message (each statement its own transaction:
  bench/writer_stall.py's writers). In turn, ``--seconds`` each after ``--warm-up``:
  1. the release before the change (public tables), no triggers yet;
  2. the expands (``migrate_schema upgrade head``) while they write;
  3. the same writers, now firing the triggers (their old columns converted up);
  4. the release after it: the same writes through the version schemas' views (``search_path``;
     its updates of ``token_count`` write the new column, converted down);
  5. the fill, as in idle, beside the release-after writers.
  Then every message's two columns are compared.

Prints the writers' statements, p50/p99/longest latency and failed writes per phase (and p50/p99
by statement), the fill's duration and rows/s idle and beside the writers. Target, as for the
context backfill (bench/backfill_under_load.py): the writers' p99 during the fill at most 2x
their p99 just before it, no failed write. ``--json`` prints the same as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import environment

environment.set_up()

import psycopg
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from psycopg.conninfo import make_conninfo

from bench.seeding import vacuum_analyze
from bench.writer_stall import Writer
from calls.sample_data import generate_sample_data
from schema_engine import commands, config, database, versioning

NAME = "bench_zero_downtime"
P99_FACTOR = 2.0
REAL_HEAD = ScriptDirectory.from_config(config.alembic_config()).get_current_head()
# The two expand revisions (ids as autogenerate makes them), each widening one column, in chain order.
EXPANDS = {
    "b25be0c0ca11": versioning.ChangeType("calls", "duration_seconds", sa.BigInteger(),
                                          up="duration_seconds::bigint", down="duration_seconds::integer"),
    "b25be0c0c0b5": versioning.ChangeType("conversation_history", "token_count", sa.BigInteger(),
                                          up="token_count::bigint", down="token_count::integer"),
}
MESSAGES_EXPAND = "b25be0c0c0b5"
FILL = versioning.fill_name(MESSAGES_EXPAND)
NEW_TOKEN_COUNT = versioning.physical_name(MESSAGES_EXPAND, "token_count")
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,40}")
_APPLIED = re.compile(r"Applied \S+\s+([\d.]+)s")
_FILLED = re.compile(r"([\d,]+) of [\d,]+ rows changed in ([\d.]+)s \(([\d,]+) rows/s\)")
KINDS = ("insert calls", "insert messages", "update calls", "update messages")

REVISION = '''"""Expand: {table}.{column} becomes bigint (written by bench/zero_downtime.py into a scratch copy)."""
import sqlalchemy as sa

from migrations_alembic.expand import ChangeType, expand, undo_expand

revision = "{revision}"
down_revision = "{parent}"
branch_labels = None
depends_on = None

# The new shape beside the old one (migrations_alembic/expand.py), for the release before this revision
# and the release after it at once; its contract revision removes the old shape.
expand_steps = [
    ChangeType({table!r}, {column!r}, sa.BigInteger(), up={up!r}, down={down!r}),
]


def upgrade() -> None:
    expand(revision, expand_steps)


def downgrade() -> None:
    undo_expand(revision, expand_steps)
'''


def note(message: str) -> None:
    """Progress, on stderr: stdout is the result (a table, or JSON)."""
    print(message, file=sys.stderr, flush=True)


def scratch_migrations(directory: Path) -> Path:
    """A copy of migrations_alembic with the two expand revisions on top of its head; return its path."""
    target = directory / "migrations_alembic"
    shutil.copytree(environment.ROOT / "migrations_alembic", target, ignore=shutil.ignore_patterns("__pycache__"))
    parent = REAL_HEAD
    for revision, step in EXPANDS.items():
        (target / "versions" / f"{revision}_expand_{step.table}.py").write_text(REVISION.format(
            revision=revision, parent=parent, table=step.table, column=step.column, up=step.up, down=step.down))
        parent = revision
    return target


def manage_command(dsn: str, *args: str, migrations: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """``manage.py *args`` on ``dsn``, with ``migrations`` as the code's revisions (else the real ones)."""
    env = dict(os.environ, DATABASE_URL=dsn)
    env.pop("ALEMBIC_SCRIPT_LOCATION", None)
    if migrations is not None:
        env["ALEMBIC_SCRIPT_LOCATION"] = str(migrations)
    return [sys.executable, str(environment.ROOT / "manage.py"), *args], env


def outcome(args: tuple[str, ...], returncode: int, stdout: str, stderr: str) -> list[str]:
    """The command's output lines; a failure ends the benchmark with its message."""
    if returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed: {(stderr or stdout).strip()}")
    return stdout.strip().splitlines()


def manage(dsn: str, *args: str, migrations: Path | None = None) -> tuple[float, list[str]]:
    """Run ``manage.py *args`` on ``dsn`` as an operator does; return its duration and its output lines."""
    command, env = manage_command(dsn, *args, migrations=migrations)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    return seconds, outcome(args, done.returncode, done.stdout, done.stderr)


def revisions_seconds(lines: list[str]) -> float:
    """The seconds ``migrate_schema upgrade`` reported for the revisions it applied (``Applied <rev> 0.05s``)."""
    return sum(float(m.group(1)) for line in lines if (m := _APPLIED.search(line)))


def seed(template: str, calls: int) -> None:
    """The template: sample data at head, the built-in backfills run, compacted and vacuumed."""
    dsn = environment.fresh_database(template)
    url = environment.sqlalchemy_url(dsn)
    started = time.perf_counter()
    commands.upgrade(revision="head", url=url)
    with database.connect(url) as conn:
        counts = generate_sample_data(connection=conn, calls=calls)
    note(f"seeded {counts.calls:,} calls and {counts.messages:,} messages in {time.perf_counter() - started:.0f} s")
    seconds, _ = manage(dsn, "backfill_context")
    note(f"built-in backfills (token counts) in {seconds:.0f} s")
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM (FULL) calls, conversation_history")
    vacuum_analyze(url)
    note(f"compacted and vacuumed in {time.perf_counter() - started:.0f} s")


def sizes(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return (conn.execute("SELECT count(*) FROM calls").fetchone()[0],
                conn.execute("SELECT count(*) FROM conversation_history").fetchone()[0])


@dataclass(eq=False)  # a Thread must stay hashable
class KindWriter(Writer):
    """bench/writer_stall.py's writer, noting which statement each sample timed."""

    kinds: list[str] = field(default_factory=list)

    def timed(self, conn: psycopg.Connection, sql: str, params: tuple) -> psycopg.Cursor:
        cursor = super().timed(conn, sql, params)  # a failed statement is not sampled, nor kinded
        words = sql.split()
        table = words[2] if words[0] == "INSERT" else words[1]
        self.kinds.append(f"{words[0].lower()} {'messages' if table == 'conversation_history' else table}")
        return cursor


class Writers:
    """One release's writers on ``dsn``; ``conninfo`` options say which release (search_path, application_name)."""

    def __init__(self, dsn: str, args: argparse.Namespace, **conninfo: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            max_call_id = conn.execute("SELECT max(id) FROM calls").fetchone()[0]
            max_message_id = conn.execute("SELECT max(id) FROM conversation_history").fetchone()[0]
        self.stop = threading.Event()
        self.threads = [KindWriter(make_conninfo(dsn, **conninfo), args.interval_ms / 1000, max_call_id,
                                   max_message_id, self.stop) for _ in range(args.writers)]
        for thread in self.threads:
            thread.start()

    def failed(self) -> int:
        return sum(len(thread.errors) for thread in self.threads)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


@dataclass
class Window:
    """A phase: when it ran, and the writers' failures counted at its ends."""

    label: str
    start: float
    end: float = 0.0
    failed: int = 0


def watched(writers: Writers, label: str, work: float | None = None) -> Window:
    """``work`` seconds of writing (None: until the caller ends the window with ``close``)."""
    window = Window(label, time.perf_counter(), failed=writers.failed())
    if work is not None:
        time.sleep(work)
        close(window, writers)
    return window


def close(window: Window, writers: Writers) -> None:
    window.end, window.failed = time.perf_counter(), writers.failed() - window.failed


def percentile(ordered: list[float], share: float) -> float:
    """The ``share`` percentile of ``ordered`` (the other bench scripts' nearest-rank rule), in ms."""
    return ordered[max(0, int(len(ordered) * share) - 1)] * 1000


@dataclass
class PhaseFigures:
    label: str
    seconds: float
    statements: int
    p50_ms: float
    p99_ms: float
    longest_ms: float
    failed: int
    by_kind: dict[str, dict[str, float]]  # kind: statements, p50_ms, p99_ms


def figures(writers: Writers, window: Window) -> PhaseFigures:
    """The writers' latencies in ``window`` (read once they have stopped)."""
    timed = [(seconds, kind) for thread in writers.threads
             for (at, seconds), kind in zip(thread.samples, thread.kinds) if window.start <= at <= window.end]
    if not timed:
        raise SystemExit(f"no writer statement finished during {window.label!r}: give --seconds more")
    every = sorted(seconds for seconds, _ in timed)
    by_kind = {}
    for kind in KINDS:
        of_kind = sorted(seconds for seconds, k in timed if k == kind)
        if of_kind:
            by_kind[kind] = {"statements": len(of_kind), "p50_ms": statistics.median(of_kind) * 1000,
                             "p99_ms": percentile(of_kind, 0.99)}
    return PhaseFigures(window.label, window.end - window.start, len(every), statistics.median(every) * 1000,
                        percentile(every, 0.99), every[-1] * 1000, window.failed, by_kind)


@dataclass
class Fill:
    rows: int
    seconds: float  # the engine's own, from its summary line
    rows_per_s: float
    command_seconds: float  # the whole command, Python's start included
    lines: list[str]


def fill(dsn: str, migrations: Path, writers: Writers | None = None) -> tuple[Fill, Window | None]:
    """``backfill_context --only expand_<E>``, the real engine with its health signals, as an operator runs it.

    With ``writers``, also the window in which they wrote beside it: from its run's start (its row in
    backfill_runs; the command's Python start before that is left out) to the command's end.
    """
    args = ("backfill_context", "--only", FILL)
    command, env = manage_command(dsn, *args, migrations=migrations)
    window = None
    with psycopg.connect(dsn, autocommit=True) as conn:
        runs = "SELECT count(*) FROM backfill_runs WHERE backfill = %s"
        before = conn.execute(runs, (FILL,)).fetchone()[0]
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if writers is not None:  # from the command's start, should it end before its run is seen
            window = watched(writers, f"release after, during the fill {FILL}")
        while process.poll() is None and conn.execute(runs, (FILL,)).fetchone()[0] == before:
            time.sleep(0.02)
        if writers is not None and process.poll() is None:
            window = watched(writers, window.label)
        stdout, stderr = process.communicate()
    if window is not None:
        close(window, writers)
    lines = outcome(args, process.returncode, stdout, stderr)
    summary = next((m for line in lines if (m := _FILLED.search(line))), None)
    if summary is None:
        raise SystemExit(f"{FILL} reported no rows filled: {' / '.join(lines)}")
    rows, seconds, rate = (float(group.replace(",", "")) for group in summary.groups())
    return Fill(int(rows), seconds, rate, time.perf_counter() - started,
                [line for line in lines if "rows scanned" not in line]), window


def disagreeing(dsn: str) -> tuple[int, int]:
    """Messages whose two token counts differ, and messages the fill left (both 0 when all is well)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        differ = conn.execute(f'SELECT count(*) FROM conversation_history WHERE "{NEW_TOKEN_COUNT}" '
                              "IS DISTINCT FROM token_count::bigint").fetchone()[0]
        pending = versioning.pending_sql(MESSAGES_EXPAND, "conversation_history", [EXPANDS[MESSAGES_EXPAND]])
        left = conn.execute(f"SELECT count(*) FROM conversation_history WHERE {pending}").fetchone()[0]
    return differ, left


def run(args: argparse.Namespace, migrations: Path) -> dict[str, object]:
    template, target = f"{args.name}_template", args.name
    if not args.reuse:
        seed(template, args.calls)
    try:
        idle = None
        if not args.no_idle:
            dsn = environment.fresh_database(target, template=template, file_copy=True)
            manage(dsn, "migrate_schema", "-v0", "upgrade", "head", migrations=migrations)
            idle, _ = fill(dsn, migrations)
            note(f"idle: {FILL} at {idle.rows_per_s:,.0f} rows/s in {idle.seconds:.1f} s")

        dsn = environment.fresh_database(target, template=template, file_copy=True)
        calls, messages = sizes(dsn)
        old = Writers(dsn, args, application_name=versioning.release_application_name(REAL_HEAD))
        time.sleep(args.warm_up)
        no_triggers = watched(old, "release before, no triggers", args.seconds)
        note(f"measured {no_triggers.label}")
        expanding = watched(old, "during the expands (migrate_schema upgrade)")
        _, applied = manage(dsn, "migrate_schema", "upgrade", "head", migrations=migrations)
        close(expanding, old)
        time.sleep(args.warm_up)
        triggers = watched(old, "release before, with the triggers", args.seconds)
        note(f"expanded in {revisions_seconds(applied):.2f} s; measured {triggers.label}")
        old.finish()
        old_figures = [figures(old, w) for w in (no_triggers, expanding, triggers)]

        views = ",".join(versioning.version_schema(revision) for revision in reversed(EXPANDS))
        new = Writers(dsn, args, options=f"-c search_path={views},public",
                      application_name=versioning.release_application_name(MESSAGES_EXPAND))
        time.sleep(args.warm_up)
        before = watched(new, "release after (views), with the triggers", args.seconds)
        loaded, during = fill(dsn, migrations, new)
        note(f"beside the writers: {FILL} at {loaded.rows_per_s:,.0f} rows/s in {loaded.seconds:.1f} s")
        new.finish()
        new_figures = [figures(new, w) for w in (before, during)]
        differ, left = disagreeing(dsn)
    finally:
        environment.drop_database(target)
        if not args.keep_template:
            environment.drop_database(template)

    phases = [*old_figures, *new_figures]
    p99_ratio = new_figures[1].p99_ms / new_figures[0].p99_ms
    return {
        "calls": calls, "messages": messages, "writers": args.writers, "interval_ms": args.interval_ms,
        "expands": [{"revision": revision, **step.as_json()} for revision, step in EXPANDS.items()],
        "expand_seconds": revisions_seconds(applied), "expand_command_seconds": expanding.end - expanding.start,
        "phases": [asdict(p) for p in phases],
        "triggers_p50_ratio": old_figures[2].p50_ms / old_figures[0].p50_ms,
        "triggers_p99_ratio": old_figures[2].p99_ms / old_figures[0].p99_ms,
        "fill": {"name": FILL, "column": f"conversation_history.{NEW_TOKEN_COUNT}",
                 "idle": asdict(idle) if idle else None, "beside_writers": asdict(loaded),
                 "share_of_idle": loaded.rows_per_s / idle.rows_per_s if idle else None},
        "messages_disagreeing": differ, "messages_left_to_fill": left,
        "target": {"p99_factor": P99_FACTOR, "p99_ratio": p99_ratio,
                   "met": p99_ratio <= P99_FACTOR and not new_figures[1].failed and not differ and not left},
    }


def show(result: dict[str, object]) -> None:
    phases = result["phases"]
    expands = ", ".join(f"{e['revision']} ({e['table']}.{e['column']} -> {e['type'].lower()})"
                        for e in result["expands"])
    print(f"{result['calls']:,} calls, {result['messages']:,} messages; {result['writers']} writers, "
          f"every {result['interval_ms']:g} ms; expands {expands}")
    width = max(len(p["label"]) for p in phases)
    print(f"\n{'writers':<{width}} {'seconds':>8} {'statements':>10} {'p50':>8} {'p99':>8} {'longest':>9} failed")
    for p in phases:
        print(f"{p['label']:<{width}} {p['seconds']:>8.1f} {p['statements']:>10,} {p['p50_ms']:>6.1f}ms "
              f"{p['p99_ms']:>6.1f}ms {p['longest_ms']:>7.1f}ms {p['failed']:>6}")
    print(f"\n{'p50 / p99 by statement (ms)':<{width}} " + " ".join(f"{kind:>16}" for kind in KINDS))
    for p in phases:
        cells = (f"{k['p50_ms']:.1f} / {k['p99_ms']:.1f}" if (k := p["by_kind"].get(kind)) else "-" for kind in KINDS)
        print(f"{p['label']:<{width}} " + " ".join(f"{cell:>16}" for cell in cells))
    print(f"\ntriggers: the writers' p50 {result['triggers_p50_ratio']:.2f}x, p99 {result['triggers_p99_ratio']:.2f}x "
          f"theirs without them; the expand revisions took {result['expand_seconds']:.2f} s "
          f"(migrate_schema upgrade, Python's start included: {result['expand_command_seconds']:.1f} s)")
    fill_ = result["fill"]
    loaded, idle = fill_["beside_writers"], fill_["idle"]
    idle_text = (f"idle {idle['rows']:,} rows in {idle['seconds']:.1f} s, {idle['rows_per_s']:,.0f} rows/s; "
                 if idle else "")
    share = f" = {fill_['share_of_idle']:.2f} of idle" if idle else ""
    print(f"fill {fill_['name']} ({fill_['column']}): {idle_text}beside the writers {loaded['rows']:,} rows in "
          f"{loaded['seconds']:.1f} s, {loaded['rows_per_s']:,.0f} rows/s{share}")
    for line in loaded["lines"]:
        print(f"  {line}")
    print(f"messages whose two columns differ: {result['messages_disagreeing']:,}; "
          f"left to fill: {result['messages_left_to_fill']:,}")
    target = result["target"]
    print(f"\ntarget: writers' p99 during the fill <= {target['p99_factor']:g}x just before it "
          f"({target['p99_ratio']:.2f}x), no failed write, every message's columns agree: "
          f"{'met' if target['met'] else 'NOT met'}")


def rounded(value: object) -> object:
    """``value`` with every float to 3 decimals (a JSON result a person can read too)."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def main() -> None:
    parser = environment.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=121_000, help="121,000: about 3M messages")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--interval-ms", type=float, default=5.0, help="pause between a writer's rounds")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measured writers' phase")
    parser.add_argument("--warm-up", type=float, default=2.0, help="seconds of writing before a phase is measured")
    parser.add_argument("--no-idle", action="store_true", help="skip the idle fill (one copy of the database less)")
    parser.add_argument("--name", default=NAME, help=f"the databases' name ({NAME}, and {NAME}_template)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    environment.add_template_arguments(parser)
    args = parser.parse_args()
    if not _NAME.fullmatch(args.name):
        raise SystemExit(f"--name {args.name!r}: lowercase letters, digits and _ only")
    with tempfile.TemporaryDirectory(prefix="bench_zero_downtime_") as directory:
        result = run(args, scratch_migrations(Path(directory)))
    if args.json:
        print(json.dumps(rounded(result), indent=2))
    else:
        show(result)


if __name__ == "__main__":
    main()
