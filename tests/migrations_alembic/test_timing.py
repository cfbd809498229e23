"""The migration timing benchmark runs and reports every step
(figures: docs/benchmarks.md; no timed assertions here)."""
from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

from tests.conftest import ROOT


def test_timing_benchmark_reports_each_revision(postgres_admin: sa.Engine) -> None:
    server = postgres_admin.url.render_as_string(hide_password=False)
    result = subprocess.run(
        [sys.executable, "bench/migration_timing.py", "--calls", "200", "--server-url", server],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    steps = [line.split() for line in result.stdout.splitlines()]
    timed = {(s[0], s[1]) for s in steps}
    for revision in ("003_context_management", "004_performance_indexes"):
        assert ("upgrade", revision) in timed and ("downgrade", revision) in timed
    assert any(s[0] == "seed" for s in steps)
    assert all(s[-1].endswith("s") and float(s[-1][:-1]) >= 0 for s in steps)
