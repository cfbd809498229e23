"""A forecast: the pending revisions applied to a copy of the primary with its data, under its traffic replayed.

In order, each part a ``with`` block, so the copy is removed and the replay stopped whatever ends
the forecast (a failure, Ctrl-C):
1. the copy (``clone.cloned``; of chosen tables, ``logical.copied``);
2. the traffic against it (``replay.workload``: the capture at its recorded pace, or the default
   workload), then a warm-up until the copy has committed ``warmup_transactions`` transactions
   (its own statistics) or the capture ends, at most ``warmup_seconds``;
3. each pending revision, one at a time, measured (``measure.py``); the first that fails there
   ends the revisions, as it would end the deploy;
4. a sample of each backfill the pending revisions declare (``backfills.py``), under the same traffic;
5. the replayed statements' latencies (``latency.py``), and each revision's p50/p99 in the window
   between the previous one's end (or the warm-up's start) and its own start.
When the primary streams to replicas (or ``replica=True``), a replica follows the copy as they follow
it (``clone.follower``), and each revision's ``replica_lag`` is measured; else it stays None.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import psycopg
import sqlalchemy as sa

from schema_engine import contracts, database
from schema_engine.errors import ForecastUnavailable
from schema_engine.forecast import backfills, clone, latency, logical, replay
from schema_engine.forecast import capture as captures
from schema_engine.forecast.capture import Capture
from schema_engine.forecast.measure import measure_revision
from schema_engine.forecast.replica_lag import ReplicaLag
from schema_engine.forecast.result import BackfillForecast, Forecast, RevisionForecast
from schema_engine.progress import Event, Reporter, ignore
from schema_engine.state import pending_scripts, recorded_revisions, script_directory

WARMUP_TRANSACTIONS = 200
WARMUP_SECONDS = 30.0
_POLL = 0.05


@dataclass(frozen=True)
class WarmedUp(Event):
    """The traffic runs against the copy; the revisions start."""

    transactions: int
    seconds: float

    def describe(self) -> str:
        return f"traffic on the copy: {self.transactions:,} transactions in {self.seconds:.1f}s of warm-up"


@dataclass(frozen=True)
class RevisionMeasured(Event):
    """A pending revision was applied to the copy (or failed there), measured."""

    forecast: RevisionForecast

    def describe(self) -> str:
        rev = self.forecast
        outcome = f"failed: {rev.error}" if rev.error else (
            f"{rev.waiting_statements} statements waited on it, the longest {rev.longest_wait:.2f}s")
        return f"forecast {rev.revision:<28} {rev.seconds:8.2f}s  {outcome}"


@dataclass(frozen=True)
class BackfillSampled(Event):
    """A sample of a declared backfill ran on the copy."""

    forecast: BackfillForecast

    def describe(self) -> str:
        fill = self.forecast
        return (f"backfill {fill.name}: {fill.rows:,} rows in {fill.batches} batches, {fill.seconds:.1f}s; "
                f"{fill.rows_pending:,} rows pending, projected {fill.projected_seconds:,.0f}s")


def forecast(*, url: sa.URL | str | None = None, capture: Capture | Path | str | None = None,
             reporter: Reporter = ignore, sample_batches: int = 20, root: Path | None = None,
             warmup_transactions: int = WARMUP_TRANSACTIONS, warmup_seconds: float = WARMUP_SECONDS,
             tables: Sequence[str] = (), row_limit: int | None = None,
             replica: bool | None = None) -> Forecast:
    """Forecast the pending revisions of the primary at ``url`` on a copy of it, under ``capture`` replayed.

    ``capture``: a capture (or its file) to replay at its recorded pace; None: the default
    workload an app registers. ``sample_batches``: batches of each declared backfill to time.
    ``root``: the scratch folder of the copy (``clone.cloned``). ``reporter`` hears the copy's,
    the revisions' and the forecast's own events. ``tables``: copy only these tables' newest
    ``row_limit`` rows (default ``logical.DEFAULT_ROW_LIMIT``) and what they reference, not the
    whole primary (``logical.copied``). ``replica``: a replica follows the copy, to forecast the
    replica lag (costs the copy's size again); None: when the primary has replicas.
    """
    source = database.resolve_url(url)
    if sample_batches < 1:
        raise ForecastUnavailable(f"a backfill's sample needs at least one batch, not {sample_batches}")
    if row_limit is not None and not tables:
        raise ForecastUnavailable("a row limit is for a logical copy of chosen tables: name the tables too")
    recorded = captures.load(Path(capture)) if isinstance(capture, (str, Path)) else capture
    with database.connect(source) as conn:
        pending = pending_scripts(script_directory(), recorded_revisions(conn), "head")
        # What a deploy applies: up to a contract that must wait (scripts/deploy defers it, contracts.py).
        waiting = contracts.waiting_contract(conn, pending, source)
        if replica is None:
            replica = _has_replicas(conn)
    declaring = pending  # the backfills of a deferred contract are the deploy's too: its fill runs at step 7
    if waiting is not None:
        pending = pending[:pending.index(waiting[0])]
    copying = (logical.copied(source, tables=tables, row_limit=logical.DEFAULT_ROW_LIMIT if row_limit is None
                              else row_limit, root=root, reporter=reporter) if tables
               else clone.cloned(source, root=root, reporter=reporter))
    with contextlib.ExitStack() as stack:
        copy = stack.enter_context(copying)
        follower = stack.enter_context(_following(copy, replica, reporter))
        conninfo = _conninfo(copy)
        lag = None if follower is None else stack.enter_context(contextlib.closing(
            ReplicaLag(conninfo, follower.conninfo)))
        if recorded is not None:  # pgreplay's statements are timed by the copy's own log
            with psycopg.connect(**conninfo, autocommit=True) as conn:
                latency.log_durations(conn)
        began_epoch = time.time()
        with replay.workload(recorded, clone=copy) as running:
            began = time.monotonic()
            _warm_up(running, conninfo, warmup_transactions, warmup_seconds, reporter)
            revisions: list[RevisionForecast] = []
            for script in pending:
                revisions.append(measure_revision(script, url=copy.local_url, conninfo=conninfo, began=began,
                                                  reporter=reporter, lag=lag))
                if revisions[-1].error:
                    break
            fills = []
            for name in backfills.declared(declaring):
                fills.append(backfills.forecast_backfill(copy.local_url, name, batches=sample_batches))
                reporter(BackfillSampled(forecast=fills[-1]))
            done = running.stop()
        samples = (latency.from_workload(done.latencies, began=began) if done.latencies
                   else latency.from_log(copy.folder / "server.log", began=began_epoch))
        measured = []
        window_start = 0.0
        for rev in revisions:
            p50, p99 = latency.percentiles(samples, window_start, rev.started)
            measured.append(dataclasses.replace(rev, p50_before=p50, p99_before=p99))
            reporter(RevisionMeasured(forecast=measured[-1]))
            window_start = rev.started + rev.seconds
        workload = (f"capture {recorded.path} ({recorded.statements:,} statements, {recorded.seconds:.1f} s)"
                    if recorded is not None else f"{running.description} (default)")
        return Forecast(database=database.display_url(source), workload=workload, copy_bytes=copy.bytes,
                        copy_seconds=copy.seconds, revisions=tuple(measured), backfills=tuple(fills),
                        samples=samples, copy=copy.description, traffic_statements=done.statements,
                        traffic_failed=done.failed, traffic_errors=tuple(done.errors[:3]))


def _has_replicas(conn: sa.Connection) -> bool:
    """Whether the primary streams to a replica now (a base backup's stream does not count)."""
    # application_name, not state: a role without pg_read_all_stats sees every other column NULL.
    return bool(conn.execute(sa.text("SELECT count(*) FROM pg_stat_replication "
                                     "WHERE application_name <> 'pg_basebackup'")).scalar_one())


@contextlib.contextmanager
def _following(copy: clone.Clone, replica: bool, reporter: Reporter) -> Iterator[clone.Follower | None]:
    if not replica:
        yield None
        return
    with clone.follower(copy, reporter=reporter) as follower:
        yield follower


def _conninfo(copy: clone.Clone) -> dict[str, str | int]:
    """Where the forecast's own sessions reach the copy: its private socket, the source's role and database."""
    info: dict[str, str | int] = {"host": str(copy.socket_folder), "port": copy.port,
                                  "dbname": copy.url.database or "postgres"}
    if copy.url.username:
        info["user"] = copy.url.username
    return info


def _warm_up(running: replay.Workload, conninfo: dict[str, str | int], transactions: int, seconds: float,
             reporter: Reporter) -> None:
    """Wait until the traffic has committed ``transactions`` on the copy, or ended, or ``seconds`` have passed."""
    query = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    started = time.monotonic()
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        first = conn.execute(query).fetchone()[0]
        done = 0
        while done < transactions and not running.finished() and time.monotonic() - started < seconds:
            time.sleep(_POLL)
            done = conn.execute(query).fetchone()[0] - first
    reporter(WarmedUp(transactions=done, seconds=time.monotonic() - started))
