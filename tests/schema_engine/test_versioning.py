"""Versioned schemas (issue 25): an expand revision runs the release before it and the release after it side by side.

Hand-written expand and contract revisions on top of the real chain make each of the issue's
model changes (rename ``calls.outcome``, widen ``calls.duration_seconds``, drop ``calls.voice_id``).
On PostgreSQL two connections play the two releases: the old one writes ``public.calls``, the
new one ``v_<expand>.calls``; each is named as a release names its sessions (``reautomation@<head>``).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa

from schema_engine import commands, contracts, database, errors, lint, state, versioning
from schema_engine import plan as deploy_plan
from schema_engine.versioning import ChangeType, DropColumn, RenameColumn
from tests.conftest import HEAD, call, inspected, run_sql, scratch_alembic_cli, snapshot, wait_for
from tests.schema_engine.conftest import add_column_revision

EXPAND = "e25a0b1c2d3e"
CONTRACT = "c25a0b1c2d3e"
VIEW = f'"v_{EXPAND}"."calls"'

REVISION = '''"""{phase} {name}."""
import sqlalchemy as sa

from migrations_alembic.expand import ChangeType, DropColumn, RenameColumn, {functions}

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None
{contracts}
expand_steps = [{step}]


def upgrade() -> None:
    {upgrade}


def downgrade() -> None:
    {downgrade}
'''


@dataclass(frozen=True)
class Change:
    """One of the issue's model changes: its expand step, and the column each release reads and writes."""

    name: str
    step: str  # as the revision files write it
    old: str  # the column of the release before expand (public.calls)
    new: str | None  # the column of the release after it (v_<expand>.calls); None: it has none
    values: tuple[object, object, object, object]  # written by the releases in turn
    type_name: str  # calls.<new>'s type after contract ("" for a drop)


RENAME = Change("rename", 'RenameColumn("calls", "outcome", "call_outcome")', "outcome", "call_outcome",
                ("answered", "voicemail", "busy", "no_answer"), "VARCHAR(64)")
WIDEN = Change("widen", 'ChangeType("calls", "duration_seconds", sa.BigInteger(), up="duration_seconds::bigint", '
                        'down="duration_seconds::integer")', "duration_seconds", "duration_seconds", (42, 4242, 7, 8),
               "BIGINT")
WIDEN_REQUIRED = Change("widen_required", 'ChangeType("calls", "escalation_count", sa.BigInteger(), '
                                          'up="escalation_count::bigint", down="escalation_count::integer")',
                        "escalation_count", "escalation_count", (3, 5, 7, 9), "BIGINT")  # NOT NULL DEFAULT 0
DROP = Change("drop", 'DropColumn("calls", "voice_id")', "voice_id", None, ("voice-a", None, "voice-c", None), "")
CHANGES = [RENAME, WIDEN, WIDEN_REQUIRED, DROP]


@pytest.fixture(params=CHANGES, ids=[c.name for c in CHANGES])
def change(request: pytest.FixtureRequest) -> Change:
    return request.param


def write_revisions(migrations: Path, name: str, step: str, *, expand: str = EXPAND, contract: str | None = CONTRACT,
                    down: str = HEAD) -> None:
    """Write an expand revision with ``step`` on ``down`` (today's head), and its contract revision (unless None)."""
    (migrations / "versions" / f"{expand}.py").write_text(REVISION.format(
        phase="Expand:", name=name, functions="expand, undo_expand", revision=expand, down=down,
        contracts="", step=step, upgrade="expand(revision, expand_steps)",
        downgrade="undo_expand(revision, expand_steps)"))
    if contract is not None:
        (migrations / "versions" / f"{contract}.py").write_text(REVISION.format(
            phase="Contract:", name=name, functions="contract, undo_contract", revision=contract, down=expand,
            contracts=f'contracts = "{expand}"\n', step=step, upgrade="contract(contracts, expand_steps)",
            downgrade="undo_contract(contracts, expand_steps)"))


