"""``backfill_context``: exact values, idempotent, resumable, cooperating, throttled, recorded;
PostgreSQL and SQLite."""
from __future__ import annotations

import gc
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from django.core.management import CommandError, call_command

from calls import backfill
from calls.backfill import runs, specs
from calls.backfill import sql as backfill_sql
from calls.context_policy import ContextPolicy, policy_message, replay
from calls.sample_data import generate_sample_data
from calls.tokens import count_tokens
from schema_engine import commands, database
from schema_engine.progress import Event
from tests.calls.conftest import kill_9
from tests.conftest import ROOT, django_url, run_sql, wait_for

# Small enough that sample conversations get pruned, so the replay is exercised for real.
POLICY = ContextPolicy(max_tokens=400, target_tokens=250, keep_recent=4, per_message=3, reply_priming=3)
AWKWARD = ["", "<|endoftext|> pasted", "🏡" * 40, "我们想看看三居室的房子。", "x" * 20_000]


def seed(url: sa.URL, calls: int = 30) -> None:
    with database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=calls, seed=7)
    now = "NOW()" if url.get_backend_name() == "postgresql" else "CURRENT_TIMESTAMP"
    run_sql(url, f"INSERT INTO calls (phone_number, status, tier, created_at) "
                 f"VALUES ('+15550000000', 'completed', 'tier1', {now})")
    call_id = run_sql(url, "SELECT max(id) FROM calls")[0][0]
    for content in AWKWARD:  # as other systems insert them: no turn index, no counts
        run_sql(url, f"INSERT INTO conversation_history (call_id, role, content, created_at) "
                     f"VALUES (:call, 'user', :content, {now})", {"call": call_id, "content": content})
    # A call with no messages: 0 tokens.
    run_sql(url, f"INSERT INTO calls (phone_number, status, tier, created_at) "
                 f"VALUES ('+15550000001', 'no_answer', 'tier1', {now})")


@pytest.fixture
def filled_db(head_db: sa.URL) -> sa.URL:
    seed(head_db)
    return head_db


def expected_messages(url: sa.URL) -> dict[int, int]:
    return {row.id: count_tokens(row.content) for row in run_sql(url, "SELECT id, content FROM conversation_history")}


def expected_calls(url: sa.URL) -> dict[int, tuple]:
    """Each call's context fields, replayed from its stored content in conversation order."""
    messages: dict[int, list] = {}
    for row in run_sql(url, "SELECT call_id, role, content FROM conversation_history "
                            "ORDER BY call_id, turn_index NULLS LAST, created_at, id"):
        messages.setdefault(row.call_id, []).append(
            policy_message(role=row.role, content=row.content, token_count=None, importance=None))
    result = {}
    for (call_id,) in run_sql(url, "SELECT id FROM calls"):
        state = replay(messages.get(call_id, []), POLICY)
        result[call_id] = (state.total_context_tokens, state.context_pruned, state.pruning_count)
    return result


def stored_messages(url: sa.URL) -> dict[int, int]:
    return {r.id: r.token_count for r in run_sql(url, "SELECT id, token_count FROM conversation_history")}


def stored_calls(url: sa.URL) -> dict[int, tuple]:
    return {r.id: (r.total_context_tokens, bool(r.context_pruned), r.pruning_count)
            for r in run_sql(url, "SELECT id, total_context_tokens, context_pruned, pruning_count FROM calls")}


def run(url: sa.URL, *, only: tuple[str, ...] = backfill.BACKFILLS, on_progress=None,
        **options: object) -> dict[str, backfill.BackfillResult]:
    """Run the backfills; ``on_progress`` hears their progress events."""
    def reporter(event: Event) -> None:
        if on_progress and isinstance(event, backfill.BackfillProgress):
            on_progress(event)

    results = backfill.backfill_context(url=url, only=only, options=backfill.BackfillOptions(**options), policy=POLICY,
                                        reporter=reporter)
    return {r.backfill: r for r in results}


