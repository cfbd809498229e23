"""The revisions one by one, on PostgreSQL and SQLite: upgrade, downgrade, data preservation, full cycle.

Index effectiveness is in test_index_effectiveness.py, timing in test_timing.py, pytest-alembic's
built-in checks in test_pytest_alembic.py, model/schema drift in tests/schema_engine/test_metadata.py.
The chain itself comes from Alembic's ScriptDirectory (``tests.conftest.REVISIONS``), so a new
revision is tested by every generic check here (its upgrade, its downgrade back to exactly the
schema before it, data kept, the full cycle) without an edit; ``ADDS`` may say what it adds, and
is then held to it. Only the test that the released ids and file names hold lists them.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sqlalchemy as sa

from schema_engine import commands, errors, progress, state
from tests.conftest import REVISIONS, archives, previous, run_sql, snapshot

# The guide's chain (design.md), in order: (revision id, file name). Its users type these ids.
GUIDE_CHAIN = [
    ("000_django_framework", "000_add_django_framework_tables.py"),
    ("26a6cb1543c8", "26a6cb1543c8_add_base_tables.py"),
    ("001_langsmith_monitoring", "001_add_langsmith_monitoring_tables.py"),
    ("002_voice_agent_integration", "002_add_voice_agent_integration_fields.py"),
    ("003_context_management", "003_add_context_management_fields.py"),
    ("004_performance_indexes", "004_add_performance_indexes.py"),
    ("005_backfill_runs", "005_add_backfill_runs.py"),
]
# Revisions of this project's own after the guide's, in order; the released ones (later ones need no entry).
OWN_CHAIN = [("006_backfill_controls", "006_add_backfill_controls.py")]

# What a revision adds: tables, columns of existing tables, indexes. Optional: a revision without
# an entry is held to the generic checks only.
ADDS: dict[str, dict[str, object]] = {
    "000_django_framework": {
        "tables": {"django_content_type", "auth_permission", "auth_group", "auth_group_permissions", "auth_user",
                   "auth_user_groups", "auth_user_user_permissions", "django_admin_log", "django_session"},
    },
    "26a6cb1543c8": {"tables": {"contacts", "calls", "conversation_history", "call_notes"}},
    "001_langsmith_monitoring": {
        "tables": {"workflow_traces", "agent_executions", "performance_metrics", "system_metrics"},
    },
    "002_voice_agent_integration": {
        "tables": {"agent_transitions", "tier_escalation_events"},
        "columns": {"calls": {"call_sid", "voice_provider", "voice_id", "current_agent", "escalation_count",
                              "avg_response_latency_ms"}},
        "indexes": {"calls": {"ix_calls_current_agent"}},
    },
    "003_context_management": {
        "columns": {"calls": {"context_pruned", "pruning_count", "total_context_tokens"},
                    "conversation_history": {"importance", "token_count"}},
        "indexes": {"calls": {"ix_calls_context_pruning"}},
    },
    "004_performance_indexes": {
        "indexes": {
            "calls": {"ix_calls_created_at_covering", "ix_calls_status_created_at", "ix_calls_tier_created_at",
                      "ix_calls_pruned_created_at", "ix_calls_context_pending"},
            "conversation_history": {"ix_conversation_history_tokens_pending"},
            "performance_metrics": {"ix_performance_metrics_recorded_at"},
            "system_metrics": {"ix_system_metrics_recorded_at"},
        },
    },
    "005_backfill_runs": {
        "tables": {"backfill_runs", "backfill_batches"},
        "indexes": {"backfill_runs": {"ix_backfill_runs_backfill_started_at", "uq_backfill_runs_one_running"}},
    },
    "006_backfill_controls": {"columns": {"backfill_runs": {"paused_by", "paused_at", "cancelled_by", "batch_splits"}}},
}


def test_chain_begins_with_the_released_ids_and_file_names() -> None:
    """The guide's users type these ids; a renamed file or id breaks their runbooks. New revisions follow them."""
    script = state.script_directory()
    released = GUIDE_CHAIN + OWN_CHAIN
    assert REVISIONS[:len(released)] == [revision for revision, _ in released]
    for revision, filename in released:
        assert Path(script.get_revision(revision).path).name == filename