@pytest.fixture
def versioned(scratch_migrations: Path, change: Change) -> Change:
    """The expand and contract revisions of ``change``, on top of the real chain."""
    write_revisions(scratch_migrations, change.name, change.step)
    return change


class Release:
    """One release's session: named ``reautomation@<head>``, reading and writing ``calls`` in its own shape."""

    def __init__(self, url: sa.URL, head: str, table: str) -> None:
        self.table = table
        self.engine = database.create_engine(
            url, connect_args={"application_name": versioning.release_application_name(head)})
        self.connection = self.engine.connect()
        self.pid = self.execute("SELECT pg_backend_pid()")[0][0]

    def execute(self, sql: str, params: dict | None = None) -> list[sa.Row]:
        with self.connection.begin():  # committed at once: an idle session holds no lock a migration waits for
            result = self.connection.execute(sa.text(sql), params or {})
            return list(result) if result.returns_rows else []

    def insert(self, column: str | None, value: object) -> int:
        """Insert a call; ``column`` None: a column this release does not have (only the phone number)."""
        names, values = ("phone_number", ":phone") if column is None else (f"phone_number, {column}", ":phone, :v")
        return self.execute(f"INSERT INTO {self.table} ({names}) VALUES ({values}) RETURNING id",
                            {"phone": "+15550001111", "v": value})[0][0]

    def update(self, row: int, column: str | None, value: object) -> None:
        assignment = "phone_number = :phone" if column is None else f"{column} = :v"
        self.execute(f"UPDATE {self.table} SET {assignment} WHERE id = :id",
                     {"phone": "+15550002222", "v": value, "id": row})

    def read(self, column: str) -> dict[int, object]:
        return dict(self.execute(f"SELECT id, {column} FROM {self.table}"))

    def columns(self) -> list[str]:
        with self.connection.begin():
            return list(self.connection.execute(sa.text(f"SELECT * FROM {self.table} LIMIT 0")).keys())

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()


@pytest.fixture
def release() -> Iterator[Callable[..., Release]]:
    """Return a factory: ``release(url, head, table)`` connects a release's session; all are closed after."""
    opened: list[Release] = []

    def connect(url: sa.URL, head: str, table: str = "public.calls") -> Release:
        opened.append(Release(url, head, table))
        return opened[-1]

    yield connect
    for each in opened:
        each.close()


def write_from_both(old: Release, new: Release, change: Change) -> dict[int, object]:
    """Each release inserts a row and updates the other's; return each row's value in the old shape.

    The new release of a drop has no such column: it updates another, and the old value stays.
    """
    first, second, third, fourth = change.values
    a = old.insert(change.old, first)
    b = new.insert(change.new, second)
    old.update(b, change.old, third)
    new.update(a, change.new, fourth)
    return {a: first if change.new is None else fourth, b: third}


def fill_every_row(url: sa.URL, *, up_to: int) -> None:
    """What the expand declares to fill, for calls with ids up to ``up_to`` (the backfill's work, in one range)."""
    (expanded,) = versioning.expands(state.script_directory())
    if versioning.fill_tables(expanded.steps):
        engine = database.create_engine(url)
        with engine.begin() as conn:
            versioning.fill_range(conn, EXPAND, "calls", expanded.steps, lo=0, hi=up_to)
        engine.dispose()


def calls_columns(url: sa.URL) -> dict[str, str]:
    with inspected(url) as inspector:
        return {c["name"]: str(c["type"]) for c in inspector.get_columns("calls")}


def required(url: sa.URL, table: str = "calls") -> dict[str, tuple[bool, bool]]:
    """Return each column's (NOT NULL, has a default)."""
    with inspected(url) as inspector:
        return {c["name"]: (not c["nullable"], c["default"] is not None) for c in inspector.get_columns(table)}


def has_schema(url: sa.URL, schema: str) -> bool:
    return bool(run_sql(url, "SELECT 1 FROM pg_namespace WHERE nspname = :s", {"s": schema}))


# --- PostgreSQL: two releases at once ----------------------------------------------------------------