def test_fills_every_value_exactly(filled_db: sa.URL) -> None:
    results = run(filled_db, batch_size=97)
    messages = run_sql(filled_db, "SELECT id, token_count, importance FROM conversation_history")
    assert {r.id: r.token_count for r in messages} == expected_messages(filled_db)
    assert all(r.importance is not None and 0 <= r.importance <= 1 for r in messages)
    calls = stored_calls(filled_db)
    assert calls == expected_calls(filled_db)
    assert any(pruned for _, pruned, _ in calls.values()), "the sample should exercise pruning"
    assert calls[max(calls)] == (0, False, 0)  # the call with no messages
    assert results["messages"].changed == len(messages) and results["calls"].changed == len(calls)


def test_hand_computed_call(head_db: sa.URL) -> None:
    now = "NOW()" if head_db.get_backend_name() == "postgresql" else "CURRENT_TIMESTAMP"
    run_sql(head_db, f"INSERT INTO calls (phone_number, status, tier, created_at) "
                     f"VALUES ('+1', 'completed', 'tier1', {now})")
    for turn, (role, content) in enumerate([("system", "hello world"), ("user", "Hello, world!"), ("assistant", "")]):
        run_sql(head_db, f"INSERT INTO conversation_history (call_id, role, content, turn_index, created_at) "
                         f"VALUES (1, '{role}', '{content}', {turn}, {now})")
    run(head_db)
    # (2 + 3) + (4 + 3) + (0 + 3) + 3 = 18
    assert stored_calls(head_db) == {1: (18, False, 0)}


def test_second_run_changes_nothing_and_recompute_only_fixes_what_is_wrong(filled_db: sa.URL) -> None:
    run(filled_db)
    again = run(filled_db, workers=2)
    assert (again["messages"].scanned, again["messages"].changed) == (0, 0)
    assert (again["calls"].scanned, again["calls"].changed) == (0, 0)
    # The first claim that found nothing moved the cursor to the end, so the other worker's
    # claim did not read the table again.
    assert run_sql(filled_db, "SELECT cursor FROM backfill_runs WHERE backfill = 'messages' ORDER BY id DESC LIMIT 1") \
        == run_sql(filled_db, "SELECT max(id) FROM conversation_history")
    run_sql(filled_db, "UPDATE conversation_history SET token_count = 999 WHERE id % 10 = 0")
    wrong = run_sql(filled_db, "SELECT count(*) FROM conversation_history WHERE token_count = 999")[0][0]
    assert run(filled_db)["messages"].changed == 0  # not NULL: a normal run leaves them
    forced = run(filled_db, recompute=True)
    total = run_sql(filled_db, "SELECT count(*) FROM conversation_history")[0][0]
    assert forced["messages"].scanned == total and forced["messages"].changed == wrong
    assert stored_messages(filled_db) == expected_messages(filled_db)


def test_importance_already_stored_is_kept(filled_db: sa.URL) -> None:
    run_sql(filled_db, "UPDATE conversation_history SET importance = 0.99 WHERE id % 3 = 0")
    run(filled_db)
    kept = run_sql(filled_db, "SELECT count(*) FROM conversation_history WHERE id % 3 = 0 AND importance = 0.99")[0][0]
    assert kept == run_sql(filled_db, "SELECT count(*) FROM conversation_history WHERE id % 3 = 0")[0][0]


def test_messages_missing_only_their_importance_are_found_too(filled_db: sa.URL) -> None:
    # Batches are bounded by the index of messages without a token count; messages with a count
    # but no importance fall between those bounds, or after the last one (the highest ids here).
    run(filled_db)
    run_sql(filled_db, "UPDATE conversation_history SET token_count = NULL WHERE id % 7 = 0")
    top = run_sql(filled_db, "SELECT max(id) FROM conversation_history")[0][0]
    run_sql(filled_db, f"UPDATE conversation_history SET importance = NULL WHERE id % 5 = 0 OR id > {top - 10}")
    pending = run_sql(filled_db, "SELECT count(*) FROM conversation_history "
                                 "WHERE token_count IS NULL OR importance IS NULL")[0][0]
    again = run(filled_db, batch_size=20, workers=2, only=("messages",))
    assert again["messages"].scanned == pending
    assert run_sql(filled_db, "SELECT count(*) FROM conversation_history "
                              "WHERE token_count IS NULL OR importance IS NULL") == [(0,)]
    assert stored_messages(filled_db) == expected_messages(filled_db)