def test_every_spec_names_a_revision_of_the_chain() -> None:
    """A spec left behind by a renamed or removed revision would silently test nothing."""
    assert set(ADDS) <= set(REVISIONS)


@pytest.mark.parametrize("revision", REVISIONS)
def test_revision_reads_like_the_guide(revision: str) -> None:
    """A docstring says what and why; upgrade() and downgrade() exist; no import of today's models."""
    tree = ast.parse(Path(state.script_directory().get_revision(revision).path).read_text())
    docstring = ast.get_docstring(tree)
    assert docstring and len(docstring.splitlines()) > 5, "say what the revision does and why"
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {"upgrade", "downgrade"} <= functions
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m and m.split(".")[0] in ("calls", "monitoring", "django", "reautomation")}


@pytest.mark.parametrize("revision", REVISIONS)
def test_upgrade_adds_and_downgrade_removes(empty_db: sa.URL, revision: str) -> None:
    """Each revision adds what ``ADDS`` says (when it says), and its downgrade gives back exactly
    the schema before it."""
    commands.upgrade(revision=previous(revision), url=empty_db) if previous(revision) != "base" else None
    before = snapshot(empty_db)

    commands.upgrade(revision=revision, url=empty_db)
    after = snapshot(empty_db)
    if revision in ADDS:
        adds = ADDS[revision]
        assert set(after) - set(before) == adds.get("tables", set())
        for table, columns in adds.get("columns", {}).items():
            names = {c[0] for c in after[table]["columns"]} - {c[0] for c in before[table]["columns"]}
            assert names == columns
        for table, indexes in adds.get("indexes", {}).items():
            assert indexes <= set(after[table]["indexes"]) - set(before.get(table, {}).get("indexes", []))

    commands.downgrade(revision=previous(revision), url=empty_db)
    assert snapshot(empty_db) == before


def test_full_cycle_base_head_base_head(empty_db: sa.URL) -> None:
    """Up to head, down to base, up again: the same schema both times, nothing left behind."""
    commands.upgrade(revision="head", url=empty_db)
    first = snapshot(empty_db)
    commands.downgrade(revision="base", url=empty_db)
    assert snapshot(empty_db) == {}
    # The upgrade wrote Django's content types and permissions: base keeps them, for the next upgrade.
    assert archives(empty_db) == {"archive_000_django_content_type", "archive_000_auth_permission"}
    commands.upgrade(revision="head", url=empty_db)
    assert snapshot(empty_db) == first
    assert archives(empty_db) == set()
    commands.check(url=empty_db)


def _now(url: sa.URL) -> str:
    return "NOW()" if url.get_backend_name() == "postgresql" else "CURRENT_TIMESTAMP"


def test_guides_raw_insert_at_002_works_as_written(make_database) -> None:
    """The guide's manual test step, verbatim, on PostgreSQL at revision 002."""
    url = make_database("postgresql")
    commands.upgrade(revision="002_voice_agent_integration", url=url)
    run_sql(url, "INSERT INTO calls (phone_number, status, tier, created_at) "
                 "VALUES ('+15555551234', 'completed', 'tier1', NOW());")
    commands.upgrade(revision="003_context_management", url=url)
    rows = run_sql(url, "SELECT phone_number, status, tier, context_pruned, pruning_count, total_context_tokens, "
                        "total_cost, escalation_count, updated_at IS NOT NULL FROM calls")
    assert [tuple(r) for r in rows] == [("+15555551234", "completed", "tier1", False, 0, None, 0, 0, True)]


