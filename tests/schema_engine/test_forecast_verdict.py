"""The forecast's verdict (limits, one line per problem) and how migrate_schema forecast prints it and exits."""
from __future__ import annotations

import dataclasses
import io
import json
import re
import stat
from pathlib import Path

import pytest
from django.core.management.base import CommandError

from reautomation.management.commands.migrate_schema import PLAN_UNSAFE, Command
from schema_engine.forecast import stored, verdict
from schema_engine.forecast.result import BackfillForecast, Forecast, LockHeld
from tests.schema_engine.forecast_values import forecast, revision

LIMITS = verdict.Limits(writer_wait=5, duration=600, replica_lag=30)
PLAIN_INDEX = (LockHeld(mode="ShareLock", relation="conversation_history", seconds=6.3),)


def test_a_forecast_within_every_limit_has_no_problem() -> None:
    within = revision(longest_wait=5.0, waiting_statements=3, seconds=300, replica_lag=30.0)  # limits are inclusive
    assert verdict.problems(forecast(within, revision("005_other", seconds=300)), LIMITS) == []


def test_the_defaults_are_the_settings_an_operator_changes(settings) -> None:
    assert verdict.Limits.from_settings() == LIMITS
    settings.FORECAST_MAX_WRITER_WAIT_SECONDS = 1.5
    assert verdict.Limits.from_settings().writer_wait == 1.5


def test_a_plain_index_build_that_makes_writers_wait_is_refused_with_the_concurrent_helper() -> None:
    blocking = revision("006_plain_index", locks=PLAIN_INDEX, waiting_statements=412, longest_wait=6.2)
    [line] = verdict.problems(forecast(revision(), blocking), LIMITS)
    assert line == ("revision 006_plain_index made 412 replayed statement(s) wait, the longest 6.2s (their p99 "
                    "before it: 0.011s), over FORECAST_MAX_WRITER_WAIT_SECONDS (5s): it held ShareLock on "
                    "conversation_history for 6.3s (a plain CREATE INDEX): build the index CONCURRENTLY "
                    "(helpers.build_index)")


def test_a_rewrite_under_an_exclusive_lock_is_sent_to_expand_fill_contract() -> None:
    rewrite = revision("007_retype", locks=(LockHeld(mode="ShareLock", relation="calls", seconds=1.0),
                                            LockHeld(mode="AccessExclusiveLock", relation="calls", seconds=40.0)),
                       longest_wait=39.0, rewritten=("calls",), p99_before=None)
    [line] = verdict.problems(forecast(rewrite), LIMITS)
    assert line.startswith("revision 007_retype made 0 replayed statement(s) wait, the longest 39.0s, over ")
    assert "it held AccessExclusiveLock on calls for 40.0s, rewriting calls: " in line
    assert line.endswith("(expand, fill, contract: docs/zero-downtime.md)")


@pytest.mark.parametrize(("mode", "advice"), [
    ("ShareRowExclusiveLock", "add the constraint NOT VALID, then VALIDATE it in its own step"),
    ("AccessExclusiveLock", "helpers.set_not_null, helpers.add_check_constraint"),
    ("RowExclusiveLock", "set a lock_timeout and retry (MIGRATION_LOCK_TIMEOUT)"),
])
def test_each_lock_gets_its_own_advice(mode: str, advice: str) -> None:
    rev = revision(locks=(LockHeld(mode=mode, relation="calls", seconds=9.0),), longest_wait=8.0)
    [line] = verdict.problems(forecast(rev), LIMITS)
    assert advice in line


def test_the_total_duration_is_judged_and_names_the_longest_revision() -> None:
    slow = forecast(revision("004_a", seconds=350.0), revision("005_b", seconds=400.0, rewritten=("messages",)))
    [line] = verdict.problems(slow, LIMITS)
    assert line == ("the pending revisions took 750.0s on the copy, over FORECAST_MAX_DURATION_SECONDS (600s); the "
                    "longest, revision 005_b, 400.0s, rewriting messages: add the new shape beside the old and fill "
                    "it with a backfill instead of rewriting (docs/zero-downtime.md)")
    assert "docs/backfills.md" in verdict.problems(forecast(revision(seconds=601.0)), LIMITS)[0]