def test_batches_are_ranges_of_ids_and_never_hold_more_rows_than_the_batch_size(filled_db: sa.URL) -> None:
    # Ids with gaps (deleted messages) and rows already counted between those still to count.
    run_sql(filled_db, "DELETE FROM conversation_history WHERE id % 3 = 0")
    run(filled_db, only=("messages",))
    run_sql(filled_db, "UPDATE conversation_history SET token_count = NULL WHERE id % 4 <> 0")
    pending = run_sql(filled_db, "SELECT count(*) FROM conversation_history WHERE token_count IS NULL")[0][0]
    scanned: list[int] = []
    again = run(filled_db, batch_size=10, workers=1, only=("messages",),
                on_progress=lambda p: scanned.append(p.scanned))  # one worker: one report per batch
    assert again["messages"].scanned == pending
    assert all(b - a <= 10 for a, b in zip([0, *scanned], scanned))
    assert stored_messages(filled_db) == expected_messages(filled_db)


def test_dry_run_counts_and_writes_nothing(filled_db: sa.URL) -> None:
    results = run(filled_db, dry_run=True)
    total = run_sql(filled_db, "SELECT count(*) FROM conversation_history")[0][0]
    assert results["messages"].changed == results["messages"].scanned == total
    assert run_sql(filled_db, "SELECT count(*) FROM conversation_history WHERE token_count IS NOT NULL")[0][0] == 0
    assert run_sql(filled_db, "SELECT count(*) FROM calls WHERE total_context_tokens IS NOT NULL")[0][0] == 0
    assert run_sql(filled_db, "SELECT count(*) FROM backfill_runs")[0][0] == 0


def test_each_run_is_recorded(filled_db: sa.URL) -> None:
    results = run(filled_db, batch_size=50)
    runs = run_sql(filled_db, "SELECT backfill, status, rows_scanned, rows_changed, cursor, finished_at, error, "
                              "rows_total FROM backfill_runs ORDER BY id")
    assert [(r.backfill, r.status) for r in runs] == [("messages", "succeeded"), ("calls", "succeeded")]
    messages = runs[0]
    assert messages.rows_scanned == messages.rows_changed == messages.rows_total == results["messages"].scanned
    assert messages.cursor == run_sql(filled_db, "SELECT max(id) FROM conversation_history")[0][0]
    assert messages.finished_at is not None and messages.error is None
    assert run_sql(filled_db, "SELECT count(*) FROM backfill_batches")[0][0] == 0


# Which of the first 200 messages a write touches: a range, a range with gaps (both written by
# position on PostgreSQL), and ids too far apart for that (written by joining unnest).
WRITE_LAYOUTS = {"range": [0, 1, 2, 3, 4], "gaps": [0, 2, 3, 6, 9], "far apart": [0, 50, 100, 150, 199]}


@pytest.mark.parametrize("layout", WRITE_LAYOUTS)
def test_a_batch_write_stores_exactly_the_values_given(filled_db: sa.URL, layout: str) -> None:
    # On PostgreSQL the values travel as array literals written by us: floats must round-trip
    # bit for bit, NULL must stay NULL (and keep what is stored), booleans and big ints intact,
    # and rows between the ones written are left alone (the rows are given in reverse order).
    first_ids = [r[0] for r in run_sql(filled_db, "SELECT id FROM conversation_history ORDER BY id LIMIT 200")]
    ids = [first_ids[i] for i in WRITE_LAYOUTS[layout]]
    run_sql(filled_db, f"UPDATE conversation_history SET importance = 0.25 WHERE id = {ids[4]}")
    before = {r.id: tuple(r)
              for r in run_sql(filled_db, "SELECT id, token_count, importance FROM conversation_history")}
    calls_before = stored_calls(filled_db)
    importances = [0.1, 1 / 3, 5e-324, 0.6, None]
    engine = database.create_engine(filled_db)
    with engine.begin() as conn:
        backfill_sql.bulk_update(conn, "conversation_history", ["token_count", "importance"],
                              ["integer", "double precision"],
                              [(id_, 2**31 - 1 - i, imp) for i, (id_, imp) in enumerate(zip(ids, importances))][::-1],
                              keep_existing={"importance"})
        calls = [r[0] for r in conn.execute(sa.text("SELECT id FROM calls ORDER BY id LIMIT 3"))]
        # The first and third call: the second one's slot (a gap) holds a boolean filler.
        backfill_sql.bulk_update(conn, "calls", ["total_context_tokens", "context_pruned", "pruning_count"],
                              ["integer", "boolean", "integer"], [(calls[0], 0, True, 7), (calls[2], 12, False, 0)])
    engine.dispose()
    after = {r.id: tuple(r) for r in run_sql(filled_db, "SELECT id, token_count, importance FROM conversation_history")}
    assert [after[id_][1:] for id_ in ids] == [(2**31 - 1 - i, imp) for i, imp in enumerate([*importances[:4], 0.25])]
    assert {id_: row for id_, row in after.items() if id_ not in ids} == {
        id_: row for id_, row in before.items() if id_ not in ids}
    calls_after = stored_calls(filled_db)
    assert (calls_after[calls[0]], calls_after[calls[2]]) == ((0, True, 7), (12, False, 0))
    assert calls_after[calls[1]] == calls_before[calls[1]]