def test_data_survives_every_upgrade_and_downgrade(empty_db: sa.URL) -> None:
    """Rows written at 002 survive to head; a downgrade archives the dropped columns; an upgrade restores them."""
    now = _now(empty_db)
    commands.upgrade(revision="002_voice_agent_integration", url=empty_db)
    run_sql(empty_db, "INSERT INTO contacts (phone_number, first_name) VALUES ('+15555550001', 'Ana')")
    run_sql(empty_db, f"INSERT INTO calls "
                      f"(phone_number, status, tier, created_at, contact_id, call_sid, current_agent) "
                      f"VALUES ('+15555550001', 'completed', 'tier2', {now}, 1, 'CA1', 'scheduler')")
    run_sql(empty_db, f"INSERT INTO calls (phone_number, status, tier, created_at) "
                      f"VALUES ('+15555550002', 'failed', 'tier1', {now})")
    # Data from other systems arrives with only these columns.
    run_sql(empty_db, f"INSERT INTO conversation_history (call_id, role, content, created_at) "
                      f"VALUES (1, 'user', 'Hello?', {now}), (1, 'assistant', 'Hi Ana!', {now})")

    commands.upgrade(revision="head", url=empty_db)
    assert run_sql(empty_db, "SELECT count(*) FROM calls")[0][0] == 2
    assert run_sql(empty_db, "SELECT count(*) FROM conversation_history WHERE token_count IS NULL")[0][0] == 2
    run_sql(empty_db, "UPDATE calls SET total_context_tokens = 17, context_pruned = TRUE, pruning_count = 2 "
                      "WHERE id = 1")
    run_sql(empty_db, "UPDATE conversation_history SET token_count = 5, importance = 0.25")

    commands.downgrade(revision="002_voice_agent_integration", url=empty_db)
    assert run_sql(empty_db, "SELECT count(*) FROM archive_003_calls")[0][0] == 1  # call 2 held only defaults
    assert run_sql(empty_db, "SELECT count(*) FROM archive_003_conversation_history")[0][0] == 2
    commands.downgrade(revision="001_langsmith_monitoring", url=empty_db)
    assert run_sql(empty_db, "SELECT call_sid, current_agent FROM archive_002_calls") == [("CA1", "scheduler")]
    assert run_sql(empty_db, "SELECT count(*) FROM calls")[0][0] == 2

    commands.upgrade(revision="head", url=empty_db)
    calls = run_sql(empty_db, "SELECT id, call_sid, current_agent, total_context_tokens, context_pruned, pruning_count "
                              "FROM calls ORDER BY id")
    assert [tuple(r) for r in calls] == [(1, "CA1", "scheduler", 17, True, 2), (2, None, None, None, False, 0)]
    messages = run_sql(empty_db, "SELECT token_count, importance FROM conversation_history ORDER BY id")
    assert [tuple(r) for r in messages] == [(5, 0.25), (5, 0.25)]
    assert archives(empty_db) == set()


# Rows of every table a downgrade drops, written at head: (table, columns and values). Parents first.
TABLE_ROWS = [
    ("contacts", "id, phone_number", "7, '+15555550007'"),
    ("calls", "id, phone_number, contact_id, call_sid", "11, '+15555550007', 7, 'CA11'"),
    ("conversation_history", "id, call_id, role, content", "21, 11, 'user', 'Is the house still for sale?'"),
    ("call_notes", "id, call_id, body", "31, 11, 'Call back on Monday'"),
    ("workflow_traces", "id, trace_id, call_id, workflow_name", "41, 'tr-41', 11, 'qualify'"),
    ("agent_executions", "id, trace_id, agent_name", "51, 41, 'qualifier'"),
    ("performance_metrics", "id, metric_name, value, call_id", "61, 'latency_ms', 250, 11"),
    ("system_metrics", "id, metric_name, value", "71, 'cpu', 0.5"),
    ("agent_transitions", "id, call_id, to_agent", "81, 11, 'scheduler'"),
    ("tier_escalation_events", "id, call_id, from_tier, to_tier", "91, 11, 'tier1', 'tier2'"),
    ("backfill_runs", "id, backfill, status", "101, 'messages', 'completed'"),
    ("backfill_runs", "id, backfill, status, resumed_from_id", "102, 'messages', 'completed', 101"),
]


@pytest.mark.parametrize("target", [pytest.param(rev, id=f"down-to-{rev}") for rev in
                                    ("004_performance_indexes", "001_langsmith_monitoring", "base")])
