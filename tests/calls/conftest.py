"""Fixtures for the calls app's tests: a PostgreSQL database at head with sample data."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest
import sqlalchemy as sa

from calls.sample_data import generate_sample_data
from schema_engine import database
from tests.conftest import run_sql, wait_for


@pytest.fixture
def seeded(pg_head_db: sa.URL, request: pytest.FixtureRequest) -> sa.URL:
    """A PostgreSQL database at head with sample data; ``@pytest.mark.sample_calls(N)`` sets how many calls."""
    marker = request.node.get_closest_marker("sample_calls")
    with database.connect(pg_head_db) as conn:
        generate_sample_data(connection=conn, calls=marker.args[0] if marker else 12, seed=5)
    return pg_head_db

def kill_9(url: sa.URL, process: subprocess.Popen[str]) -> sa.Row:
    """Kill ``backfill_context`` at once (SIGKILL), wait until none of its workers is left writing; return its run."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # Worker processes notice and stop after their batch: nobody is left writing.
    wait_for(lambda: run_sql(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND pid <> pg_backend_pid()")[0][0] == 0, timeout=30)
    (killed,) = run_sql(url, "SELECT id, status FROM backfill_runs")
    return killed
