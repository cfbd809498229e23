"""Traffic against the copy while a forecast measures it: a capture replayed at its pace, or a default workload.

A capture is replayed by ``pgreplay`` (Debian's package), chosen because it reads PostgreSQL's
own log (nothing to install on the primary), replays every session on a connection of its own at
the time it was recorded, keeps each session's statements in their order (transactions stay
whole), replays bound parameters and prepared statements, and says how far behind its schedule
it fell: a copy that cannot keep up is itself a finding. It runs as a subprocess, ended and
reaped when the ``with`` block ends, and connects to the copy through its private socket folder,
where every role the capture names is let in without a password (``server.py``).

Without a capture, an app's default workload runs instead: the engine knows no table, so an app
registers one (``register_default_workload``; ``calls`` registers the bench writers' statements
in its ``AppConfig.ready``).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Protocol

import sqlalchemy as sa

from schema_engine.errors import ForecastUnavailable
from schema_engine.forecast import programs
from schema_engine.forecast.capture import CSVLOG, Capture
from schema_engine.forecast.server import Clone

STOP_SECONDS = 10.0  # how long pgreplay gets to end after SIGTERM before it is killed
_STATEMENTS = re.compile(r"^SQL statements executed: (\d+)$", re.MULTILINE)
_FAILED = re.compile(r"^\((\d+) or [\d.]+% of these completed with error\)$", re.MULTILINE)
_BEHIND = re.compile(r"^Maximum lag behind schedule: (\d+) seconds$", re.MULTILINE)


@dataclass(frozen=True)
class WorkloadResult:
    """What a workload did against the copy."""

    description: str
    seconds: float
    complete: bool  # ran to its end (a capture replayed whole); False: stopped first, or runs until stopped
    statements: int | None  # None: not known (pgreplay reports nothing when it is stopped before its end)
    failed: int | None
    errors: tuple[str, ...] = ()  # a few of the failures, in the server's or the tool's words
    behind_seconds: float | None = None  # pgreplay: the most it fell behind the recorded schedule
    # Each statement's (end, seconds), ends on time.monotonic(), when the workload measures them.
    latencies: tuple[tuple[float, float], ...] = ()


class Workload(Protocol):
    """Statements running against a database until they end or are stopped."""

    description: str

    def finished(self) -> bool:
        """Whether it has ended by itself (a replay reached the end of its capture)."""

    def stop(self) -> WorkloadResult:
        """End it (if it runs) and say what it did; a second call returns the same."""


WorkloadStarter = Callable[[sa.URL], Workload]
_default_workload: list[WorkloadStarter] = []


def register_default_workload(starter: WorkloadStarter) -> None:
    """Name the workload a forecast without a capture runs: ``starter(url)`` starts it against ``url`` (an app's)."""
    _default_workload[:] = [starter]


@contextlib.contextmanager
def default_workload(url: sa.URL) -> Iterator[Workload]:
    """Run the registered default workload against ``url`` while inside; stopped (its threads joined) after."""
    if not _default_workload:
        raise ForecastUnavailable("there is no capture to replay and no default workload registered: capture the "
                                  "primary's traffic first")
    workload = _default_workload[0](url)
    try:
        yield workload
    finally:
        workload.stop()


class PgReplay:
    """``pgreplay`` replaying a capture against the copy, a subprocess of this one."""

    def __init__(self, capture: Capture, *, clone: Clone, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ForecastUnavailable(f"a replay's speed must be above 0, not {speed:g}")
        binary = programs.client_program("pgreplay", package="pgreplay")
        self.description = f"{capture.path} replayed by pgreplay ({capture.statements:,} statements" + (
            f", {speed:g}x their pace)" if speed != 1 else ", at their recorded pace)")
        self._out: IO[bytes] = tempfile.TemporaryFile()
        self._err: IO[bytes] = tempfile.TemporaryFile()
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(PGHOST=str(clone.socket_folder), PGPORT=str(clone.port))
        # pgreplay starts in the copy's folder: a capture named relative to here is named whole.
        argv: list[str | Path] = [binary, *(["-c"] if capture.format == CSVLOG else []), "-s", f"{speed:g}",
                                  Path(capture.path).resolve()]
        self.started = time.monotonic()
        self._result: WorkloadResult | None = None
        self._ended: tuple[float, bool, int, str, str] | None = None
        self._process = programs.start(argv, user=programs.me(), env=env,
                                       cwd=clone.folder, stdout=self._out, stderr=self._err)

    def finished(self) -> bool:
        return self._process.poll() is not None

    def wait(self, timeout: float | None = None) -> WorkloadResult:
        """Wait for the replay to reach the end of its capture (``subprocess.TimeoutExpired`` past ``timeout``)."""
        self._process.wait(timeout)
        return self.stop()

    def stop(self) -> WorkloadResult:
        """End pgreplay (if it still runs) and say what it did; ``ForecastUnavailable`` when it failed."""
        if self._result is None:
            self._result = _result(self.description, *self.close())
        return self._result

    def close(self) -> tuple[float, bool, int, str, str]:
        """End pgreplay and reap it, once: its seconds, whether it had finished, its exit code, its output."""
        if self._ended is None:
            complete = self._process.poll() is not None
            if not complete:
                self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            seconds = time.monotonic() - self.started
            out, err = (self._read(stream) for stream in (self._out, self._err))
            self._ended = (seconds, complete, self._process.returncode, out, err)
        return self._ended

    @staticmethod
    def _read(stream: IO[bytes]) -> str:
        stream.seek(0)
        text = stream.read().decode(errors="replace")
        stream.close()
        return text


def _result(description: str, seconds: float, complete: bool, returncode: int, out: str,
            err: str) -> WorkloadResult:
    said = [line.strip() for line in err.splitlines() if line.strip() and not line.startswith("Warning")]
    if complete and returncode != 0:
        raise ForecastUnavailable(f"pgreplay could not replay the capture: {said[0] if said else returncode}")
    numbers = [pattern.search(out) for pattern in (_STATEMENTS, _FAILED, _BEHIND)]
    statements, failed, behind = (int(match.group(1)) if match else None for match in numbers)
    return WorkloadResult(description=description, seconds=seconds, complete=complete and statements is not None,
                          statements=statements, failed=failed, errors=tuple(said[:5]),
                          behind_seconds=float(behind) if behind is not None else None)


@contextlib.contextmanager
def replaying(capture: Capture, *, clone: Clone, speed: float = 1.0) -> Iterator[PgReplay]:
    """Replay ``capture`` against ``clone`` while inside; pgreplay is ended and reaped when the block ends."""
    replay = PgReplay(capture, clone=clone, speed=speed)
    try:
        yield replay
    finally:
        replay.close()  # the block's own outcome stands: a failed replay is said by its stop()


@contextlib.contextmanager
def workload(capture: Capture | None, *, clone: Clone, database: str | None = None) -> Iterator[Workload]:
    """The capture replayed against ``clone``, or without one the default workload on its ``database``."""
    if capture is not None:
        with replaying(capture, clone=clone) as replay:
            yield replay
        return
    with default_workload(clone.local_url.set(database=database or clone.local_url.database)) as running:
        yield running