def test_both_releases_see_each_others_rows(versioned: Change, pg_head_db: sa.URL, release) -> None:
    change = versioned
    commands.upgrade(revision=EXPAND, url=pg_head_db)
    old, new = release(pg_head_db, HEAD), release(pg_head_db, EXPAND, VIEW)
    first, second, third, fourth = change.values

    a = old.insert(change.old, first)
    b = new.insert(change.new, second)
    assert old.read(change.old) == {a: first, b: second}  # a drop's new release wrote None: the column's default
    if change.new is None:
        assert change.old not in new.columns() and set(new.read("id")) == {a, b}
    else:
        assert new.read(change.new) == {a: first, b: second}

    old.update(b, change.old, third)
    new.update(a, change.new, fourth)
    expected = {a: first if change.new is None else fourth, b: third}
    assert old.read(change.old) == expected
    if change.new is not None:
        assert new.read(change.new) == expected
        assert change.old not in new.columns() or change.old == change.new


@pytest.mark.parametrize("change", [WIDEN], ids=["widen"])
def test_the_fill_fills_the_new_column_of_old_rows_and_never_writes_the_old_one(
        versioned: Change, pg_head_db: sa.URL, release) -> None:
    rows = [run_sql(pg_head_db, "INSERT INTO calls (phone_number, duration_seconds) VALUES ('+1', :d) RETURNING id",
                    {"d": d})[0][0] for d in (10, 20, None, 30)]
    commands.upgrade(revision=EXPAND, url=pg_head_db)
    (expanded,) = versioning.expands(state.script_directory())
    new_column = versioning.physical_name(EXPAND, "duration_seconds")
    release(pg_head_db, EXPAND, VIEW).insert("duration_seconds", 99)  # filled by the trigger as it is written

    def values() -> dict[int, tuple[object, object]]:
        return {row[0]: (row[1], row[2]) for row in run_sql(
            pg_head_db, f'SELECT id, duration_seconds, "{new_column}" FROM calls')}

    def pending() -> int:
        with database.connect(pg_head_db) as conn:
            return versioning.pending_fill_rows(conn, EXPAND, expanded.steps)

    before = values()
    assert [before[row] for row in rows] == [(10, None), (20, None), (None, None), (30, None)]
    assert pending() == 3
    engine = database.create_engine(pg_head_db)
    try:
        written = []
        for lo, hi in ((0, rows[1]), (rows[1], max(before))):  # two batches, by id
            with engine.begin() as conn:
                written.append(versioning.fill_range(conn, EXPAND, "calls", expanded.steps, lo=lo, hi=hi))
        assert written == [2, 1]
        assert pending() == 0
        after = values()
        assert {row: old for row, (old, _new) in after.items()} == {row: old for row, (old, _new) in before.items()}
        assert all(new == old for old, new in after.values())

        # What keeps the fill off the old column: under its setting the trigger stands aside.
        with engine.begin() as conn:
            conn.execute(sa.text(versioning.FILL_SETTING_SQL))
            conn.execute(sa.text(f'UPDATE calls SET "{new_column}" = 555 WHERE id = :id'), {"id": rows[0]})
        with engine.begin() as conn:
            conn.execute(sa.text(f'UPDATE calls SET "{new_column}" = 556 WHERE id = :id'), {"id": rows[1]})
        assert values()[rows[0]] == (10, 555) and values()[rows[1]] == (556, 556)
    finally:
        engine.dispose()


def test_undo_expand_loses_nothing_either_release_wrote(versioned: Change, pg_head_db: sa.URL, release) -> None:
    change = versioned
    before = snapshot(pg_head_db)
    commands.upgrade(revision=EXPAND, url=pg_head_db)
    old, new = release(pg_head_db, HEAD), release(pg_head_db, EXPAND, VIEW)
    expected = write_from_both(old, new, change)

    commands.downgrade(revision=HEAD, url=pg_head_db)
    assert old.read(change.old) == expected
    assert snapshot(pg_head_db) == before
    assert not has_schema(pg_head_db, versioning.version_schema(EXPAND))
    assert not run_sql(pg_head_db, "SELECT 1 FROM pg_proc WHERE proname LIKE '\\_sync\\_%'")
    assert not run_sql(pg_head_db, f"SELECT 1 FROM {versioning.VERSIONS_TABLE}")
    old.update(next(iter(expected)), change.old, change.values[0])  # the old release goes on as before


