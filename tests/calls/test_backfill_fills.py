"""The general backfill: the fills expand revisions declare (``expand_<revision>``), run by ``backfill_context``.

Scratch revisions on top of the real chain stand in for what the expand helper will write: an
expand revision that widens ``calls.duration_seconds`` to bigint (on PostgreSQL a new physical
column ``_<revision>_duration_seconds`` and a trigger keeping it in step; on SQLite nothing, its
integers are 64-bit already) and declares ``expand_steps``, and a contract revision that requires
the fill. Fills every row, once; resumable after kill -9; the brake; the gate; SQLite.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from calls import backfill
from calls.backfill import specs
from calls.sample_data import generate_sample_data
from schema_engine import commands, database, errors, state
from schema_engine import plan as deploy_plan
from schema_engine.progress import Event
from tests.calls.conftest import kill_9
from tests.conftest import HEAD, call, manage, run_sql, scratch_alembic_cli, start_manage, wait_for

EXPAND = "0a1b2c3d4e5f"
FILL = f"expand_{EXPAND}"
NEW = f"_{EXPAND}_duration_seconds"
CONTRACT = "9f8e7d6c5b4a"
WIDEN = ('ChangeType("calls", "duration_seconds", sa.BigInteger(), up="duration_seconds::bigint", '
         'down="duration_seconds::integer")')
# A revision that changes two tables: one fill, one run per table.
TWO_TABLES = "1b2c3d4e5f6a"
TWO_TABLES_STEPS = (f'{WIDEN}, ChangeType("conversation_history", "turn_index", sa.BigInteger(), '
                    'up="turn_index::bigint", down="turn_index::integer")')

EXPAND_REVISION = '''"""A test's expand revision, written as the expand helper will write one.

