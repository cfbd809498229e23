"""The replayed statements' latencies over the forecast: each one's end and duration, since the replay began.

A workload that times its own statements (the bench writers) says them itself. A capture replayed
by ``pgreplay`` does not: the copy logs every statement's duration instead
(``log_min_duration_statement = 0``, a prefix with the time in UTC and the application name; it
is a scratch server, so ``ALTER SYSTEM`` there is fine), and its log is read afterwards. The
forecast's own sessions (the migration, the sampler, the backfill's workers) are left out.
"""
from __future__ import annotations

import re
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import psycopg

from schema_engine.forecast.result import LatencySample
from schema_engine.forecast.sampler import APPLICATION_NAME as SAMPLER
from schema_engine.guard import BACKFILL_APPLICATION_NAME, MIGRATION_APPLICATION_PREFIX

PREFIX = "%m [%p] app=%a "
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC \[\d+\] app=(\S*) LOG:  duration: ([\d.]+) ms  "
                   r"(?:statement|execute [^:]*):")
_OURS = (MIGRATION_APPLICATION_PREFIX, SAMPLER, BACKFILL_APPLICATION_NAME)


def log_durations(conn: psycopg.Connection) -> None:
    """Make the copy log every statement's duration with its end time (UTC) and application name."""
    for name, value in (("log_min_duration_statement", "0"), ("log_line_prefix", PREFIX),
                        ("log_timezone", "UTC")):
        conn.execute(f"ALTER SYSTEM SET {name} = {_literal(value)}")
    conn.execute("SELECT pg_reload_conf()")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def from_log(log: Path, *, began: float) -> tuple[LatencySample, ...]:
    """The statements the copy's ``log`` timed, other than the forecast's own; ``began``: the replay's start (epoch)."""
    samples = []
    with open(log, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            found = _LINE.match(line)
            if not found or found.group(2).startswith(_OURS):
                continue
            ended = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
            at = ended.timestamp() - began
            if at >= 0:
                samples.append(LatencySample(at=round(at, 3), seconds=float(found.group(3)) / 1000))
    return tuple(sorted(samples, key=lambda sample: sample.at))


def from_workload(latencies: Iterable[tuple[float, float]], *, began: float) -> tuple[LatencySample, ...]:
    """A workload's own (end, seconds) pairs, ends on ``time.monotonic()``; ``began`` on the same clock."""
    return tuple(LatencySample(at=round(end - began, 3), seconds=seconds) for end, seconds in sorted(latencies)
                 if end >= began)


def percentiles(samples: Sequence[LatencySample], start: float, end: float) -> tuple[float | None, float | None]:
    """p50 and p99 of the latencies of the statements that ended in [start, end); None, None without any."""
    window = sorted(sample.seconds for sample in samples if start <= sample.at < end)
    if not window:
        return None, None
    if len(window) == 1:
        return window[0], window[0]
    cuts = statistics.quantiles(window, n=100, method="inclusive")
    return cuts[49], cuts[98]