def test_the_cycle_collector_is_paused_only_while_a_batch_runs(filled_db: sa.URL, monkeypatch) -> None:
    collecting_in_batches: list[bool] = []
    process = specs.MessagesBackfill.process

    def watched(self, *args, **kwargs):
        collecting_in_batches.append(gc.isenabled())
        return process(self, *args, **kwargs)

    monkeypatch.setattr(specs.MessagesBackfill, "process", watched)
    run(filled_db, batch_size=40, workers=1, only=("messages",))  # in this process, where the list is
    assert collecting_in_batches and not any(collecting_in_batches)
    assert gc.isenabled()
    run_sql(filled_db, "ALTER TABLE conversation_history RENAME COLUMN content TO body")
    with pytest.raises(backfill.BackfillFailed, match="content"):
        run(filled_db, batch_size=40, only=("messages",), recompute=True)
    assert gc.isenabled()  # a failing batch gives it back too


def test_the_total_is_counted_beside_the_workers_as_rows_were_before_any_batch(
    pg_seeded: sa.URL, monkeypatch
) -> None:
    # The count (a read of the whole table) is held back until batches have committed; its
    # snapshot, taken before any worker started, still sees every row the run visits.
    count_needing = runs.count_needing

    def count_after_some_batches(conn, spec, recompute, after=0):
        wait_for(lambda: (run_sql(pg_seeded, "SELECT max(rows_scanned) FROM backfill_runs")[0][0] or 0) >= 100)
        return count_needing(conn, spec, recompute, after)

    monkeypatch.setattr(runs, "count_needing", count_after_some_batches)
    totals: list[int | None] = []
    # One worker, a thread: its batches reach the progress as they commit (a process's reports come later).
    results = run(pg_seeded, batch_size=20, workers=1, only=("messages",), on_progress=lambda p: totals.append(p.total))
    total = run_sql(pg_seeded, "SELECT count(*) FROM conversation_history")[0][0]
    assert results["messages"].scanned == total
    assert run_sql(pg_seeded, "SELECT rows_total FROM backfill_runs") == [(total,)]
    assert totals[0] is None and totals[-1] == total  # progress had no total until it was counted


def test_a_failed_run_reports_without_waiting_for_its_count(pg_seeded: sa.URL, monkeypatch) -> None:
    count_needing, release, counted = runs.count_needing, threading.Event(), []

    def slow_count(*args, **kwargs):  # as on a table too big to count quickly
        release.wait(60)
        counted.append(count_needing(*args, **kwargs))
        return counted[-1]

    monkeypatch.setattr(runs, "count_needing", slow_count)
    run_sql(pg_seeded, "ALTER TABLE conversation_history RENAME COLUMN content TO body")
    try:
        with pytest.raises(backfill.BackfillFailed, match="content"):
            run(pg_seeded, batch_size=20, only=("messages",))
        assert counted == []  # reported while the count was still going
    finally:
        release.set()
    assert run_sql(pg_seeded, "SELECT status FROM backfill_runs") == [("failed",)]


@pytest.mark.parametrize(
    ("revision", "names"),
    [("002_voice_agent_integration", "below 003_context_management"),
     ("004_performance_indexes", "006_backfill_controls")],
)
def test_refuses_below_the_revisions_it_needs(empty_db: sa.URL, revision: str, names: str) -> None:
    commands.upgrade(revision=revision, url=empty_db)
    with pytest.raises(backfill.SchemaNotReady, match=f"{names}.*migrate_schema upgrade head"):
        run(empty_db)


