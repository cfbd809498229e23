"""The forecast's verdict: which measured figure passes which limit, each said in one line with what to do.

The limits are settings (``FORECAST_MAX_*``, reautomation/settings.py says why each default);
``migrate_schema forecast`` exits 3 when ``problems`` finds any, so ``scripts/deploy`` can stop
before a deploy the live application would feel.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from schema_engine.forecast.result import Forecast, LockHeld, RevisionForecast

# Lock modes that stop the application's writes (and, for ACCESS EXCLUSIVE, its reads) on a table.
BLOCKS_WRITES = ("ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
STRENGTH = {mode: rank for rank, mode in enumerate(
    ("AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", *BLOCKS_WRITES))}


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What a forecast may show before the deploy is refused (seconds)."""

    writer_wait: float      # the longest any replayed statement waited on a revision's locks
    duration: float         # all the pending revisions together, on the copy
    replica_lag: float      # the most a revision put the replica behind

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(writer_wait=settings.FORECAST_MAX_WRITER_WAIT_SECONDS,
                   duration=settings.FORECAST_MAX_DURATION_SECONDS,
                   replica_lag=settings.FORECAST_MAX_REPLICA_LAG_SECONDS)

    def as_dict(self) -> dict[str, float]:
        return {"FORECAST_MAX_WRITER_WAIT_SECONDS": self.writer_wait,
                "FORECAST_MAX_DURATION_SECONDS": self.duration,
                "FORECAST_MAX_REPLICA_LAG_SECONDS": self.replica_lag}


def problems(forecast: Forecast, limits: Limits) -> list[str]:
    """One line per limit the forecast passes (and per revision that failed on the copy): revision, figure, limit, fix.

    Empty: the deploy is within every limit.
    """
    found = [f"revision {rev.revision} failed on the copy: {rev.error}; fix it before deploying "
             "('migrate_schema plan --rehearse' shows it without data)" for rev in forecast.revisions if rev.error]
    if mostly_failed(forecast):
        first = f" (the first: {forecast.traffic_errors[0]})" if forecast.traffic_errors else ""
        found.append(f"the traffic mostly failed on the copy: {forecast.traffic_failed:,} of "
                     f"{forecast.traffic_statements:,} statements{first}, so the revisions were measured without the "
                     "load they will meet: fix what the error says (a logical copy may lack rows the statements "
                     "need: copy more tables, or the whole primary) and forecast again")
    for rev in forecast.revisions:
        if rev.longest_wait > limits.writer_wait:
            before = f" (their p99 before it: {rev.p99_before:.3f}s)" if rev.p99_before is not None else ""
            found.append(f"revision {rev.revision} made {rev.waiting_statements} replayed statement(s) wait, the "
                         f"longest {rev.longest_wait:.1f}s{before}, over FORECAST_MAX_WRITER_WAIT_SECONDS "
                         f"({limits.writer_wait:g}s): {_remedy(rev)}")
    total = sum(rev.seconds for rev in forecast.revisions)
    if total > limits.duration:
        longest = max(forecast.revisions, key=lambda rev: rev.seconds)
        rewrote = f", rewriting {', '.join(longest.rewritten)}" if longest.rewritten else ""
        found.append(f"the pending revisions took {total:.1f}s on the copy, over FORECAST_MAX_DURATION_SECONDS "
                     f"({limits.duration:g}s); the longest, revision {longest.revision}, {longest.seconds:.1f}s"
                     f"{rewrote}: " + ("add the new shape beside the old and fill it with a backfill instead of "
                                      "rewriting (docs/zero-downtime.md)" if longest.rewritten else
                                      "move its data change into a backfill (docs/backfills.md), or split it "
                                      "across releases"))
    for rev in forecast.revisions:
        if rev.replica_lag is not None and rev.replica_lag > limits.replica_lag:
            found.append(f"revision {rev.revision} put the replica {rev.replica_lag:.1f}s behind (it wrote "
                         f"{size_text(rev.wal_bytes)} of WAL), over FORECAST_MAX_REPLICA_LAG_SECONDS "
                         f"({limits.replica_lag:g}s): replica reads go to the primary meanwhile; write in batches "
                         "that wait for the replica (a backfill, BACKFILL_MAX_REPLICA_LAG) instead of one statement")
    return found


def strongest_lock(rev: RevisionForecast) -> LockHeld | None:
    """The lock that stopped the most: the strongest mode, then the longest held."""
    return max(rev.locks, key=lambda lock: (STRENGTH.get(lock.mode, -1), lock.seconds), default=None)


def _remedy(rev: RevisionForecast) -> str:
    """What to change in the revision so that its lock stops the application for less long."""
    lock = strongest_lock(rev)
    if lock is None or lock.mode not in BLOCKS_WRITES:
        return ("its statements queued behind a lock it waited for: set a lock_timeout and retry "
                "(MIGRATION_LOCK_TIMEOUT), or deploy when the long transactions it met have ended")
    held = f"it held {lock.mode} on {lock.relation} for {lock.seconds:.1f}s"
    if rev.rewritten:
        return (f"{held}, rewriting {', '.join(rev.rewritten)}: add the new column beside the old, fill it with a "
                "backfill and switch (expand, fill, contract: docs/zero-downtime.md)")
    if lock.mode == "ShareLock":
        return f"{held} (a plain CREATE INDEX): build the index CONCURRENTLY (helpers.build_index)"
    if lock.mode == "ShareRowExclusiveLock":
        return (f"{held} (a foreign key or trigger checked under lock): add the constraint NOT VALID, then "
                "VALIDATE it in its own step")
    return (f"{held}: check a constraint without the lock (helpers.set_not_null, helpers.add_check_constraint: "
            "NOT VALID, then VALIDATE), or move the data change into a backfill (docs/backfills.md)")


def size_text(count: int) -> str:
    """``count`` bytes for a person: B, KiB, MiB or GiB, signed when negative (a size change)."""
    size, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"


def mostly_failed(forecast: Forecast) -> bool:
    """Whether more than half of the traffic's statements failed on the copy (when that is known)."""
    return bool(forecast.traffic_statements and forecast.traffic_failed
                and forecast.traffic_failed * 2 > forecast.traffic_statements)
