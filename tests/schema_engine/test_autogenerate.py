"""``revision --autogenerate`` writes revisions that ``plan`` accepts unchanged: concurrent indexes, expand/contract
(NOT NULL, unique; renames, type changes and removed columns as expand_steps), archived columns, CHECK constraints
added NOT VALID."""
from __future__ import annotations

import contextlib
import io
import os
import pty
import re
import sys
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from django.db import models
from django.db.models import Q
from sqlalchemy.dialects import postgresql

from calls.models import Call, ConversationMessage
from schema_engine import autogenerate, checksums, commands, errors, gate, lint, plan, state, versioning
from tests.conftest import HEAD, call, error_lines, inspected, run_sql


def written(migrations: Path, revision: str) -> str:
    (path,) = (migrations / "versions").glob(f"{revision}_*.py")
    return path.read_text()


def columns(url: sa.URL) -> dict[str, bool]:
    with inspected(url) as inspector:
        return {c["name"]: c["nullable"] for c in inspector.get_columns("calls")}


def column_list(url: sa.URL, table: str) -> list[dict]:
    with inspected(url) as inspector:
        return inspector.get_columns(table)


def body(text: str, function: str) -> list[str]:
    """Return the statements of ``function`` (upgrade or downgrade) in a revision's text, less Alembic's comments."""
    code = text.split(f"def {function}() -> None:\n")[1].split("\n\n\ndef ")[0]
    return [line.strip() for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_the_guides_new_indexed_field_is_generated_deployable(
        head_db: sa.URL, priority_field: models.Field, scratch_migrations: Path) -> None:
    """The guide's "Adding New Fields": change the model, autogenerate, and plan says safe as it is."""
    (revision,) = commands.create_revision(message="add_scratch_priority_to_calls", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    # op.add_column('calls', ...) on PostgreSQL; batch_op.add_column(...) inside batch_alter_table on SQLite.
    assert re.search(r"add_column\((?:'calls', )?sa\.Column\('scratch_priority', sa\.Integer\(\), "
                     r"server_default=sa\.text\('0'\), nullable=False\)\)", text)
    assert ("    with op.get_context().autocommit_block():\n"
            "        build_index('ix_calls_scratch_priority', 'calls', ['scratch_priority'])\n") in text
    assert ("    with op.get_context().autocommit_block():\n"
            "        drop_index('ix_calls_scratch_priority', 'calls')\n") in text
    assert "from migrations_alembic.helpers import build_index" in text
    assert "- ix_calls_scratch_priority on calls: which query does it serve? Quote it here" in text.split('"""')[1]
    assert "create_index(" not in text and "op.drop_index(" not in text

    planned = plan.plan(url=head_db)
    assert planned.safe, planned.problems
    assert [rev.revision for rev in planned.pending] == [revision]
    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    commands.downgrade(revision="-1", url=head_db)
    assert "scratch_priority" not in columns(head_db)


def test_a_required_column_on_an_existing_table_is_generated_as_expand_and_contract(
        pg_head_db: sa.URL, region_field: models.Field, scratch_migrations: Path) -> None:
    expand, contract = commands.create_revision(message="add_scratch_region", autogenerate=True, url=pg_head_db)
    assert "sa.Column('scratch_region', sa.String(length=8), nullable=True)" in written(scratch_migrations, expand)
    contract_text = written(scratch_migrations, contract)
    assert f"down_revision: str | Sequence[str] | None = '{expand}'" in contract_text
    assert "    set_not_null('calls', 'scratch_region', sa.String(length=8))\n" in contract_text
    assert "    drop_not_null('calls', 'scratch_region', sa.String(length=8))\n" in contract_text
    assert ("DATA_CHECKS = {\n    'no NULL in calls.scratch_region': "
            "'SELECT id FROM calls WHERE scratch_region IS NULL ORDER BY id',\n}"
            in contract_text)

    run_sql(pg_head_db, "INSERT INTO calls (phone_number) VALUES ('+15550000001')")
    planned = plan.plan(url=pg_head_db)
    assert planned.safe, planned.problems
    assert planned.pending[1].data_checks[0].status == "deferred"

    with pytest.raises(errors.DataCheckFailed,
                       match=r"no NULL in calls\.scratch_region\" found rows it forbids, e\.g\. \(1,\)"):
        commands.upgrade(revision="head", url=pg_head_db)
    assert commands.upgrade(revision=expand, url=pg_head_db).current == (expand,)  # the expand step stayed applied
    assert columns(pg_head_db)["scratch_region"] is True

    run_sql(pg_head_db, "UPDATE calls SET scratch_region = 'us-east'")  # the data step between
    assert commands.upgrade(revision="head", url=pg_head_db).current == (contract,)
    assert columns(pg_head_db)["scratch_region"] is False
    commands.check(url=pg_head_db)
    commands.downgrade(revision=HEAD, url=pg_head_db)
    assert "scratch_region" not in columns(pg_head_db)


def test_autogenerate_without_changes_writes_nothing(head_db: sa.URL, scratch_migrations: Path) -> None:
    before = sorted((scratch_migrations / "versions").glob("*.py"))
    assert commands.create_revision(message="nothing", autogenerate=True, url=head_db) == ()
    assert sorted((scratch_migrations / "versions").glob("*.py")) == before


@pytest.fixture
def pruning_count_check(monkeypatch: pytest.MonkeyPatch) -> models.CheckConstraint:
    """A CHECK constraint added to ``Call``, on a column that holds data already."""
    constraint = models.CheckConstraint(condition=Q(pruning_count__gte=0), name="ck_calls_pruning_count_non_negative")
    monkeypatch.setattr(Call._meta, "constraints", [*Call._meta.constraints, constraint])
    return constraint


@pytest.fixture
def without_role_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ConversationMessage`` without its CHECK constraint on ``role``."""
    monkeypatch.setattr(ConversationMessage._meta, "constraints", [])


def tables(url: sa.URL) -> set[str]:
    with inspected(url) as inspector:
        return set(inspector.get_table_names())


def test_a_downgrade_keeps_the_values_of_the_columns_an_autogenerated_revision_added(
        head_db: sa.URL, priority_field: models.Field, scratch_migrations: Path) -> None:
    """The guide's ``priority`` example: set to 5, downgraded, upgraded again: 5, not the default 0."""
    (revision,) = commands.create_revision(message="add_scratch_priority_to_calls", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    column = "[sa.Column('scratch_priority', sa.Integer(), server_default=sa.text('0'), nullable=False)]"
    archive = f"archive_{revision}_calls"
    assert f"    archive_columns('calls', {column}, archive='{archive}', where='scratch_priority <> 0')\n" in text
    assert f"    restore_columns('calls', {column}, archive='{archive}')\n" in text
    assert (f"- Downgrade keeps the values of calls.scratch_priority in {archive}; "
            "the next upgrade restores them.") in text

    commands.upgrade(revision="head", url=head_db)
    run_sql(head_db, "INSERT INTO calls (phone_number) VALUES ('+15550000001'), ('+15550000002'), ('+15550000003')")
    run_sql(head_db, "UPDATE calls SET scratch_priority = 5 WHERE phone_number <> '+15550000003'")
    commands.downgrade(revision="-1", url=head_db)
    assert "scratch_priority" not in columns(head_db)
    assert archive in tables(head_db)

    commands.upgrade(revision="head", url=head_db)
    assert run_sql(head_db, "SELECT phone_number, scratch_priority FROM calls ORDER BY id") == [
        ("+15550000001", 5), ("+15550000002", 5), ("+15550000003", 0)]
    assert archive not in tables(head_db)
    commands.check(url=head_db)
    assert not [c.revision for c in checksums.verify(url=head_db) if c.changed]


def test_a_column_the_models_no_longer_have_is_dropped_by_an_expand_and_a_contract_revision(
        head_db: sa.URL, scratch_migrations: Path) -> None:
    run_sql(head_db, "ALTER TABLE call_notes ADD COLUMN reviewed_by VARCHAR(40)")  # a field since removed
    expand, contract = commands.create_revision(message="remove reviewed_by", autogenerate=True, url=head_db)
    step = "expand_steps = [\n    DropColumn('call_notes', 'reviewed_by'),\n]\n"
    assert step in written(scratch_migrations, expand) and step in written(scratch_migrations, contract)
    assert body(written(scratch_migrations, expand), "upgrade") == ["expand(revision, expand_steps)"]
    assert body(written(scratch_migrations, contract), "upgrade") == ["contract(contracts, expand_steps)"]
    assert "drop_column(" not in written(scratch_migrations, expand) + written(scratch_migrations, contract)
    accepted = lint.accepted_findings(state.script_directory().get_revision(contract))
    assert set(accepted) == {"ban-drop-column"}
    assert "drops call_notes.reviewed_by, values archived first" in accepted["ban-drop-column"]
    if head_db.get_backend_name() == "postgresql":  # the drop is the contract's, accepted: nothing left to refuse
        assert plan.plan(url=head_db).problems == []


def test_the_values_of_a_column_the_models_no_longer_have_are_kept_by_its_contract(
        head_db: sa.URL, scratch_migrations: Path) -> None:
    run_sql(head_db, "ALTER TABLE call_notes ADD COLUMN reviewed_by VARCHAR(40)")  # a field since removed
    run_sql(head_db, "INSERT INTO calls (id, phone_number) VALUES (1, '+15550000001')")
    run_sql(head_db, "INSERT INTO call_notes (call_id, body, reviewed_by) VALUES (1, 'a', 'ops'), (1, 'b', NULL)")
    expand, contract = commands.create_revision(message="remove reviewed_by", autogenerate=True, url=head_db)

    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    assert "reviewed_by" not in {c["name"] for c in column_list(head_db, "call_notes")}
    commands.downgrade(revision=HEAD, url=head_db)
    assert run_sql(head_db, "SELECT body, reviewed_by FROM call_notes ORDER BY id") == [("a", "ops"), ("b", None)]


def test_a_check_constraint_added_to_a_model_is_generated_not_valid_then_validated(
        head_db: sa.URL, pruning_count_check: models.CheckConstraint, scratch_migrations: Path) -> None:
    (revision,) = commands.create_revision(message="pruning count non negative", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    name = "ck_calls_pruning_count_non_negative"
    assert f"    add_check_constraint('{name}', 'calls', '\"pruning_count\" >= 0')\n" in text.split("def downgrade")[0]
    assert f"    drop_check_constraint('{name}', 'calls')\n" in text.split("def downgrade")[1]
    assert (f"DATA_CHECKS = {{\n    'every row of calls satisfies {name}': "
            "'SELECT id FROM calls WHERE NOT (\"pruning_count\" >= 0) ORDER BY id',\n}") in text
    assert "create_check_constraint(" not in text

    run_sql(head_db, "INSERT INTO calls (id, phone_number, pruning_count) VALUES (1, '+15550000001', -1)")
    if head_db.get_backend_name() == "postgresql":
        planned = plan.plan(url=head_db)
        assert [problem for problem in planned.problems if "squawk" in problem] == []
    with pytest.raises(errors.DataCheckFailed, match=name):
        commands.upgrade(revision="head", url=head_db)
    run_sql(head_db, "UPDATE calls SET pruning_count = 0")
    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    if head_db.get_backend_name() == "postgresql":
        assert run_sql(head_db, "SELECT convalidated FROM pg_constraint WHERE conname = :name", {"name": name}) == [
            (True,)]
    with pytest.raises(sa.exc.IntegrityError, match=name):
        run_sql(head_db, "UPDATE calls SET pruning_count = -1")
    commands.downgrade(revision="-1", url=head_db)
    run_sql(head_db, "UPDATE calls SET pruning_count = -1")


def test_a_check_constraint_removed_from_a_model_is_dropped_and_its_downgrade_adds_it_back(
        head_db: sa.URL, without_role_check: None, scratch_migrations: Path) -> None:
    (revision,) = commands.create_revision(message="any role", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    upgrade, downgrade = text.split("def upgrade() -> None:")[1].split("def downgrade() -> None:")
    assert "    drop_check_constraint('ck_conversation_history_role', 'conversation_history')\n" in upgrade
    assert "    add_check_constraint('ck_conversation_history_role', 'conversation_history', " in downgrade
    insert = "INSERT INTO conversation_history (call_id, role, content) VALUES (1, 'robot', 'beep')"

    run_sql(head_db, "INSERT INTO calls (id, phone_number) VALUES (1, '+15550000001')")
    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    run_sql(head_db, insert)
    run_sql(head_db, "DELETE FROM conversation_history")
    commands.downgrade(revision="-1", url=head_db)
    with pytest.raises(sa.exc.IntegrityError, match="ck_conversation_history_role"):
        run_sql(head_db, insert)


@pytest.mark.parametrize(
    ("column", "where"),
    [
        (sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False), "priority <> 0"),
        (sa.Column("region", sa.String(8), server_default=sa.text("'us'::character varying"), nullable=True),
         "region IS NULL OR region <> 'us'::character varying"),
        (sa.Column("flagged", sa.Boolean(), server_default=sa.false(), nullable=False), "flagged <> false"),
        (sa.Column("reviewed_by", sa.String(40), nullable=True), "reviewed_by IS NOT NULL"),
        (sa.Column("seen_at", sa.DateTime(), server_default=sa.func.now(), nullable=True),
         "seen_at IS NULL OR seen_at IS NOT NULL"),
    ],
)
def test_a_downgrade_archives_the_rows_a_readded_column_would_not_give_back(column: sa.Column, where: str) -> None:
    assert autogenerate.changed_by_readding(column, postgresql.dialect()) == where


# --- issue 25: renames, type changes and removed columns as one expand and one contract revision ------

OPERATORS_STEPS = (
    "expand_steps = [\n"
    "    RenameColumn('calls', 'outcome', 'call_outcome'),\n"
    "    ChangeType('calls', 'duration_seconds', sa.BigInteger(), up='duration_seconds::bigint', "
    "down='duration_seconds::integer'),\n"
    "    DropColumn('calls', 'voice_id'),\n"
    "]\n")
RENAME_OUTCOME = autogenerate.Rename("calls", "outcome", "call_outcome")


def revision_files(migrations: Path) -> list[Path]:
    return sorted((migrations / "versions").glob("*.py"))


def test_the_operators_change_with_rename_is_one_expand_and_one_contract_revision(
        head_db: sa.URL, operators_change: None, scratch_migrations: Path) -> None:
    """Issue 25: rename Call.outcome, widen duration_seconds, remove voice_id; ``--rename`` says the first."""
    expand, contract = commands.create_revision(message="outcome renamed, duration widened, voice_id removed",
                                                autogenerate=True, url=head_db, renames=[RENAME_OUTCOME])
    expand_text, contract_text = written(scratch_migrations, expand), written(scratch_migrations, contract)
    assert OPERATORS_STEPS in expand_text and OPERATORS_STEPS in contract_text
    assert body(expand_text, "upgrade") == ["expand(revision, expand_steps)"]
    assert body(expand_text, "downgrade") == ["undo_expand(revision, expand_steps)"]
    assert body(contract_text, "upgrade") == ["contract(contracts, expand_steps)"]
    assert body(contract_text, "downgrade") == ["undo_contract(contracts, expand_steps)"]
    assert "Check its conversions in expand_steps: up 'duration_seconds::bigint'" in expand_text.split('"""')[1]
    assert f"Contract step of {expand}" in contract_text.split('"""')[1]

    # The files are Python that says what the runtime reads: its own step objects, the gate's fill.
    scripts = state.script_directory()
    expand_steps = scripts.get_revision(expand).module.expand_steps
    assert expand_steps[0] == versioning.RenameColumn("calls", "outcome", "call_outcome")
    change = expand_steps[1]
    assert (type(change), change.table, change.column, type(change.type_), change.up, change.down) == (
        versioning.ChangeType, "calls", "duration_seconds", sa.BigInteger, "duration_seconds::bigint",
        "duration_seconds::integer")
    assert expand_steps[2] == versioning.DropColumn("calls", "voice_id")
    contract_script = scripts.get_revision(contract)
    assert contract_script.down_revision == expand
    assert contract_script.module.contracts == expand
    assert repr(contract_script.module.expand_steps) == repr(expand_steps)
    assert gate.requires_backfills(contract_script) == (versioning.fill_name(expand),)
    assert set(lint.accepted_findings(contract_script)) == {"renaming-column", "ban-drop-column"}

    if head_db.get_backend_name() == "postgresql":
        planned = plan.plan(url=head_db)
        assert [(rev.revision, rev.lint_findings) for rev in planned.pending] == [(expand, ()), (contract, ())]
        # What stands between them is the fill of the new column, not the SQL.
        (problem,) = planned.problems
        assert problem.startswith(f"revision {contract} needs the {versioning.fill_name(expand)} backfill")


def test_without_rename_and_without_a_terminal_nothing_is_taken_for_a_rename(
        head_db: sa.URL, operators_change: None, scratch_migrations: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\n"))  # an answer nobody may ask for: no terminal
    result = call(head_db, "migrate_schema", "revision", "--autogenerate", "-m", "outcome changed")
    assert result.returncode == 0, result.stderr
    assert "renamed" not in result.stdout
    assert error_lines(result.stderr) == [
        f"warning: calls.{old} is removed and calls.call_outcome added, alike but for the name: not taken for a "
        "rename (not asked: no terminal, or --noinput); if it is one, delete the revisions written and run again with "
        f"--rename calls.{old}=call_outcome" for old in ("outcome", "voice_id")]
    expand, _contract = re.findall(r"Created revision (\w+)", result.stdout)
    text = written(scratch_migrations, expand)
    assert "RenameColumn" not in text
    assert "    DropColumn('calls', 'outcome'),\n    DropColumn('calls', 'voice_id'),\n" in text
    # op.add_column('calls', ...) on PostgreSQL; batch_op.add_column(...) inside batch_alter_table on SQLite.
    assert re.search(r"add_column\((?:'calls', )?sa\.Column\('call_outcome', sa\.String\(length=64\), "
                     r"nullable=True\)\)", "\n".join(body(text, "upgrade")))
    assert body(text, "upgrade")[-1] == "expand(revision, expand_steps)"
    notes = text.split('"""')[1]
    assert ("- calls.outcome is removed and calls.call_outcome added, alike but for the name: not taken for a "
            "rename. If it is one, write this revision again with --rename calls.outcome=call_outcome") in notes


@pytest.mark.parametrize(("rename", "why"), [
    ("calls.outcome=call_result", "the models add no column calls.call_result"),
    ("calls.status=call_outcome", "the models still have calls.status, or the table has no such column"),
    ("calls.voice_id=scratch_priority",
     "calls.voice_id and calls.scratch_priority differ in type, nullability or default"),
    ("calls.outcome", "say TABLE.OLD=NEW"),
    ("calls.outcome=contacts.call_outcome", "say TABLE.OLD=NEW"),
    ("calls.outcome=call outcome", "say TABLE.OLD=NEW"),
])
def test_a_rename_that_names_no_such_pair_is_refused_in_one_line(
        pg_head_db: sa.URL, operators_change: None, priority_field: models.Field, scratch_migrations: Path,
        rename: str, why: str) -> None:
    before = revision_files(scratch_migrations)
    result = call(pg_head_db, "migrate_schema", "revision", "--autogenerate", "-m", "x", "--rename", rename)
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"CommandError: --rename {rename if why != 'say TABLE.OLD=NEW' else repr(rename)}")
    assert why in line
    assert revision_files(scratch_migrations) == before


def test_a_rename_is_refused_when_the_models_match_the_database(
        pg_head_db: sa.URL, scratch_migrations: Path) -> None:
    with pytest.raises(errors.InvalidRename, match=r"^--rename calls\.outcome=call_outcome names no rename this "
                                                   r"autogenerate can make: the models and the database do not differ"):
        commands.create_revision(message="x", autogenerate=True, url=pg_head_db, renames=[RENAME_OUTCOME])
    with pytest.raises(errors.InvalidRename, match="--rename goes with --autogenerate"):
        commands.create_revision(message="x", url=pg_head_db, renames=[RENAME_OUTCOME])


@contextlib.contextmanager
def terminal(monkeypatch: pytest.MonkeyPatch, typed: str) -> Iterator[None]:
    """Make stdin a real terminal (a pseudo-terminal) on which ``typed`` waits to be read."""
    leader, follower = pty.openpty()
    os.write(leader, typed.encode())
    with os.fdopen(follower, "r") as stdin:
        assert stdin.isatty()
        monkeypatch.setattr(sys, "stdin", stdin)
        try:
            yield
        finally:
            os.close(leader)


@pytest.mark.parametrize(("typed", "args", "asked", "renamed"), [
    ("y\n", (), ["outcome"], True),  # then call_outcome is taken: voice_id is not asked about
    ("n\nno\n", (), ["outcome", "voice_id"], False),
    ("\n\n", (), ["outcome", "voice_id"], False),  # no answer is no
    ("maybe\nyes\n", (), ["outcome", "outcome"], True),
    ("", ("--rename", "calls.outcome=call_outcome"), [], True),  # named: nothing left to ask
    ("y\n", ("--noinput",), [], False),
])
def test_a_terminal_is_asked_about_each_candidate_and_its_answer_honoured(
        pg_head_db: sa.URL, operators_change: None, scratch_migrations: Path, monkeypatch: pytest.MonkeyPatch,
        typed: str, args: tuple[str, ...], asked: list[str], renamed: bool) -> None:
    with terminal(monkeypatch, typed):
        result = call(pg_head_db, "migrate_schema", "revision", "--autogenerate", "-m", "outcome", *args)
    assert result.returncode == 0, result.stderr
    assert re.findall(r"Was calls\.(\w+) renamed to calls\.call_outcome \(a CharField\)\? \[y/N\]",
                      result.stdout) == asked
    expand, contract = re.findall(r"Created revision (\w+)", result.stdout)
    text = written(scratch_migrations, expand)
    assert ("    RenameColumn('calls', 'outcome', 'call_outcome'),\n" in text) is renamed
    assert ("    DropColumn('calls', 'outcome'),\n" in text) is not renamed
    assert ("add_column(" in text) is not renamed


def test_a_rename_and_a_removal_pass_plan_as_written(
        pg_head_db: sa.URL, outcome_renamed_voice_id_removed: None, scratch_migrations: Path) -> None:
    result = call(pg_head_db, "migrate_schema", "revision", "--autogenerate", "-m", "outcome renamed",
                  "--rename", "calls.outcome=call_outcome")
    expand, contract = re.findall(r"Created revision (\w+)", result.stdout)
    assert "requires_backfills" not in written(scratch_migrations, contract)  # nothing to fill
    planned = call(pg_head_db, "migrate_schema", "plan")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert f"pending {expand}" in planned.stdout and f"pending {contract}" in planned.stdout
    assert "Safe to apply" in planned.stdout


def test_a_renamed_and_a_removed_column_go_through_expand_and_contract_and_back(
        head_db: sa.URL, outcome_renamed_voice_id_removed: None, scratch_migrations: Path) -> None:
    expand, contract = commands.create_revision(message="outcome renamed", autogenerate=True, url=head_db,
                                                renames=[RENAME_OUTCOME])
    run_sql(head_db, "INSERT INTO calls (id, phone_number, outcome, voice_id) VALUES (1, '+15550000001', 'sold', 'v1')")
    commands.upgrade(revision=expand, url=head_db)
    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    assert run_sql(head_db, "SELECT call_outcome FROM calls") == [("sold",)]
    assert {"outcome", "voice_id"}.isdisjoint(columns(head_db))
    commands.downgrade(revision=HEAD, url=head_db)
    assert run_sql(head_db, "SELECT outcome, voice_id FROM calls") == [("sold", "v1")]


def test_not_null_on_an_existing_column_is_set_without_blocking_writes_once_filled(
        head_db: sa.URL, summary_required: None, scratch_migrations: Path) -> None:
    (revision,) = commands.create_revision(message="summary required", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    assert body(text, "upgrade") == ["set_not_null('calls', 'summary', sa.TEXT())"]
    assert body(text, "downgrade") == ["drop_not_null('calls', 'summary', sa.TEXT())"]
    assert "'no NULL in calls.summary': 'SELECT id FROM calls WHERE summary IS NULL ORDER BY id'" in text

    run_sql(head_db, "INSERT INTO calls (id, phone_number) VALUES (1, '+15550000001')")
    if head_db.get_backend_name() == "postgresql":
        planned = plan.plan(url=head_db)
        assert [problem for problem in planned.problems if "squawk" in problem] == []
        assert [check.status for check in planned.pending[0].data_checks] == ["failed"]
    with pytest.raises(errors.DataCheckFailed, match=r"no NULL in calls\.summary"):
        commands.upgrade(revision="head", url=head_db)
    run_sql(head_db, "UPDATE calls SET summary = 'called'")
    commands.upgrade(revision="head", url=head_db)
    assert columns(head_db)["summary"] is False
    commands.check(url=head_db)
    commands.downgrade(revision=HEAD, url=head_db)
    assert columns(head_db)["summary"] is True


def test_not_null_on_an_existing_column_beside_expand_steps_is_the_contracts(
        pg_head_db: sa.URL, operators_change: None, summary_required: None, scratch_migrations: Path) -> None:
    expand, contract = commands.create_revision(message="outcome", autogenerate=True, url=pg_head_db,
                                                renames=[RENAME_OUTCOME])
    assert "set_not_null" not in written(scratch_migrations, expand)
    text = written(scratch_migrations, contract)
    assert body(text, "upgrade") == ["contract(contracts, expand_steps)", "set_not_null('calls', 'summary', sa.TEXT())"]
    assert body(text, "downgrade") == ["drop_not_null('calls', 'summary', sa.TEXT())",
                                       "undo_contract(contracts, expand_steps)"]
    assert "'no NULL in calls.summary'" in text


def test_the_index_of_a_renamed_column_is_renamed_by_the_contract(
        pg_head_db: sa.URL, phone_number_renamed: None, scratch_migrations: Path) -> None:
    expand, contract = commands.create_revision(message="phone", autogenerate=True, url=pg_head_db,
                                                renames=[autogenerate.Rename("calls", "phone_number", "phone")])
    assert body(written(scratch_migrations, expand), "upgrade") == ["expand(revision, expand_steps)"]
    text = written(scratch_migrations, contract)
    assert body(text, "upgrade") == [
        "contract(contracts, expand_steps)",
        "with op.get_context().autocommit_block():", "drop_index('ix_calls_phone_number', 'calls')",
        "with op.get_context().autocommit_block():", "build_index('ix_calls_phone', 'calls', ['phone'])"]
    assert body(text, "downgrade") == [
        "with op.get_context().autocommit_block():", "drop_index('ix_calls_phone', 'calls')",
        "undo_contract(contracts, expand_steps)",
        "with op.get_context().autocommit_block():", "build_index('ix_calls_phone_number', 'calls', ['phone_number'])"]
    planned = plan.plan(url=pg_head_db)
    assert planned.problems == []


@pytest.mark.parametrize(("text", "parsed"), [
    ("calls.outcome=call_outcome", ("calls", "outcome", "call_outcome")),
    (" calls.outcome=calls.call_outcome ", ("calls", "outcome", "call_outcome")),
])
def test_a_rename_is_read_as_table_old_new(text: str, parsed: tuple[str, str, str]) -> None:
    rename = autogenerate.Rename.parse(text)
    assert (rename.table, rename.old, rename.new) == parsed
    assert str(rename) == "calls.outcome=call_outcome"


@pytest.mark.parametrize("text", ["outcome=call_outcome", "calls.outcome=", "calls.out-come=x", "calls.a=b;drop",
                                  'calls."x"=y'])
def test_a_malformed_rename_is_refused(text: str) -> None:
    with pytest.raises(errors.InvalidRename, match=r"say TABLE\.OLD=NEW"):
        autogenerate.Rename.parse(text)


def test_a_required_column_removed_is_left_out_by_the_new_release_and_dropped_by_the_contract(
        pg_head_db: sa.URL, phone_number_removed: None, scratch_migrations: Path) -> None:
    expand, contract = commands.create_revision(message="no phone", autogenerate=True, url=pg_head_db)
    text = written(scratch_migrations, expand)
    assert "    DropColumn('calls', 'phone_number'),\n" in text
    assert ("- calls.phone_number leaves the new shape (NOT NULL without a default: expand makes it nullable, so "
            "that the new release's rows pass); contract archives its values and drops it.") in text
    accepted = lint.accepted_findings(state.script_directory().get_revision(expand))
    assert list(accepted) == ["ban-drop-not-null"]
    assert accepted["ban-drop-not-null"].startswith("calls.phone_number: the release after this revision writes no")
    assert plan.plan(url=pg_head_db).problems == []


def test_a_unique_constraint_is_an_index_built_concurrently_then_the_constraint_made_of_it(
        head_db: sa.URL, voice_id_unique: None, scratch_migrations: Path) -> None:
    expand, contract = commands.create_revision(message="voice_id unique", autogenerate=True, url=head_db)
    expand_text, contract_text = written(scratch_migrations, expand), written(scratch_migrations, contract)
    assert body(expand_text, "upgrade") == ["with op.get_context().autocommit_block():",
                                            "build_index('uq_calls_voice_id', 'calls', ['voice_id'], unique=True)"]
    assert ("'no two rows of calls share voice_id': 'SELECT voice_id FROM calls WHERE voice_id IS NOT NULL "
            "GROUP BY voice_id HAVING count(*) > 1'") in expand_text
    assert body(contract_text, "upgrade") == ["add_unique_constraint('uq_calls_voice_id', 'calls', ['voice_id'])"]
    assert body(contract_text, "downgrade") == ["drop_unique_constraint('uq_calls_voice_id', 'calls', ['voice_id'])"]

    run_sql(head_db, "INSERT INTO calls (phone_number, voice_id) VALUES ('+15550000001', 'v1'), "
                     "('+15550000002', 'v1'), ('+15550000003', NULL), ('+15550000004', NULL)")
    if head_db.get_backend_name() == "postgresql":
        planned = plan.plan(url=head_db)
        assert [rev.lint_findings for rev in planned.pending] == [(), ()]
        assert [check.status for check in planned.pending[0].data_checks] == ["failed"]
    with pytest.raises(errors.DataCheckFailed, match=r"no two rows of calls share voice_id.*\('v1',\)"):
        commands.upgrade(revision="head", url=head_db)
    run_sql(head_db, "UPDATE calls SET voice_id = 'v2' WHERE phone_number = '+15550000002'")
    commands.upgrade(revision=expand, url=head_db)
    with pytest.raises(sa.exc.IntegrityError):  # from the expand on, the index refuses a shared value
        run_sql(head_db, "INSERT INTO calls (phone_number, voice_id) VALUES ('+15550000005', 'v1')")
    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    with inspected(head_db) as inspector:
        assert [u["name"] for u in inspector.get_unique_constraints("calls")] == ["uq_calls_call_sid",
                                                                                  "uq_calls_voice_id"]
    commands.downgrade(revision=expand, url=head_db)
    with inspected(head_db) as inspector:
        assert [u["name"] for u in inspector.get_unique_constraints("calls")] == ["uq_calls_call_sid"]
        assert [(i["name"], i["unique"]) for i in inspector.get_indexes("calls") if i["name"] == "uq_calls_voice_id"] \
            == [("uq_calls_voice_id", True)]
    commands.downgrade(revision=HEAD, url=head_db)
    run_sql(head_db, "INSERT INTO calls (phone_number, voice_id) VALUES ('+15550000005', 'v1')")