def test_contract_archives_drops_renames_and_its_downgrade_restores(
        versioned: Change, pg_head_db: sa.URL, release) -> None:
    change = versioned
    (earlier,) = run_sql(pg_head_db, f"INSERT INTO calls (phone_number, {change.old}) VALUES ('+1', :v) RETURNING id",
                         {"v": change.values[0]})[0]
    was = required(pg_head_db)[change.old]
    commands.upgrade(revision=EXPAND, url=pg_head_db)
    old, new = release(pg_head_db, HEAD), release(pg_head_db, EXPAND, VIEW)
    expected = {earlier: change.values[0], **write_from_both(old, new, change)}
    old.close()  # the release before it is stopped: contract may go on
    fill_every_row(pg_head_db, up_to=max(expected))

    notes: list[str] = []
    commands.upgrade(revision="head", url=pg_head_db, reporter=lambda event: notes.append(event.describe()))
    columns = calls_columns(pg_head_db)
    archive = versioning.archive_name(CONTRACT, "calls")
    assert not any(name.startswith("_") for name in columns)
    if change.new is None:
        assert change.old not in columns
    else:
        assert change.new in columns and columns[change.new] == change.type_name
        assert required(pg_head_db)[change.new] == was  # NOT NULL and the default, carried over
        assert change.old not in columns or change.old == change.new
        assert new.read(change.new) == expected  # the new release reads on, through its view
    if change.new != change.old and change.new is not None:  # a rename moves no data: nothing to archive
        assert archive not in {name for name, in run_sql(pg_head_db, "SELECT tablename FROM pg_tables")}
    else:
        kept = dict(run_sql(pg_head_db, f'SELECT id, "{change.old}" FROM {archive}'))
        assert kept == expected  # every row, NULLs too: the undo puts back exactly what each held
        assert f"archived {len(kept)} row(s) of calls in {archive}; the downgrade puts them back" in notes
    latest = new.insert(change.new, change.values[1])  # written after contract, by the new release only
    expected[latest] = change.values[1] if change.new is not None else None
    if change.new is not None:  # archived by the contract, then changed by the new release: its value wins
        new.update(earlier, change.new, change.values[3])
        expected[earlier] = change.values[3]

    commands.downgrade(revision=EXPAND, url=pg_head_db)
    old = release(pg_head_db, HEAD)
    assert old.read(change.old) == expected
    assert required(pg_head_db)[change.old] == was
    assert archive not in {name for name, in run_sql(pg_head_db, "SELECT tablename FROM pg_tables")}
    old.update(latest, change.old, change.values[2])  # both releases again, kept in step
    expected[latest] = change.values[2]
    if change.new is not None:
        assert new.read(change.new) == expected


@pytest.mark.parametrize("change", [RENAME], ids=["rename"])
def test_after_contract_a_release_reads_the_table_itself_which_later_revisions_change(
        versioned: Change, scratch_migrations: Path, pg_head_db: sa.URL) -> None:
    """A view keeps the columns it was made with: once contracted, the table has the version's shape itself."""
    add_column_revision(scratch_migrations, revision="a25a0b1c2d3e", column="scratch_flag", why="after the contract",
                        down=CONTRACT)
    commands.upgrade(revision=EXPAND, url=pg_head_db)

    def schemas() -> dict[str, str]:
        with database.connect(pg_head_db) as conn:
            return versioning.read_schemas(state.script_directory(), contracted=versioning.contracted_versions(conn))

    assert schemas() == {"calls": f"v_{EXPAND}"}
    commands.upgrade(revision="head", url=pg_head_db)
    assert schemas() == {}
    presented = view_columns(pg_head_db, f"v_{EXPAND}")
    assert "call_outcome" in presented and "scratch_flag" not in presented
    commands.downgrade(revision=CONTRACT, url=pg_head_db)  # no view depends on what it drops
    assert "scratch_flag" not in calls_columns(pg_head_db)