def test_replica_lag_is_judged_only_where_a_replica_followed() -> None:
    lagging = revision("008_fill", replica_lag=45.5, wal_bytes=3 * 1024 ** 3)
    [line] = verdict.problems(forecast(lagging, revision("009", replica_lag=None)), LIMITS)
    assert line.startswith("revision 008_fill put the replica 45.5s behind (it wrote 3.0 GiB of WAL), over "
                           "FORECAST_MAX_REPLICA_LAG_SECONDS (30s): ")


def test_a_revision_that_failed_on_the_copy_is_a_problem() -> None:
    failed = revision("010_bad", error='column "x" does not exist')
    assert verdict.problems(forecast(failed), LIMITS) == [
        "revision 010_bad failed on the copy: column \"x\" does not exist; fix it before deploying "
        "('migrate_schema plan --rehearse' shows it without data)"]


def test_traffic_that_mostly_failed_on_the_copy_is_a_problem_and_is_printed(tmp_path: Path) -> None:
    error = 'insert or update on table "conversation_history" violates foreign key constraint'
    failed = dataclasses.replace(forecast(revision()), traffic_statements=1_000, traffic_failed=501,
                                 traffic_errors=(error,))
    (problem,) = verdict.problems(failed, LIMITS)
    assert problem.startswith(f"the traffic mostly failed on the copy: 501 of 1,000 statements (the first: {error})")
    assert verdict.problems(dataclasses.replace(failed, traffic_failed=500), LIMITS) == []  # half is not most
    out, _, refused = show(failed, tmp_path)
    assert refused is not None and f"  501 of the traffic's statements failed on the copy (the first: {error})" in out
    assert stored.load(tmp_path / "last.json").forecast == failed  # kept whole, its errors a tuple again


def test_a_pass_on_a_logical_copy_says_it_is_not_yet_one(tmp_path: Path) -> None:
    logical = dataclasses.replace(forecast(revision()), copy="logical: conversation_history ≤ 100,000 rows")
    out, _, error = show(logical, tmp_path)
    assert error is None
    assert out.splitlines()[-1] == ("Within every limit (FORECAST_MAX_*) on a copy of chosen tables (logical: "
                                    "conversation_history ≤ 100,000 rows): not yet a pass: scale each duration by "
                                    "the table's rows on the primary over its rows copied (docs/forecast.md)")


def test_every_limit_passed_is_its_own_line() -> None:
    bad = revision(locks=PLAIN_INDEX, longest_wait=6.0, seconds=700.0, replica_lag=31.0)
    assert [line.split(" ", 2)[:2] for line in verdict.problems(forecast(bad), LIMITS)] == [
        ["revision", "004_indexes"], ["the", "pending"], ["revision", "004_indexes"]]


def test_sizes_read_as_a_person_would() -> None:
    assert [verdict.size_text(n) for n in (0, 1023, 1536, -5 * 1024 ** 2, 3 * 1024 ** 4)] == [
        "0 B", "1023 B", "1.5 KiB", "-5.0 MiB", "3072.0 GiB"]


# The command's side: the Forecast is handed to its printing directly (the measurement is tested end to end).

def show(fc: Forecast, tmp_path: Path, *, as_json: bool = False) -> tuple[str, str, CommandError | None]:
    """What ``migrate_schema forecast`` prints for ``fc`` on stdout and stderr, and the error it exits with."""
    out, err = io.StringIO(), io.StringIO()
    try:
        Command(stdout=out, stderr=err, no_color=True).show_forecast(
            fc, as_json=as_json, chart=tmp_path / "chart.svg", last_file=tmp_path / "last.json", limits=LIMITS)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc
    return out.getvalue(), err.getvalue(), None