def test_a_downgrade_that_drops_tables_keeps_their_rows_and_the_upgrade_puts_them_back(
        empty_db: sa.URL, target: str) -> None:
    """Dropped tables holding rows are archived, and the next upgrade restores them with their ids."""
    commands.upgrade(revision="head", url=empty_db)
    for table, columns, values in TABLE_ROWS:
        run_sql(empty_db, f"INSERT INTO {table} ({columns}) VALUES ({values})")
    before = {table: [tuple(r) for r in run_sql(empty_db, f"SELECT * FROM {table} ORDER BY 1")]
              for table, _, _ in TABLE_ROWS}
    events: list[progress.Event] = []

    commands.downgrade(revision=target, url=empty_db, reporter=events.append)
    reported = [event.describe() for event in events if isinstance(event, commands.ArchiveNote)]
    assert any("archived 2 row(s) of backfill_runs in archive_005_backfill_runs" in line for line in reported)
    commands.upgrade(revision="head", url=empty_db, reporter=events.append)

    reported = [event.describe() for event in events if isinstance(event, commands.ArchiveNote)]
    assert any("restored 2 row(s) of backfill_runs" in line for line in reported)
    after = {table: [tuple(r) for r in run_sql(empty_db, f"SELECT * FROM {table} ORDER BY 1")] for table in before}
    assert after == before
    assert archives(empty_db) == set()
    # Ids continue after the restored ones (backfill_runs is dropped by every one of these downgrades).
    run_sql(empty_db, "INSERT INTO backfill_runs (backfill, status) VALUES ('calls', 'completed')")
    assert run_sql(empty_db, "SELECT max(id) FROM backfill_runs")[0][0] == 103


def test_a_restored_row_whose_parent_was_deleted_follows_its_on_delete_rule(empty_db: sa.URL) -> None:
    commands.upgrade(revision="head", url=empty_db)
    for table, columns, values in TABLE_ROWS[:9]:
        run_sql(empty_db, f"INSERT INTO {table} ({columns}) VALUES ({values})")
    run_sql(empty_db, "INSERT INTO calls (id, phone_number) VALUES (12, '+15555550012')")
    run_sql(empty_db, "INSERT INTO performance_metrics (id, metric_name, value, call_id) VALUES (62, 'x', 1, 12)")
    run_sql(empty_db, "INSERT INTO agent_transitions (id, call_id, to_agent) VALUES (82, 12, 'closer')")
    commands.downgrade(revision="26a6cb1543c8", url=empty_db)
    run_sql(empty_db, "DELETE FROM calls WHERE id = 12")  # deleted while the archives wait
    commands.upgrade(revision="head", url=empty_db)
    assert run_sql(empty_db, "SELECT id FROM agent_transitions ORDER BY id") == [(81,)]  # CASCADE: gone
    assert [tuple(r) for r in run_sql(empty_db, "SELECT id, call_id FROM performance_metrics ORDER BY id")] == [
        (61, 11), (62, None)]  # SET NULL: kept, unlinked


def test_downgrade_below_base_and_unknown_revisions_are_refused(empty_db: sa.URL) -> None:
    with pytest.raises(errors.InvalidRevisionRange, match="below base"):
        commands.downgrade(revision="-1", url=empty_db)
    with pytest.raises(errors.UnknownRevision, match="'nope'.*migrate_schema history"):
        commands.upgrade(revision="nope", url=empty_db)
    assert snapshot(empty_db) == {}


def test_failed_revision_keeps_earlier_ones_and_can_be_rerun(empty_db: sa.URL) -> None:
    """A revision that fails is rolled back alone: the database stays at the previous one."""
    commands.upgrade(revision="002_voice_agent_integration", url=empty_db)
    # Something another system left behind collides with what 003 creates.
    run_sql(empty_db, "CREATE INDEX ix_calls_context_pruning ON calls (status)")
    with pytest.raises(errors.RevisionFailed, match="rolled back"):
        commands.upgrade(revision="head", url=empty_db)
    assert state.status(url=empty_db).current == ("002_voice_agent_integration",)
    run_sql(empty_db, "DROP INDEX ix_calls_context_pruning")
    commands.upgrade(revision="head", url=empty_db)
    assert state.status(url=empty_db).at_head