@pytest.mark.parametrize("change", [RENAME], ids=["rename"])
def test_contract_is_refused_while_the_release_before_it_is_connected(
        versioned: Change, scratch_migrations: Path, pg_head_db: sa.URL, release) -> None:
    commands.upgrade(revision=EXPAND, url=pg_head_db)
    release(pg_head_db, EXPAND, VIEW)  # the new release
    release(pg_head_db, CONTRACT, VIEW)  # and a later one
    old = release(pg_head_db, HEAD)
    stray = release(pg_head_db, "feedfacecafe")  # a head this code does not know: nothing shows it is newer
    sessions = sorted([(old.pid, f"reautomation@{HEAD}"), (stray.pid, "reautomation@feedfacecafe")])
    line = (f"contract {CONTRACT} of {EXPAND} refused: 2 session(s) of the release before it are connected "
            f"(pids {sessions[0][0]}, {sessions[1][0]}, application_name {sessions[0][1]}, {sessions[1][1]}): "
            "stop that release first")

    with pytest.raises(errors.OldReleaseConnected) as refused:
        commands.upgrade(revision="head", url=pg_head_db)
    assert str(refused.value) == line and refused.value.pids == tuple(pid for pid, _name in sessions)
    assert state.status(url=pg_head_db).current == (EXPAND,)
    planned = deploy_plan.plan(url=pg_head_db)
    assert line in planned.problems and planned.as_dict()["contract_blockers"] == [line]
    refused_command = call(pg_head_db, "migrate_schema", "upgrade")
    assert refused_command.returncode != 0 and refused_command.stderr.strip() == f"CommandError: {line}"
    refused_cli = scratch_alembic_cli(scratch_migrations, pg_head_db, "upgrade", "head")
    assert refused_cli.returncode != 0 and "Traceback" not in refused_cli.stderr
    assert line in refused_cli.stdout + refused_cli.stderr
    assert state.status(url=pg_head_db).current == (EXPAND,)

    old.close()
    stray.close()
    with database.connect(pg_head_db) as conn:
        wait_for(lambda: not versioning.old_release_sessions(conn, EXPAND, state.script_directory()))
    commands.upgrade(revision="head", url=pg_head_db)
    assert state.status(url=pg_head_db).current == (CONTRACT,)