def test_worker_processes_never_share_a_batch(filled_db: sa.URL) -> None:
    progress: list[int] = []
    results = run(filled_db, batch_size=40, workers=3,
                  on_progress=lambda p: progress.append(p.scanned) if p.backfill == "messages" else None)
    total = run_sql(filled_db, "SELECT count(*) FROM conversation_history")[0][0]
    assert results["messages"].scanned == total  # each row scanned once: no batch twice
    assert stored_calls(filled_db) == expected_calls(filled_db)
    assert progress == sorted(progress) and total in progress  # every batch reported to the parent
    assert run_sql(filled_db, "SELECT backfill, status, rows_scanned FROM backfill_runs ORDER BY id") == [
        ("messages", "succeeded", total), ("calls", "succeeded", results["calls"].scanned)]


def test_calls_before_messages_replay_every_call_from_content(filled_db: sa.URL, monkeypatch) -> None:
    # No message counted yet: no call can be decided from sums, all are replayed from their
    # content, a few call ids per query (the bound keeps parameters under the databases' limits).
    monkeypatch.setattr(specs.CallsBackfill, "IDS_PER_QUERY", 3)
    run(filled_db, batch_size=50, only=("calls",))
    assert stored_calls(filled_db) == expected_calls(filled_db)
    assert run_sql(filled_db, "SELECT count(*) FROM conversation_history WHERE token_count IS NOT NULL")[0][0] == 0


def test_a_failing_worker_process_fails_the_run_with_its_error(filled_db: sa.URL) -> None:
    # A real database error inside a worker process: the message column is not text any more.
    run_sql(filled_db, "ALTER TABLE conversation_history RENAME COLUMN content TO body")
    with pytest.raises(backfill.BackfillFailed, match="failed in run 1: .*content.*run the same command again"):
        run(filled_db, batch_size=40, workers=2, only=("messages",))
    ((status, error),) = run_sql(filled_db, "SELECT status, error FROM backfill_runs")
    assert status == "failed" and "content" in error


@pytest.mark.parametrize(("ended_as", "claims"), [("succeeded", []), ("failed", None)])
def test_a_worker_that_joined_late_stops_cleanly_only_if_the_run_succeeded(
    filled_db: sa.URL, ended_as: str, claims: list | None
) -> None:
    """Another worker may end the run between two of this worker's claims."""
    engine = database.create_engine(filled_db)
    run = runs.Run(engine, specs.MessagesBackfill(), backfill.BackfillOptions())
    run.start()
    run_sql(filled_db, "UPDATE backfill_runs SET status = :s", {"s": ended_as})
    with engine.connect() as conn:
        if claims is None:
            with pytest.raises(backfill.BackfillFailed, match=f"marked {ended_as}"):
                run.claim(conn, 1, 500)
        else:
            assert run.claim(conn, 1, 500) == claims
    engine.dispose()


def test_throttle_limits_the_rate(filled_db: sa.URL) -> None:
    started = time.monotonic()
    result = run(filled_db, batch_size=100, max_rows_per_second=2000)["messages"]
    assert time.monotonic() - started >= result.scanned / 2000 * 0.9


def command_output(*args: str, tty: bool = False) -> str:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return tty

    out = Terminal()
    call_command("backfill_context", *args, stdout=out)
    return out.getvalue()


def test_command_reports_lines_off_a_terminal_and_a_bar_on_one(django_database, filled_db: sa.URL) -> None:
    django_database(filled_db)
    dry = command_output("--dry-run")
    assert "messages: dry run:" in dry and "nothing was written" in dry
    plain = command_output("--only", "messages", "--batch-size", "100")
    assert "rows scanned" in plain and "messages: run 1" in plain and "complete" in plain
    run_sql(filled_db, "UPDATE conversation_history SET token_count = NULL")
    bar = command_output("--only", "messages", "--batch-size", "100", tty=True)
    assert "rows/s" in bar and "100%" in bar
    assert "nothing to do" in command_output()
    assert "no row needed changing" in command_output("--recompute", "--only", "messages")


