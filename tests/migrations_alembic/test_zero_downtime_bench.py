"""The zero-downtime benchmark runs end to end at a tiny size and reports every phase
(figures: docs/benchmarks.md; no timed assertions here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import sqlalchemy as sa

from schema_engine import scratch
from tests.conftest import ROOT

PHASES = 5  # before the expands, during them, with the triggers; the release after, before and during the fill


def test_zero_downtime_benchmark_runs_end_to_end(postgres_admin: sa.Engine) -> None:
    name = scratch.unique_name("test_bench_zero_downtime")  # its own databases, whatever else runs
    result = subprocess.run(
        [sys.executable, "bench/zero_downtime.py", "--calls", "50", "--writers", "1", "--seconds", "0.5",
         "--warm-up", "0.2", "--name", name, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TEST_POSTGRES_URL=postgres_admin.url.render_as_string(hide_password=False)),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert len(report["phases"]) == PHASES
    for phase in report["phases"]:
        assert phase["statements"] > 0 and phase["failed"] == 0, phase
        assert 0 < phase["p50_ms"] <= phase["p99_ms"] <= phase["longest_ms"]
    assert set(report["phases"][0]["by_kind"]) == {"insert calls", "insert messages", "update calls",
                                                   "update messages"}
    fill = report["fill"]
    assert fill["idle"]["rows"] == report["messages"] > 0  # alone, it converts every message's count
    assert 0 < fill["beside_writers"]["rows"] <= report["messages"]  # the writers' own rows have both already
    # The triggers and the fill kept both columns in step, whichever release wrote.
    assert report["messages_disagreeing"] == 0 and report["messages_left_to_fill"] == 0
    with postgres_admin.connect() as conn:
        left = conn.execute(sa.text("SELECT datname FROM pg_database WHERE datname LIKE :name"),
                            {"name": f"{name}%"}).scalars().all()
    assert left == []