def test_a_deploy_defers_the_contract_when_the_release_before_shows_after_its_check(
        versioned: Change, pg_head_db: sa.URL, release, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a pooler a server session carries its last client's name, so a session of the release before can
    show between the deploy's check and the upgrade's own: the deploy defers the contract then too, never fails."""
    old = release(pg_head_db, HEAD)
    monkeypatch.setattr(contracts, "waiting_contract", lambda *args: None)  # the check that saw no such session
    heard: list[object] = []
    result = contracts.upgrade_deferring_contracts(url=pg_head_db, reporter=heard.append)
    assert state.status(url=pg_head_db).current == result.current == (EXPAND,)  # the expand applied, not its contract
    assert [step.revision for step in result.applied] == [EXPAND]
    (deferred,) = [event for event in heard if isinstance(event, contracts.ContractDeferred)]
    assert deferred.revision == CONTRACT and f"pids {old.pid}," in deferred.why


@pytest.fixture
def roles(pg_head_db: sa.URL, postgres_admin: sa.Engine) -> Iterator[tuple[str, str]]:
    """An application role that writes calls, and a read-only one (as an operator grants them); dropped after."""
    suffix = uuid.uuid4().hex[:10]
    app, readonly = f"test_app_{suffix}", f"test_ro_{suffix}"
    with postgres_admin.connect() as conn:
        for role in (app, readonly):
            conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        run_sql(pg_head_db, f'GRANT SELECT, INSERT, UPDATE, DELETE ON calls TO "{app}"')
        run_sql(pg_head_db, f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{app}"')
        run_sql(pg_head_db, f'GRANT SELECT ON calls TO "{readonly}"')
        yield app, readonly
    finally:
        run_sql(pg_head_db, f'DROP OWNED BY "{app}", "{readonly}"')  # their grants, so the roles can go
        with postgres_admin.connect() as conn:
            for role in (app, readonly):
                conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))


@pytest.mark.parametrize("change", [RENAME], ids=["rename"])
def test_each_role_may_do_through_the_version_what_it_may_do_on_the_table(
        versioned: Change, pg_head_db: sa.URL, roles: tuple[str, str], release) -> None:
    app, readonly = roles
    commands.upgrade(revision=EXPAND, url=pg_head_db)
    writer = release(pg_head_db.set(username=app), EXPAND, VIEW)
    row = writer.insert("call_outcome", "answered")
    writer.update(row, "call_outcome", "busy")
    reader = release(pg_head_db.set(username=readonly), EXPAND, VIEW)
    assert reader.read("call_outcome") == {row: "busy"}
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        reader.insert("call_outcome", "answered")


def test_a_migration_role_that_is_no_superuser_runs_every_phase(
        versioned: Change, unprivileged_roles: tuple[sa.URL, sa.URL], release) -> None:
    """As on a managed service: the migration role owns the database and its tables, and nothing more."""
    change = versioned
    migrator, application = unprivileged_roles
    commands.upgrade(revision=HEAD, url=migrator)
    app = f'"{application.username}"'
    run_sql(migrator, f"GRANT SELECT, INSERT, UPDATE, DELETE ON calls TO {app}")
    run_sql(migrator, f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {app}")

    commands.upgrade(revision=EXPAND, url=migrator)  # the version's schema, views, trigger and its function
    old, new = release(application, HEAD), release(application, EXPAND, VIEW)
    expected = write_from_both(old, new, change)
    old.close()
    fill_every_row(migrator, up_to=max(expected))
    commands.upgrade(revision="head", url=migrator)  # the contract: archived, dropped, renamed
    if change.new is not None:
        assert new.read(change.new) == expected

    commands.downgrade(revision=HEAD, url=migrator)  # undo the contract, then the expand
    assert release(application, HEAD).read(change.old) == expected
    assert not has_schema(migrator, f"v_{EXPAND}")


def test_a_removed_required_column_lets_the_new_release_insert_and_undo_says_when_it_stays_nullable(
        scratch_migrations: Path, pg_head_db: sa.URL, release) -> None:
    """call_notes.body is NOT NULL with no default: the new release's inserts leave it out."""
    write_revisions(scratch_migrations, "drop call_notes.body", 'DropColumn("call_notes", "body")')
    (call_id,) = run_sql(pg_head_db, "INSERT INTO calls (phone_number) VALUES ('+1') RETURNING id")[0]
    notes: list[str] = []

    commands.upgrade(revision=EXPAND, url=pg_head_db)
    assert required(pg_head_db, "call_notes")["body"] == (False, False)
    commands.downgrade(revision=HEAD, url=pg_head_db, reporter=lambda event: notes.append(event.describe()))
    assert required(pg_head_db, "call_notes")["body"] == (True, False)
    assert not any("stays nullable" in note for note in notes)

    commands.upgrade(revision=EXPAND, url=pg_head_db)
    new = release(pg_head_db, EXPAND, f'"v_{EXPAND}"."call_notes"')
    new.execute(f"INSERT INTO {new.table} (call_id) VALUES (:id)", {"id": call_id})
    commands.downgrade(revision=HEAD, url=pg_head_db, reporter=lambda event: notes.append(event.describe()))
    assert required(pg_head_db, "call_notes")["body"] == (False, False)
    assert ("call_notes.body stays nullable: the new release wrote 1 row(s) without it; fill them, then make it "
            "NOT NULL with helpers.set_not_null") in notes


def test_undoing_the_contract_of_a_removed_column_with_a_default_gives_later_rows_the_default(
        scratch_migrations: Path, pg_head_db: sa.URL, release) -> None:
    """calls.direction is NOT NULL DEFAULT 'outbound': rows written after the contract get it, earlier ones theirs."""
    write_revisions(scratch_migrations, "drop calls.direction", 'DropColumn("calls", "direction")')
    (earlier,) = run_sql(pg_head_db, "INSERT INTO calls (phone_number, direction) VALUES ('+1', 'inbound') "
                                     "RETURNING id")[0]
    commands.upgrade(revision="head", url=pg_head_db)
    new = release(pg_head_db, EXPAND, VIEW)
    later = new.insert(None, None)  # the release after has no such column
    commands.downgrade(revision=EXPAND, url=pg_head_db)
    assert dict(run_sql(pg_head_db, "SELECT id, direction FROM calls")) == {earlier: "inbound", later: "outbound"}
    assert required(pg_head_db)["direction"] == (True, True)  # NOT NULL and its default, back


def view_columns(url: sa.URL, schema: str) -> list[str]:
    return [name for name, in run_sql(url, "SELECT column_name FROM information_schema.columns "
                                           "WHERE table_schema = :s AND table_name = 'calls' ORDER BY ordinal_position",
                                      {"s": schema})]


def test_the_next_contract_on_a_table_drops_the_older_versions_and_its_downgrade_puts_them_back(
        scratch_migrations: Path, pg_head_db: sa.URL, roles: tuple[str, str]) -> None:
    write_revisions(scratch_migrations, RENAME.name, RENAME.step)
    later_expand, later_contract = "e25b0b1c2d3e", "c25b0b1c2d3e"
    write_revisions(scratch_migrations, DROP.name, DROP.step, expand=later_expand, contract=later_contract,
                    down=CONTRACT)
    before = snapshot(pg_head_db)
    commands.upgrade(revision=later_expand, url=pg_head_db)
    older, later = versioning.version_schema(EXPAND), versioning.version_schema(later_expand)
    presented = view_columns(pg_head_db, older)
    assert {"call_outcome", "voice_id"} <= set(presented) and "voice_id" not in view_columns(pg_head_db, later)

    commands.upgrade(revision="head", url=pg_head_db)  # the later contract: the older version presents an old shape
    assert not has_schema(pg_head_db, older) and has_schema(pg_head_db, later)
    commands.downgrade(revision=later_expand, url=pg_head_db)
    assert sorted(view_columns(pg_head_db, older)) == sorted(presented)  # voice_id, put back, now comes last
    app, _readonly = roles
    assert run_sql(pg_head_db, f"SELECT has_table_privilege('{app}', '{older}.calls', 'INSERT')") == [(True,)]

    commands.downgrade(revision=HEAD, url=pg_head_db)
    assert snapshot(pg_head_db) == before and not has_schema(pg_head_db, older)


def test_an_expand_of_a_table_whose_expand_is_not_contracted_yet_is_refused(
        scratch_migrations: Path, pg_head_db: sa.URL) -> None:
    write_revisions(scratch_migrations, RENAME.name, RENAME.step, contract=None)
    write_revisions(scratch_migrations, DROP.name, DROP.step, expand="e25b0b1c2d3e", contract=None, down=EXPAND)
    with pytest.raises(errors.RevisionFailed, match=f"expand e25b0b1c2d3e changes calls, which expand {EXPAND} "
                                                    "changed with no contract since: contract it first"):
        commands.upgrade(revision="head", url=pg_head_db)
    assert state.status(url=pg_head_db).current == (EXPAND,)


def test_the_runtimes_sql_renders_offline_and_passes_squawk(versioned: Change) -> None:
    """What ``--sql``, the checksums and ``plan`` see is what runs: the catalog is read by the SQL itself."""
    offline = sa.make_url("postgresql+psycopg://offline@x/offline")
    for revision, down in ((EXPAND, HEAD), (CONTRACT, EXPAND)):
        sql = commands.revision_sql(revision, down, url=offline)
        assert "DO $" in sql and "\\:" not in sql
        assert lint.unaccepted(lint.lint_sql(sql), {}) == []


# --- SQLite: no versioned schemas --------------------------------------------------------------------

def test_on_sqlite_expand_and_contract_apply_in_order(versioned: Change, make_database) -> None:
    change = versioned
    url = make_database("sqlite", at_head=True)
    (row,) = run_sql(url, f"INSERT INTO calls (phone_number, {change.old}) VALUES ('+1', :v) RETURNING id",
                     {"v": change.values[0]})[0]
    before = snapshot(url)
    assert "SQLite: no versioned schemas, expand and contract apply in order" in deploy_plan.plan(url=url).warnings

    commands.upgrade(revision=EXPAND, url=url)  # the whole change, at once
    columns = calls_columns(url)
    if change.new is None:
        assert change.old not in columns
    else:
        assert columns[change.new] == change.type_name
        assert run_sql(url, f"SELECT {change.new} FROM calls WHERE id = :id", {"id": row}) == [(change.values[0],)]
    commands.upgrade(revision="head", url=url)  # contract: nothing left to do
    assert calls_columns(url) == columns

    commands.downgrade(revision=HEAD, url=url)
    assert snapshot(url) == before
    assert run_sql(url, f"SELECT {change.old} FROM calls WHERE id = :id", {"id": row}) == [(change.values[0],)]


# --- the steps, their names and expressions ----------------------------------------------------------

def test_the_site_reads_each_table_through_the_newest_expand_of_its_code(versioned: Change) -> None:
    assert versioning.read_schemas(state.script_directory()) == {"calls": f"v_{EXPAND}"}
    (expanded,) = versioning.expands(state.script_directory())  # the contract's copy of the steps is not an expand
    assert expanded.revision == EXPAND and versioning.fill_name(EXPAND) == f"expand_{EXPAND}"


@pytest.mark.parametrize(("expression", "expected"), [
    ("duration_seconds::bigint", '(NEW."duration_seconds"::bigint)'),
    ("CASE WHEN Duration_Seconds > 0 THEN duration_seconds END", '(CASE WHEN NEW."duration_seconds" > 0 '
                                                                  'THEN NEW."duration_seconds" END)'),
    ("coalesce(duration_seconds, 'duration_seconds'::text::int)",  # a literal, and a type, are not the column
     "(coalesce(NEW.\"duration_seconds\", 'duration_seconds'::text::int))"),
    ('t.duration_seconds + "duration_seconds" + duration_seconds_2',  # qualified, quoted or longer: not it
     '(t.duration_seconds + "duration_seconds" + duration_seconds_2)'),
])
def test_up_and_down_name_the_column_by_its_plain_name(expression: str, expected: str) -> None:
    step = ChangeType("calls", "duration_seconds", sa.BigInteger(), up=expression, down="duration_seconds")
    assert versioning.up_sql(step, 'NEW."duration_seconds"') == expected


@pytest.mark.parametrize(("make", "message"), [
    (lambda: RenameColumn("calls", 'outcome" TO x; --', "y"), "is not a plain identifier"),
    (lambda: DropColumn("Calls", "voice_id"), "is not a plain identifier"),
    (lambda: ChangeType("calls", "duration_seconds", "bigint", up="duration_seconds", down="duration_seconds"),
     "must be an SQLAlchemy type"),
    (lambda: ChangeType("calls", "duration_seconds", sa.BigInteger(), up="1; DROP TABLE calls", down="1"),
     "must be one SQL expression"),
    (lambda: versioning.check_steps(EXPAND, [DropColumn("calls", "voice_id"), RenameColumn("calls", "voice_id", "v")]),
     "changes calls.voice_id twice"),
    (lambda: versioning.version_schema("Robert'); --"), "cannot name a version schema"),
])
def test_a_step_that_cannot_run_is_refused_in_one_line(make: Callable[[], object], message: str) -> None:
    with pytest.raises(errors.InvalidExpandStep, match=message) as refused:
        make()
    assert "\n" not in str(refused.value)