def test_command_reports_each_backfill_as_it_ends(django_database, filled_db: sa.URL, monkeypatch) -> None:
    # The messages backfill's outcome is printed before the calls backfill starts: its failure
    # does not hide that the messages are done.
    django_database(filled_db)

    def disk_full(self, conn, lo, hi, *, recompute, write):
        raise OSError("disk full")

    monkeypatch.setattr(specs.CallsBackfill, "process", disk_full)
    out = io.StringIO()
    with pytest.raises(CommandError, match="backfill 'calls' failed in run 2: disk full"):
        call_command("backfill_context", "--batch-size", "100", stdout=out)
    lines = out.getvalue().splitlines()
    done = next(i for i, line in enumerate(lines) if line.startswith("messages: ") and " rows changed in " in line)
    started = next(i for i, line in enumerate(lines) if line.startswith("calls: run 2, "))
    assert "run 1 complete" in lines[done] and started > done


def test_the_reporter_hears_each_backfill_start_go_and_finish_in_turn(filled_db: sa.URL) -> None:
    events: list[Event] = []
    results = backfill.backfill_context(url=filled_db, options=backfill.BackfillOptions(batch_size=50, workers=1),
                                        policy=POLICY, reporter=events.append)
    for name, result in zip(backfill.BACKFILLS, results):
        mine = [e for e in events if getattr(e, "backfill", None) == name
                or isinstance(e, backfill.BackfillFinished) and e.result.backfill == name]
        assert isinstance(mine[0], backfill.BackfillStarted) and mine[0].run_id == result.run_id
        assert mine[-1] == backfill.BackfillFinished(result=result)
        assert all(isinstance(e, backfill.BackfillProgress) for e in mine[1:-1]) and mine[-2].scanned == result.scanned
    finished = [i for i, e in enumerate(events) if isinstance(e, backfill.BackfillFinished)]
    started = [i for i, e in enumerate(events) if isinstance(e, backfill.BackfillStarted)]
    assert started[0] < finished[0] < started[1] < finished[1] == len(events) - 1  # one backfill, then the next


def test_an_unknown_backfill_is_refused_in_one_line_naming_the_known_ones(django_database, head_db: sa.URL) -> None:
    refused = "no backfill is named 'nope': the backfills are messages, calls"
    with pytest.raises(backfill.UnknownBackfill, match=f"^{refused}$"):
        backfill.backfill_context(url=head_db, only=("messages", "nope"))
    assert run_sql(head_db, "SELECT count(*) FROM backfill_runs")[0][0] == 0  # nothing ran
    django_database(head_db)
    for args in (["--only", "nope"], ["--pause", "--only", "nope"]):
        with pytest.raises(CommandError, match=f"^{refused}$"):
            command_output(*args)


def test_command_refusal_is_one_line(django_database, empty_db: sa.URL) -> None:
    django_database(empty_db)
    with pytest.raises(CommandError, match="below 003_context_management.*migrate_schema upgrade head"):
        command_output()


# --- against real processes: kill -9, several hosts, the guide's entry points -------------------