def test_the_command_prints_a_table_per_revision_and_the_backfills_projection(tmp_path: Path) -> None:
    fill = BackfillForecast(name="context_tokens", batches=20, rows=20_000, seconds=4.0, rows_pending=3_000_000,
                            projected_seconds=600.0)
    out, _, error = show(forecast(revision(), revision("005_b", replica_lag=None, size_change=-2048, p50_before=None),
                           samples=10, backfills=(fill,)), tmp_path)
    lines = out.splitlines()
    assert error is None
    assert lines[0] == ("Forecast on a copy of postgresql://app:***@db.internal:5432/app (3.0 GiB, made in 41.2s); "
                        "traffic: the bench writers (default); 10 statements timed")
    first = lines[lines.index("  revision 004_indexes: Index the messages by conversation") + 1:][:9]
    assert first == ["    duration            12.5s (from 10.0s into the replay)",
                     "    locks held          ShareUpdateExclusiveLock on conversation_history 12.4s",
                     "    statements waiting  0",
                     "    longest wait        0.000s",
                     "    latency before      p50 2.0 ms, p99 11.0 ms",
                     "    WAL written         96.0 MiB",
                     "    tables rewritten    none",
                     "    size change         +80.0 MiB",
                     "    replica lag         0.4s"]
    assert "    size change         -2.0 KiB" in lines
    assert "    replica lag         no replica followed the copy" in lines
    assert "    latency before      not measured (no statement before it)" in lines
    assert ("  backfill context_tokens: 20 batch(es), 20,000 rows in 4.0s (5,000 rows/s); 3,000,000 rows pending: "
            "about 10.0 min in all") in lines
    assert lines[-1] == "Within every limit (FORECAST_MAX_*): safe to deploy as forecast"


def test_the_command_exits_3_with_one_line_per_problem_and_keeps_the_forecast(tmp_path: Path) -> None:
    refused = forecast(revision("006_plain_index", locks=PLAIN_INDEX, longest_wait=6.2, replica_lag=31.0), samples=5)
    out, _, error = show(refused, tmp_path)
    assert error is not None and error.returncode == PLAN_UNSAFE == 3
    assert re.fullmatch(r"forecast passes a limit: revision 006_plain_index made .* \(and 1 more\)", str(error))
    problems = [line for line in out.splitlines() if line.startswith("  problem: ")]
    assert problems == [f"  problem: {line}" for line in verdict.problems(refused, LIMITS)] and len(problems) == 2
    for written in ("chart.svg", "last.json"):  # a refused forecast is kept too: the admin shows why
        assert stat.S_IMODE((tmp_path / written).stat().st_mode) == 0o600
    last = stored.load(tmp_path / "last.json")
    assert last is not None and last.forecast == refused and list(last.problems) == verdict.problems(refused, LIMITS)


def test_the_command_prints_json_for_machines(tmp_path: Path) -> None:
    fc = forecast(revision(), samples=3)
    out, err, error = show(fc, tmp_path, as_json=True)
    assert error is None
    body = json.loads(out)
    assert body["safe"] is True and body["problems"] == []
    assert body["limits"] == {"FORECAST_MAX_WRITER_WAIT_SECONDS": 5, "FORECAST_MAX_DURATION_SECONDS": 600,
                              "FORECAST_MAX_REPLICA_LAG_SECONDS": 30}
    assert body["forecast"]["revisions"][0]["locks"][0] == {"mode": "ShareUpdateExclusiveLock",
                                                           "relation": "conversation_history", "seconds": 12.4}
    assert stored.forecast_from_dict(body["forecast"]) == fc
    assert "Chart written: " in err  # stdout carries only the JSON


def test_an_unwritable_chart_path_is_one_line(tmp_path: Path) -> None:
    command = Command(stdout=io.StringIO(), stderr=io.StringIO())
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CommandError, match=r"^cannot write \S*/a-file/c\.svg: Not a directory; choose a "
                                           r"folder this user may write \(--chart PATH\)$"):
        command.show_forecast(forecast(revision()), as_json=False, chart=tmp_path / "a-file" / "c.svg",
                              last_file=None, limits=LIMITS)


def test_a_chart_in_a_missing_folder_makes_the_folder_for_its_owner(tmp_path: Path) -> None:
    command = Command(stdout=io.StringIO(), stderr=io.StringIO())
    chart = tmp_path / "var" / "forecast" / "forecast.svg"
    command.show_forecast(forecast(revision()), as_json=False, chart=chart, last_file=None, limits=LIMITS)
    assert stat.S_IMODE(chart.stat().st_mode) == 0o600
    assert [stat.S_IMODE(folder.stat().st_mode) for folder in (chart.parent, chart.parent.parent)] == [0o700, 0o700]