On PostgreSQL, per step, the new physical column and a trigger that keeps old and new in step
(skipped while the setting 'reautomation.fill' is on: the fill's own writes); on SQLite nothing
(integers are 64-bit there already).
"""
import sqlalchemy as sa
from alembic import op

from schema_engine.versioning import ChangeType, physical_name

revision = "REVISION"
down_revision = "DOWN"
branch_labels = None
depends_on = None

expand_steps = [STEPS]

SYNC = """
CREATE FUNCTION "_sync_{revision}_{table}"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('reautomation.fill', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW."{new}" IS NULL THEN
            NEW."{new}" := (SELECT {up} FROM (SELECT NEW."{old}" AS "{old}") AS old_row);
        ELSE
            NEW."{old}" := (SELECT {down} FROM (SELECT NEW."{new}" AS "{old}") AS new_row);
        END IF;
    ELSIF NEW."{old}" IS DISTINCT FROM OLD."{old}" THEN
        NEW."{new}" := (SELECT {up} FROM (SELECT NEW."{old}" AS "{old}") AS old_row);
    ELSIF NEW."{new}" IS DISTINCT FROM OLD."{new}" THEN
        NEW."{old}" := (SELECT {down} FROM (SELECT NEW."{new}" AS "{old}") AS new_row);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER "_sync_{revision}" BEFORE INSERT OR UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION "_sync_{revision}_{table}"();
"""


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for step in expand_steps:
        new = physical_name(revision, step.column)
        op.add_column(step.table, sa.Column(new, step.type_, nullable=True))
        op.execute(SYNC.format(revision=revision, table=step.table, new=new, old=step.column, up=step.up,
                               down=step.down))


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for step in expand_steps:
        op.execute(f'DROP TRIGGER "_sync_{revision}" ON {step.table}')
        op.execute(f'DROP FUNCTION "_sync_{revision}_{step.table}"()')
        op.drop_column(step.table, physical_name(revision, step.column))
'''

CONTRACT_REVISION = '''"""A test's contract revision: the widened duration_seconds replaces the old one, once filled.

On PostgreSQL the trigger goes, the old column goes, the new one takes its name; on SQLite nothing.
"""
import sqlalchemy as sa
from alembic import op

from schema_engine.versioning import ChangeType, physical_name

revision = "CONTRACT"
down_revision = "EXPAND"
branch_labels = None
depends_on = None
contracts = "EXPAND"
requires_backfills = ("expand_EXPAND",)

expand_steps = [STEPS]


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for step in expand_steps:
        op.execute(f'DROP TRIGGER "_sync_{contracts}" ON {step.table}')
        op.execute(f'DROP FUNCTION "_sync_{contracts}_{step.table}"()')
        op.drop_column(step.table, step.column)
        op.alter_column(step.table, physical_name(contracts, step.column), new_column_name=step.column)


def downgrade() -> None:
    """The old columns back, from the new ones (not the trigger: the expand helper's undo_contract will)."""
    if op.get_context().dialect.name != "postgresql":
        return
    for step in expand_steps:
        new = physical_name(contracts, step.column)
        op.alter_column(step.table, step.column, new_column_name=new)
        op.add_column(step.table, sa.Column(step.column, sa.Integer(), nullable=True))
        op.execute(f'UPDATE {step.table} SET "{step.column}" = '
                   f'(SELECT {step.down} FROM (SELECT {step.table}."{new}" AS "{step.column}") AS new_row)')
'''


def write_expand(migrations: Path, revision: str, down: str, steps: str) -> None:
    text = EXPAND_REVISION.replace("REVISION", revision).replace("DOWN", down).replace("STEPS", steps)
    (migrations / "versions" / f"{revision}_expand.py").write_text(text)


# A test names its database before the chain: the databases at head are copies of one the real
# revisions built, on first use, with the revisions the settings name then.
@pytest.fixture
def sqlite_head_db(make_database) -> sa.URL:
    return make_database("sqlite", at_head=True)


@pytest.fixture
def widen_chain(scratch_migrations: Path) -> Path:
    """The real chain, then the expand revision widening calls.duration_seconds."""
    write_expand(scratch_migrations, EXPAND, HEAD, WIDEN)
    return scratch_migrations


@pytest.fixture
def contract_chain(widen_chain: Path) -> Path:
    """... then its contract, which requires the fill."""
    (widen_chain / "versions" / f"{CONTRACT}_contract.py").write_text(
        CONTRACT_REVISION.replace("CONTRACT", CONTRACT).replace("EXPAND", EXPAND).replace("STEPS", WIDEN))
    return widen_chain


def seed_calls(url: sa.URL, count: int = 2000) -> None:
    """``count`` calls, every 7th without a duration, every 11th at the integer's largest value."""
    now = "NOW()" if url.get_backend_name() == "postgresql" else "CURRENT_TIMESTAMP"
    run_sql(url, f"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {count}) "
                 "INSERT INTO calls (phone_number, status, tier, created_at, duration_seconds) "
                 f"SELECT '+1555' || n, 'completed', 'tier1', {now}, "
                 "CASE WHEN n % 7 = 0 THEN NULL WHEN n % 11 = 0 THEN 2147483647 ELSE n * 13 END FROM g")


def with_duration(url: sa.URL) -> int:
    return run_sql(url, "SELECT count(*) FROM calls WHERE duration_seconds IS NOT NULL")[0][0]


def unfilled(url: sa.URL) -> int:
    """Calls whose new column is not what the conversion makes of the old one."""
    return run_sql(url, f"SELECT count(*) FROM calls WHERE {NEW} IS DISTINCT FROM duration_seconds::bigint")[0][0]


def pending(url: sa.URL, name: str = FILL) -> int:
    return backfill.pending_rows(url=url, only=(name,))[name]


def run(url: sa.URL, *, only: tuple[str, ...] | None = (FILL,), events: list[Event] | None = None,
        **options: object) -> dict[str, backfill.BackfillResult]:
    results = backfill.backfill_context(url=url, only=only, options=backfill.BackfillOptions(**options),
                                        reporter=events.append if events is not None else lambda event: None)
    return {result.backfill: result for result in results}


def test_a_fill_fills_every_row_once_and_a_second_run_changes_nothing(pg_head_db: sa.URL, widen_chain: Path) -> None:
    url = pg_head_db
    seed_calls(url)
    commands.upgrade(revision=EXPAND, url=url)
    before_fill = with_duration(url)
    # Written by a release after the expand: the trigger fills its new column, the fill has nothing to do with it.
    run_sql(url, "INSERT INTO calls (phone_number, status, tier, created_at, duration_seconds) "
                 "VALUES ('+15559999999', 'completed', 'tier1', NOW(), 42)")
    assert run_sql(url, f"SELECT {NEW} FROM calls WHERE phone_number = '+15559999999'") == [(42,)]
    assert pending(url) == before_fill > 0

    events: list[Event] = []
    result = run(url, events=events, batch_size=97, workers=1)[FILL]
    assert (result.scanned, result.changed, result.complete) == (before_fill, before_fill, True)
    assert unfilled(url) == 0 and pending(url) == 0
    assert run_sql(url, f"SELECT count(*) FROM calls WHERE {NEW} IS NULL") == \
        run_sql(url, "SELECT count(*) FROM calls WHERE duration_seconds IS NULL")  # no duration: nothing to convert
    started = next(e for e in events if isinstance(e, backfill.BackfillStarted))
    assert started.fills == f"calls.{NEW} (from duration_seconds)"
    assert [tuple(r) for r in run_sql(url, "SELECT backfill, status, rows_total, rows_changed FROM backfill_runs")] \
        == [(FILL, "succeeded", before_fill, before_fill)]

    # Every backfill, as an operator runs the command: the built-ins, then the fill, which has nothing left.
    again = call(url, "backfill_context", "--workers", "1")
    assert again.returncode == 0, again.stderr
    assert f"{FILL}: nothing to do, every row has its values" in again.stdout
    assert [r.backfill for r in run_sql(url, "SELECT backfill FROM backfill_runs ORDER BY id")] == \
        [FILL, "messages", "calls", FILL]

    # --recompute rewrites exactly the new values that differ from the conversion (written here
    # past the trigger, as the fill writes); a normal run leaves them, they are not NULL.
    engine = database.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT set_config('reautomation.fill', 'on', true)"))
            wrong = conn.execute(sa.text(f"UPDATE calls SET {NEW} = -1 WHERE id % 10 = 0 "
                                         "AND duration_seconds IS NOT NULL")).rowcount
    finally:
        engine.dispose()
    assert run(url, workers=1)[FILL].changed == 0
    forced = run(url, recompute=True, batch_size=300, workers=1)[FILL]
    assert forced.changed == wrong > 0 and forced.scanned == run_sql(url, "SELECT count(*) FROM calls")[0][0]
    assert unfilled(url) == 0


def test_the_fill_writes_past_the_sync_trigger(pg_head_db: sa.URL, widen_chain: Path) -> None:
    """Each batch's transaction sets 'reautomation.fill' locally: the trigger keeps out of it, and only of it."""
    seed_calls(pg_head_db, count=20)
    commands.upgrade(revision=EXPAND, url=pg_head_db)
    fill = specs.backfill_named(FILL)
    first_ten = run_sql(pg_head_db, "SELECT count(*) FROM calls WHERE id <= 10 AND duration_seconds IS NOT NULL")[0][0]
    engine = database.create_engine(pg_head_db)
    try:
        with engine.connect() as conn:
            with conn.begin():
                assert fill.process(conn, 0, 10, recompute=False, write=True) == (first_ten, first_ten)
                assert conn.execute(sa.text("SELECT current_setting('reautomation.fill', true)")).scalar() == "on"
            assert conn.execute(sa.text("SELECT current_setting('reautomation.fill', true)")).scalar() != "on"
    finally:
        engine.dispose()
    assert pending(pg_head_db) == with_duration(pg_head_db) - first_ten > 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_fill_resumes_after_kill_9(pg_head_db: sa.URL, widen_chain: Path, workers: str) -> None:
    url, location = pg_head_db, {"ALEMBIC_SCRIPT_LOCATION": str(widen_chain)}
    seed_calls(url)
    commands.upgrade(revision=EXPAND, url=url)
    total = with_duration(url)
    process = start_manage(url, "backfill_context", "--backfill", FILL, "--batch-size", "10", "--batch-pause", "0.05",
                           "--workers", workers, **location)
    wait_for(lambda: (run_sql(url, "SELECT max(rows_scanned) FROM backfill_runs")[0][0] or 0) >= 100)
    killed = kill_9(url, process)
    assert killed.status == "running"  # nobody could record it: the next run finds out
    assert 0 < pending(url) < total

    rerun = manage(url, "backfill_context", "--backfill", FILL, "--stale-after", "0", **location)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{FILL}: run 2, resuming interrupted run {killed.id}" in rerun.stdout
    statuses = run_sql(url, "SELECT backfill, status, resumed_from_id FROM backfill_runs ORDER BY id")
    assert [tuple(s) for s in statuses] == [(FILL, "interrupted", None), (FILL, "succeeded", killed.id)]
    assert unfilled(url) == 0
    assert run_sql(url, "SELECT count(*) FROM backfill_batches")[0][0] == 0


def test_the_brake_acts_on_a_fill_by_its_name(pg_head_db: sa.URL, widen_chain: Path) -> None:
    url, location = pg_head_db, {"ALEMBIC_SCRIPT_LOCATION": str(widen_chain)}
    seed_calls(url)
    commands.upgrade(revision=EXPAND, url=url)
    working = start_manage(url, "backfill_context", "--only", FILL, "--batch-size", "10", "--batch-pause", "0.05",
                           **location)
    try:
        wait_for(lambda: (run_sql(url, "SELECT max(rows_scanned) FROM backfill_runs")[0][0] or 0) >= 30)
        paused = call(url, "backfill_context", "--pause", "--backfill", FILL)
        assert paused.returncode == 0, paused.stderr
        assert f"{FILL}: run 1 paused by " in paused.stdout
        cancelled = call(url, "backfill_context", "--cancel", "--backfill", FILL)
        assert cancelled.returncode == 0, cancelled.stderr
        out, err = working.communicate(timeout=300)
    finally:
        if working.poll() is None:
            working.kill()
    assert working.returncode == 3 and f"backfill '{FILL}' was cancelled" in err, err
    assert run_sql(url, "SELECT status FROM backfill_runs") == [("cancelled",)]
    assert pending(url) > 0  # a later run starts afresh where rows still need it


def test_the_gate_refuses_the_contract_until_the_fill_is_done(pg_head_db: sa.URL, contract_chain: Path) -> None:
    url = pg_head_db
    seed_calls(url)
    # From before the expand, the fill cannot have run: upgrade to the expand first.
    with pytest.raises(errors.BackfillRequired, match=rf"cannot have run yet: 'manage.py migrate_schema upgrade "
                                                      rf"{EXPAND}', then 'manage.py backfill_context --only {FILL}'"):
        commands.upgrade(revision="head", url=url)
    assert state.status(url=url).current == (HEAD,)

    commands.upgrade(revision=EXPAND, url=url)
    rows = with_duration(url)
    with pytest.raises(errors.BackfillRequired, match=f"needs the {FILL} backfill finished: {rows:,} rows still "
                                                      f"need it; run 'manage.py backfill_context --only {FILL}'"):
        commands.upgrade(revision="head", url=url)
    assert state.status(url=url).current == (EXPAND,)
    assert deploy_plan.plan(url=url).backfill_blockers
    plain = scratch_alembic_cli(contract_chain, url, "upgrade", "head")  # the gate runs in env.py
    assert plain.returncode != 0 and f"needs the {FILL} backfill finished: {rows:,} rows" in plain.stdout

    run(url, workers=1)
    assert not deploy_plan.plan(url=url).backfill_blockers
    commands.upgrade(revision="head", url=url)
    assert state.status(url=url).current == (CONTRACT,)
    assert run_sql(url, "SELECT data_type FROM information_schema.columns "
                        "WHERE table_name = 'calls' AND column_name = 'duration_seconds'") == [("bigint",)]
    largest = run_sql(url, "SELECT count(*) FROM calls WHERE duration_seconds = 2147483647")[0][0]
    assert largest == 2000 // 11 - 2000 // 77
    assert with_duration(url) == rows
    # Contracted: the fill has no column left; asked for by name, it says so.
    contracted = manage(url, "backfill_context", "--only", FILL, ALEMBIC_SCRIPT_LOCATION=str(contract_chain))
    assert contracted.returncode == 0, contracted.stderr
    assert f"{FILL}: skipped: revision {EXPAND} is contracted: calls has no {NEW} left to fill" in contracted.stdout


def test_before_its_expand_a_fill_is_skipped_and_unknown_names_are_refused(head_db: sa.URL, widen_chain: Path) -> None:
    url = head_db
    seed_calls(url, count=30)
    skipped = call(url, "backfill_context", "--only", FILL)
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout.strip() == (f"{FILL}: skipped: its expand revision {EXPAND} is not applied to this "
                                      f"database: nothing to fill until 'manage.py migrate_schema upgrade {EXPAND}'")
    assert pending(url) == 0
    assert run_sql(url, "SELECT count(*) FROM backfill_runs")[0][0] == 0

    refused = f"no backfill is named 'expand_nope': the backfills are messages, calls, {FILL}"
    for args in (["--only", "expand_nope"], ["--pause", "--backfill", "expand_nope"]):
        unknown = call(url, "backfill_context", *args)
        assert unknown.returncode == 1 and unknown.stderr == f"CommandError: {refused}\n"


def test_on_sqlite_the_fill_has_nothing_to_do(sqlite_head_db: sa.URL, contract_chain: Path) -> None:
    url = sqlite_head_db
    seed_calls(url, count=30)
    commands.upgrade(revision=EXPAND, url=url)
    events: list[Event] = []
    results = run(url, only=None, events=events)
    assert list(results) == ["messages", "calls"]
    why = f"nothing to fill on sqlite: revision {EXPAND} changed calls in place (no versioned schemas)"
    assert [e for e in events if isinstance(e, backfill.BackfillSkipped)] == [
        backfill.BackfillSkipped(backfill=FILL, why=why, named=False)]
    named = call(url, "backfill_context", "--only", FILL)
    assert named.returncode == 0 and named.stdout == f"{FILL}: skipped: {why}\n", named.stderr
    assert pending(url) == 0
    commands.upgrade(revision="head", url=url)  # the gate has nothing to wait for
    assert state.status(url=url).current == (CONTRACT,)


def test_a_fill_over_two_tables_is_one_name_and_a_run_per_table(pg_head_db: sa.URL, scratch_migrations: Path) -> None:
    write_expand(scratch_migrations, TWO_TABLES, HEAD, TWO_TABLES_STEPS)
    fill, new_turn = f"expand_{TWO_TABLES}", f"_{TWO_TABLES}_turn_index"
    url = pg_head_db
    with database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=15, seed=3)
    run_sql(url, "UPDATE conversation_history SET turn_index = NULL WHERE id % 5 = 0")
    commands.upgrade(revision=TWO_TABLES, url=url)
    parts = (f"{fill}.1", f"{fill}.2")
    assert specs.in_run_order([fill]) == parts and specs.backfill_names()[-1] == fill
    with pytest.raises(backfill.UnknownBackfill, match=f"^{fill} fills several tables, each its own run: "):
        specs.backfill_named(fill)
    calls_count = with_duration(url)
    messages_count = run_sql(url, "SELECT count(*) FROM conversation_history WHERE turn_index IS NOT NULL")[0][0]
    assert pending(url, fill) == calls_count + messages_count
    dry = run(url, only=(fill,), batch_size=50, dry_run=True)
    assert {name: (r.scanned, r.changed) for name, r in dry.items()} == {
        parts[0]: (calls_count, calls_count), parts[1]: (messages_count, messages_count)}
    assert pending(url, fill) == calls_count + messages_count  # nothing written

    results = run(url, only=(fill,), batch_size=50, workers=1)
    assert {name: r.changed for name, r in results.items()} == {parts[0]: calls_count, parts[1]: messages_count}
    assert pending(url, fill) == 0
    assert run_sql(url, f"SELECT count(*) FROM conversation_history WHERE {new_turn} IS DISTINCT FROM "
                        "turn_index::bigint")[0][0] == 0
    assert run_sql(url, f"SELECT count(*) FROM calls WHERE _{TWO_TABLES}_duration_seconds IS DISTINCT FROM "
                        "duration_seconds::bigint")[0][0] == 0
    assert [tuple(r) for r in run_sql(url, "SELECT backfill, status FROM backfill_runs ORDER BY id")] == \
        [(parts[0], "succeeded"), (parts[1], "succeeded")]