def start_backfill(url: sa.URL, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": django_url(url), "SECRET_KEY": "backfill-test",
           "DJANGO_SETTINGS_MODULE": "reautomation.settings"}
    return subprocess.Popen([sys.executable, "manage.py", "backfill_context", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def pg_seeded(pg_head_db: sa.URL) -> sa.URL:
    """A PostgreSQL database at head with sample data, for tests that run real processes."""
    seed(pg_head_db, calls=40)
    return pg_head_db


@pytest.mark.parametrize("workers", ["1", "2"])
def test_resumes_after_kill_9(pg_seeded: sa.URL, workers: str) -> None:
    url = pg_seeded
    process = start_backfill(url, "--only", "messages", "--batch-size", "20", "--batch-pause", "0.05",
                             "--workers", workers)
    wait_for(lambda: (run_sql(url, "SELECT max(rows_scanned) FROM backfill_runs")[0][0] or 0) >= 100)
    killed = kill_9(url, process)
    assert killed.status == "running"  # nobody could record it: the next run finds out
    assert run_sql(url, "SELECT count(*) FROM conversation_history WHERE token_count IS NULL")[0][0] > 0

    rerun = start_backfill(url, "--stale-after", "0")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert f"resuming interrupted run {killed.id}" in out
    statuses = run_sql(url, "SELECT backfill, status, resumed_from_id FROM backfill_runs ORDER BY id")
    assert [tuple(s) for s in statuses][:2] == [("messages", "interrupted", None), ("messages", "succeeded", killed.id)]
    assert stored_messages(url) == expected_messages(url)
    assert run_sql(url, "SELECT count(*) FROM backfill_batches")[0][0] == 0


def test_the_same_command_on_two_hosts_cooperates(pg_seeded: sa.URL) -> None:
    url = pg_seeded
    # Paced to last about 4 s (40 batches), so the second command, which takes a second to
    # start, finds the first one's run still going.
    first = start_backfill(url, "--only", "messages", "--batch-size", "25", "--batch-pause", "0.1")
    wait_for(lambda: run_sql(url, "SELECT count(*) FROM backfill_runs")[0][0] == 1)
    second = start_backfill(url, "--only", "messages", "--batch-size", "25", "--batch-pause", "0.1")
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert "joining run 1" in outputs[1][0]
    scanned = [int(line.split(" of ")[1].split()[0].replace(",", "")) for out, _ in outputs
               for line in out.splitlines() if " rows changed in " in line]
    total = run_sql(url, "SELECT count(*) FROM conversation_history")[0][0]
    assert sum(scanned) == total and all(s > 0 for s in scanned)  # shared, and no row twice
    assert run_sql(url, "SELECT status, rows_scanned FROM backfill_runs") == [("succeeded", total)]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_run_with_other_options_is_refused_while_one_runs(pg_seeded: sa.URL, workers: str) -> None:
    url = pg_seeded
    first = start_backfill(url, "--only", "messages", "--batch-size", "10", "--batch-pause", "0.1",
                           "--workers", workers)
    wait_for(lambda: run_sql(url, "SELECT count(*) FROM backfill_runs")[0][0] == 1)
    second = start_backfill(url, "--only", "messages", "--recompute")
    out, err = second.communicate(timeout=60)
    first.send_signal(signal.SIGTERM)
    first_out, first_err = first.communicate(timeout=60)
    assert second.returncode == 1 and "already running" in err and len(err.strip().splitlines()) == 1
    assert first.returncode == 130 and "run the same command again to resume" in first_err
    assert run_sql(url, "SELECT status FROM backfill_runs") == [("interrupted",)]


@pytest.mark.parametrize(("module", "backfill_name"), [("backfill_message_tokens", "messages"),
                                                       ("backfill_context_fields", "calls")])
def test_the_guides_module_entry_points(head_db: sa.URL, module: str, backfill_name: str) -> None:
    seed(head_db, calls=5)
    env = {**os.environ, "DATABASE_URL": django_url(head_db), "SECRET_KEY": "t",
           "DJANGO_SETTINGS_MODULE": "reautomation.settings"}
    result = subprocess.run([sys.executable, "-m", f"migrations_alembic.data_migrations.{module}",
                             "--batch-size", "50"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{backfill_name}: " in result.stdout and "complete" in result.stdout
    assert run_sql(head_db, "SELECT backfill FROM backfill_runs") == [(backfill_name,)]


@pytest.mark.parametrize("args", [
    ["--batch-size", "99999999999999999999"], ["--batch-size", "0"], ["--workers", "0"], ["--workers", "1000"],
    ["--max-rows-per-second", "0"], ["--max-rows-per-second", "-5"], ["--max-rows-per-second", "nan"],
    ["--max-rows-per-second", "1e-12"], ["--batch-pause", "nan"], ["--batch-pause", "inf"], ["--batch-pause", "-1"],
    ["--stale-after", "nan"], ["--stale-after", "-1"],
], ids=lambda a: "".join(a))
def test_out_of_range_options_are_one_line_and_run_nothing(tmp_path: Path, args: list[str]) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    env = {**os.environ, "DATABASE_URL": url, "SECRET_KEY": "backfill-test",
           "DJANGO_SETTINGS_MODULE": "reautomation.settings"}
    result = subprocess.run([sys.executable, "manage.py", "backfill_context", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"CommandError: {args[0]} ") and "out of range" in lines[0], lines
