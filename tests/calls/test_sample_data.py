"""``calls/sample_data.py`` and ``manage.py generate_sample_data``: realistic data, and more of it on each run."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from calls.management.commands.generate_sample_data import MAX_CALLS
from calls.sample_data import generate_sample_data
from schema_engine import commands, database
from tests.conftest import call, run_sql


def test_a_second_run_adds_more_data(head_db: sa.URL) -> None:
    with database.connect(head_db) as conn:
        first = generate_sample_data(connection=conn, calls=20, seed=7)
    with database.connect(head_db) as conn:
        second = generate_sample_data(connection=conn, calls=20, seed=7)
    assert run_sql(head_db, "SELECT count(*) FROM calls")[0][0] == first.calls + second.calls == 40
    assert run_sql(head_db, "SELECT count(DISTINCT call_sid) FROM calls")[0][0] == 40
    assert run_sql(head_db, "SELECT count(*) FROM conversation_history")[0][0] == first.messages + second.messages


def test_the_same_seed_on_an_empty_database_gives_the_same_data(make_database) -> None:
    sids = []
    for _ in range(2):
        url = make_database("sqlite")
        commands.upgrade(revision="head", url=url)
        with database.connect(url) as conn:
            generate_sample_data(connection=conn, calls=5, seed=11)
        sids.append(run_sql(url, "SELECT call_sid FROM calls ORDER BY id"))
    assert sids[0] == sids[1]


class Stop(Exception):
    """Raised from the progress callback: the run stops as a killed or failing one would."""


def test_a_run_stopped_partway_adds_nothing(make_database) -> None:
    url = make_database("sqlite")
    commands.upgrade(revision="head", url=url)

    def stop_at_first_report(done: int, total: int) -> None:
        raise Stop  # by now thousands of messages have been written in the run's transaction

    with pytest.raises(Stop), database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=1500, seed=3, on_progress=stop_at_first_report)
    assert run_sql(url, "SELECT (SELECT count(*) FROM contacts), (SELECT count(*) FROM calls), "
                        "(SELECT count(*) FROM conversation_history)")[0] == (0, 0, 0)


def test_the_command_run_twice_adds_more(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    assert call(url, "migrate_schema").returncode == 0
    for _ in range(2):
        result = call(url, "generate_sample_data", "--calls", "10")
        assert result.returncode == 0, result.stderr
    assert run_sql(sa.make_url(url), "SELECT count(*) FROM calls")[0][0] == 20


@pytest.mark.parametrize("args", [["--days", "0"], ["--days", "-3"], ["--calls", "0"],
                                  ["--calls", str(MAX_CALLS + 1)], ["--calls", "99999999999999999999"],
                                  ["--max-turns", "3"]])
def test_out_of_range_options_are_one_line(tmp_path, args: list[str]) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    assert call(url, "migrate_schema").returncode == 0
    result = call(url, "generate_sample_data", *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CommandError:") and "Traceback" not in result.stderr, lines
    assert run_sql(sa.make_url(url), "SELECT count(*) FROM calls")[0][0] == 0
