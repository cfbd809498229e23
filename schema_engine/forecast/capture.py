"""The primary's statements for a window, in a log ``pgreplay`` replays: PostgreSQL's own logging, switched on and back.

``pgreplay`` (Debian's package; its man page) reads a server log written with
``log_statement = 'all'``, ``log_connections`` and ``log_disconnections`` on,
``log_line_prefix = '%m|%u|%d|%c|'`` (or csvlog) and English messages. It replays the lines that
begin ``statement:`` or ``execute <name>:``, which ``log_statement`` writes as each statement
starts, in the order the sessions sent them. ``log_min_duration_statement = 0`` is no substitute:
it logs each statement when it ends, as ``duration: ... statement: ...``, a line pgreplay skips
(and, for the extended protocol the application's driver uses, two more lines per statement, for
parse and bind).

``capture`` sets those settings with ``ALTER SYSTEM`` and ``pg_reload_conf()``, waits the window,
and puts each back as it was in ``postgresql.auto.conf`` (set to its old value, or reset), on
error and Ctrl-C too; a run killed before it could (SIGKILL) left a marker with the old values,
and the next capture of that server puts back those the operator has not changed since. Then the
window's lines (by their timestamps; the capture's own sessions left out) are copied from the
server's log into the capture file (0600: it holds the statements' values). The log is read
where the server writes it: a file named by the caller, the log collector's current file through
SQL (``pg_read_binary_file``), or, on the server's own host, the file its stderr goes to (as
``pg_ctl -l`` and Debian's ``pg_ctlcluster`` start it).

Sessions open before the window are replayed from their first statement in it (pgreplay opens a
connection for them); an idle session's first statement after the reload may still be logged with
the old settings, and so be missed.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Collection, Iterable, Iterator

import psycopg
import sqlalchemy as sa
from psycopg import sql

from operator_kit.files import private_folder
from schema_engine import database
from schema_engine.errors import CaptureNotAllowed, ForecastUnavailable, ServerLogUnreadable
from schema_engine.forecast import leftovers, programs
from schema_engine.progress import Event, Reporter, ignore

KIND = "capture"
PREFIX = "%m|%u|%d|%c|"
# What pgreplay needs the server to log (its man page), set for the window and put back after.
LOGGING = {
    "log_statement": "all",
    "log_connections": "on",
    "log_disconnections": "on",
    "log_line_prefix": PREFIX,
    "lc_messages": "C",  # pgreplay reads the messages' English words
    "log_parameter_max_length": "-1",  # the whole value of each bound parameter
}
SETTLE_SECONDS = 30.0  # how long the server may take to apply the reload
CHUNK = 8 * 1024 * 1024
STDERR, CSVLOG = "stderr", "csvlog"
# An entry of a stderr log with PREFIX: time (ms), user, database, session id, severity.
_ENTRY = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})[^|\n]*\|([^|\n]*)\|([^|\n]*)\|"
                    rb"([0-9a-f]+\.[0-9a-f]+)\|([A-Z0-9]+):  ")
_CSV_ENTRY = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[^,\n]*,")
_REPLAYED = (b"statement: ", b"execute ")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,3})?$")


@dataclass(frozen=True)
class Capture:
    """A capture file: statements pgreplay replays, with what they amount to."""

    path: Path
    format: str  # STDERR (PREFIX lines) or CSVLOG
    bytes: int
    statements: int  # the entries pgreplay replays (statement: and execute lines)
    sessions: int
    first: str | None  # the first entry's time, as the server wrote it (ms, its log_timezone)
    last: str | None
    seconds: float  # the window captured; for a log, from its first entry to its last

    def describe(self) -> str:
        return (f"{self.path}: {self.statements:,} statements in {self.sessions:,} sessions over {self.seconds:.1f}s "
                f"({self.bytes / 1024:,.0f} KiB)")


@dataclass(frozen=True)
class CaptureStarted(Event):
    """The server logs every statement from now until the window ends."""

    log: str
    seconds: float

    def describe(self) -> str:
        return f"capturing the primary's statements for {self.seconds:g}s (its log: {self.log})"


@dataclass(frozen=True)
class LoggingRestored(Event):
    """The logging settings are back as they were (``left_by``: a killed capture's marker)."""

    settings: tuple[str, ...]
    left_by: str = ""

    def describe(self) -> str:
        by = f" (left on by a killed capture, {self.left_by})" if self.left_by else ""
        return f"put back {', '.join(self.settings)} as they were{by}"


def capture(output: Path, *, url: sa.URL | str | None = None, seconds: float,
            stop: threading.Event | None = None, server_log: Path | None = None,
            databases: Collection[str] | None = None, root: Path | None = None,
            reporter: Reporter = ignore) -> Capture:
    """Record the server's statements for ``seconds`` (or until ``stop`` is set) into the new file ``output``.

    ``server_log``: the file the server writes its log to, when it is readable here (default:
    found, see the module's docstring). ``databases``: only these databases' sessions (default:
    all, as the copy holds them all). ``root``: where the marker of this run goes.
    """
    url = database.resolve_url(url)
    if url.get_backend_name() != "postgresql":
        raise ForecastUnavailable("a capture needs the PostgreSQL primary's log: the database URL names "
                                  f"{url.get_backend_name()}")
    if seconds <= 0:
        raise ForecastUnavailable(f"a capture's window must be longer than 0 seconds, not {seconds:g}")
    root = leftovers.prepare_root(root or leftovers.DEFAULT_ROOT, owner=programs.me())
    with database.psycopg_connection(url) as conn:
        _refuse_unless_allowed(conn)
        server = _server_identity(conn)
        _restore_leftovers(conn, root, server, reporter)
        prior = _auto_conf(conn)
        with _server_log(conn, server_log) as log, _new_file(output) as out:
            folder = leftovers.claim(root, KIND, owner=programs.me(), server=server, prior=prior, ours=LOGGING)
            try:
                _switch(conn, LOGGING)
                _wait_until_applied(conn)
                log.mark()  # then the clock: a line between the two is in the file, and before the window
                start, mine = _clock(conn), {_session_id(conn)}
                reporter(CaptureStarted(log=log.name, seconds=seconds))
                (stop or threading.Event()).wait(seconds)
                end = _clock(conn)
                _restore(url, prior, reporter)  # before the copying, which may take a while
                found = _extract(log.since_mark(), out, fmt=STDERR, start=start, end=end, skip_sessions=mine,
                                 databases=databases)
            finally:
                # Done already unless the window was cut short; if it fails, the marker stays for the next capture.
                _restore(url, prior, reporter)
                leftovers.remove(folder)
    return Capture(path=output, format=STDERR, bytes=output.stat().st_size, statements=found.statements,
                   sessions=len(found.sessions), first=start, last=end, seconds=_span(start, end))


def from_log(source: Path, output: Path, *, start: str | None = None, end: str | None = None,
             databases: Collection[str] | None = None) -> Capture:
    """Copy a log the server already wrote (stderr with ``PREFIX``, or csvlog) into a capture, or a window of it.

    ``start``/``end``: ``YYYY-MM-DD HH:MM:SS[.fff]`` in the log's own time zone. Refused when the
    log holds no statement pgreplay replays (the settings it needs are named).
    """
    for moment in (start, end):
        if moment is not None and not _TIMESTAMP.match(moment):
            raise ForecastUnavailable(f"{moment!r} is not a time as the log writes it: YYYY-MM-DD HH:MM:SS[.fff]")
    try:
        reader = open(source, "rb")
    except OSError as exc:
        raise ServerLogUnreadable(f"cannot read the log {source}: {exc.strerror}") from exc
    with reader:
        fmt = _sniff(reader, source)
        with _new_file(output) as out:
            found = _extract(_chunks(reader), out, fmt=fmt, start=_padded(start), end=_padded(end, upper=True),
                             skip_sessions=set(), databases=databases)
    if not found.statements:
        output.unlink()
        raise ServerLogUnreadable(_no_statements(source))
    return _described(output, fmt, found)


def load(path: Path) -> Capture:
    """Describe a capture file made earlier (or any log pgreplay reads): its statements, sessions and span."""
    try:
        reader = open(path, "rb")
    except OSError as exc:
        raise ServerLogUnreadable(f"cannot read the capture {path}: {exc.strerror}") from exc
    with reader:
        fmt = _sniff(reader, path)
        found = _extract(_chunks(reader), None, fmt=fmt, start=None, end=None, skip_sessions=set(), databases=None)
    if not found.statements:
        raise ServerLogUnreadable(_no_statements(path))
    return _described(path, fmt, found)


def _described(path: Path, fmt: str, found: _Found) -> Capture:
    return Capture(path=path, format=fmt, bytes=path.stat().st_size, statements=found.statements,
                   sessions=len(found.sessions), first=found.first, last=found.last,
                   seconds=_span(found.first, found.last))


def _no_statements(path: Path) -> str:
    return (f"{path} holds no statement pgreplay can replay: the server must log with log_statement = 'all', "
            f"log_line_prefix = '{PREFIX}' (or log_destination = 'csvlog'), log_connections and log_disconnections "
            "on, lc_messages = 'C'")


# --- the server's settings -------------------------------------------------------------------------

def _refuse_unless_allowed(conn: psycopg.Connection) -> None:
    role, superuser, major = conn.execute(
        "SELECT current_user, rolsuper, current_setting('server_version_num')::int / 10000 "
        "FROM pg_roles WHERE rolname = current_user").fetchone()
    if superuser:
        return
    missing = []
    if major < 15:
        missing.append("superuser (ALTER SYSTEM needs it before PostgreSQL 15)")
    else:
        names = [name for name in LOGGING if not conn.execute(
            "SELECT has_parameter_privilege(%s, 'ALTER SYSTEM')", (name,)).fetchone()[0]]
        if names:
            missing.append(f"GRANT ALTER SYSTEM ON PARAMETER {', '.join(names)} TO {role}")
    checks = [("has_function_privilege('pg_reload_conf()', 'EXECUTE')",
               f"GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {role}"),
              ("has_table_privilege('pg_file_settings', 'SELECT')", f"GRANT SELECT ON pg_file_settings TO {role}"),
              ("has_function_privilege('pg_show_all_file_settings()', 'EXECUTE')",
               f"GRANT EXECUTE ON FUNCTION pg_show_all_file_settings() TO {role}")]
    missing += [grant for check, grant in checks if not conn.execute(f"SELECT {check}").fetchone()[0]]
    if missing:
        raise CaptureNotAllowed(f"role {role} may not switch the server's statement logging on and back (ALTER SYSTEM "
                                f"and pg_reload_conf()): capture as a superuser, or run as one: {'; '.join(missing)}; "
                                "or give the capture a log the server already wrote with log_statement = 'all'")


def _server_identity(conn: psycopg.Connection) -> str:
    return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def _auto_conf(conn: psycopg.Connection) -> dict[str, str | None]:
    """What ``postgresql.auto.conf`` sets for each of LOGGING's settings (None: nothing, the file is left alone)."""
    rows = conn.execute("SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE %s AND name = ANY(%s) "
                        "ORDER BY seqno", ("%/postgresql.auto.conf", list(LOGGING))).fetchall()
    found: dict[str, str | None] = dict.fromkeys(LOGGING)
    found.update({name: setting for name, setting in rows})  # the last line of a setting is the one that holds
    return found


def _switch(conn: psycopg.Connection, values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
        else:
            conn.execute(sql.SQL("ALTER SYSTEM SET {} TO {}").format(sql.Identifier(name), sql.Literal(value)))
    conn.execute("SELECT pg_reload_conf()")


def _restore(url: sa.URL, prior: dict[str, str | None], reporter: Reporter) -> None:
    """Put LOGGING's settings back as ``prior`` had them, on a connection of its own (the first may be broken)."""
    with database.psycopg_connection(url) as conn:
        if _auto_conf(conn) == prior:
            return
        _switch(conn, prior)
    reporter(LoggingRestored(settings=tuple(prior)))


def _restore_leftovers(conn: psycopg.Connection, root: Path, server: str, reporter: Reporter) -> None:
    """Put back what a killed capture of this server left switched on, unless changed since; remove its marker."""
    for folder in leftovers.stale(root, KIND):
        facts = leftovers.marker(folder)
        if facts.get("server") not in (server, None):
            continue  # another server's: its next capture puts it back
        now, ours, prior = _auto_conf(conn), facts.get("ours", {}), facts.get("prior", {})
        back = {name: prior.get(name) for name, value in ours.items() if name in LOGGING and now.get(name) == value}
        if back:
            _switch(conn, back)
            reporter(LoggingRestored(settings=tuple(back), left_by=folder.name))
        leftovers.remove(folder)


def _wait_until_applied(conn: psycopg.Connection) -> None:
    """Wait until this session runs with LOGGING: the postmaster has read the file, and so do new sessions.

    The postmaster reloads before it tells the sessions to; a session reloads between two
    statements. Its own connection's (log_connections, log_disconnections) it keeps from its start.
    A session of its own to ask would be logged, its disconnection in the window.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    asked = {name: value for name, value in LOGGING.items() if name not in ("log_connections", "log_disconnections")}
    while not all(conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0] == value
                  for name, value in asked.items()):
        if time.monotonic() > deadline:
            raise ForecastUnavailable(f"the server did not apply the logging settings within {SETTLE_SECONDS:g}s of "
                                      "pg_reload_conf(): look for a complaint about them in its log")
        time.sleep(0.05)


def _clock(conn: psycopg.Connection) -> str:
    """The server's time now, as its log writes it (ms, in log_timezone)."""
    return conn.execute("SELECT to_char(clock_timestamp() AT TIME ZONE current_setting('log_timezone'), "
                        "'YYYY-MM-DD HH24:MI:SS.MS')").fetchone()[0]


def _session_id(conn: psycopg.Connection) -> str:
    """This session's id as ``%c`` writes it: its start (seconds, hex) and its pid (hex)."""
    return conn.execute("SELECT to_hex(floor(extract(epoch FROM backend_start))::bigint) || '.' || to_hex(pid) "
                        "FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()[0]


# --- the server's log ------------------------------------------------------------------------------

class _Log:
    """Where the server writes its log; ``mark`` notes where it ends, ``since_mark`` reads what came after."""

    name = ""

    def __enter__(self) -> _Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mark(self) -> None:
        raise NotImplementedError

    def since_mark(self) -> Iterator[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to close unless the log is a file held open."""


class _LocalLog(_Log):
    """A file on this host: held open from the mark, so that a rotation by renaming does not lose the window."""

    def __init__(self, path: Path) -> None:
        self.path, self.name = path, str(path)
        try:
            self.file: BinaryIO = open(path, "rb")
        except OSError as exc:
            raise ServerLogUnreadable(f"cannot read the server's log {path}: {exc.strerror}; run as a user who may, "
                                      "or name a log file readable here") from exc
        self.offset = 0

    def mark(self) -> None:
        self.offset = os.fstat(self.file.fileno()).st_size

    def since_mark(self) -> Iterator[bytes]:
        held = os.fstat(self.file.fileno())
        self.file.seek(self.offset if held.st_size >= self.offset else 0)  # truncated (copytruncate): all of it
        yield from _chunks(self.file)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino != held.st_ino:  # renamed away: the new file holds the rest
                with open(self.path, "rb") as newer:
                    yield from _chunks(newer)

    def close(self) -> None:
        self.file.close()


class _CollectorLog(_Log):
    """The log collector's current file, read through SQL (the server may be on another host)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.path, self.offset = self._current(), 0
        self.name = f"{self.path} (the log collector's, read through pg_read_binary_file)"

    def _current(self) -> str:
        path = self.conn.execute("SELECT pg_current_logfile('stderr')").fetchone()[0]
        if not path:
            raise ServerLogUnreadable("the log collector writes no stderr log: add stderr to log_destination, or name "
                                      "the log file the server writes")
        return str(path)

    def mark(self) -> None:
        self.path = self._current()
        self.offset = int(self.conn.execute("SELECT size FROM pg_stat_file(%s)", (self.path,)).fetchone()[0])

    def since_mark(self) -> Iterator[bytes]:
        now = self._current()
        yield from self._read(self.path, self.offset)
        if now != self.path:  # rotated during the window
            yield from self._read(now, 0)

    def _read(self, path: str, offset: int) -> Iterator[bytes]:
        while True:
            chunk = self.conn.execute("SELECT pg_read_binary_file(%s, %s, %s, true)",
                                      (path, offset, CHUNK)).fetchone()[0]
            if not chunk:
                return
            yield bytes(chunk)
            offset += len(chunk)


def _server_log(conn: psycopg.Connection, given: Path | None) -> _Log:
    destinations = conn.execute("SELECT current_setting('log_destination')").fetchone()[0]
    if given is not None:
        return _LocalLog(given)
    if "stderr" not in [part.strip() for part in destinations.split(",")]:
        raise ServerLogUnreadable(f"the server logs to {destinations}, not stderr, and pgreplay reads a stderr or csv "
                                  "log: add stderr to log_destination, or name the log file the server writes")
    if conn.execute("SELECT current_setting('logging_collector')::bool").fetchone()[0]:
        allowed = conn.execute("SELECT rolsuper OR pg_has_role(current_user, 'pg_read_server_files', 'USAGE') "
                               "FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        if not allowed:
            raise CaptureNotAllowed("the server's log collector writes the log, and reading it through SQL needs "
                                    "pg_read_server_files: run 'GRANT pg_read_server_files TO <role>' as a superuser, "
                                    "or name the log file the server writes")
        return _CollectorLog(conn)
    found = _stderr_of_backend(conn)
    if found is None:
        raise ServerLogUnreadable("the server writes its log to its standard error, and this host cannot see where "
                                  "(it runs elsewhere, or as a user whose processes this one may not inspect): name "
                                  "the log file the server writes (as pg_ctl -l or pg_ctlcluster started it), or turn "
                                  "logging_collector on")
    return _LocalLog(found)


def _stderr_of_backend(conn: psycopg.Connection) -> Path | None:
    """The file this session's server process writes its stderr to, when the server runs on this host (Linux)."""
    try:
        pid, data_directory = conn.execute("SELECT pg_backend_pid(), current_setting('data_directory')").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()
        return None
    process = Path(f"/proc/{pid}")
    try:  # the same pid on this host is our session's process only if it works in the server's data folder
        if os.path.realpath(process / "cwd") != os.path.realpath(data_directory):
            return None
        target = Path(os.readlink(process / "fd" / "2"))
    except OSError:
        return None
    return target if target.is_file() else None


# --- the capture file ------------------------------------------------------------------------------

@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[BinaryIO]:
    """A new file only its owner may read (it holds the statements' values); removed if it is not finished.

    Missing folders are made for their owner alone (0700), as ``--backup DIR`` makes its own.
    """
    try:
        private_folder(path.parent)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ForecastUnavailable(f"{path} exists: name a new file for the capture") from None
    except OSError as exc:
        raise ForecastUnavailable(f"cannot create the capture file {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(descriptor, "wb") as out:
            yield out
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _chunks(reader: BinaryIO) -> Iterator[bytes]:
    while chunk := reader.read(CHUNK):
        yield chunk


def _sniff(reader: BinaryIO, path: Path) -> str:
    head = reader.read(64 * 1024)
    reader.seek(0)
    for line in head.splitlines():
        if _ENTRY.match(line):
            return STDERR
        if _CSV_ENTRY.match(line):
            return CSVLOG
    raise ServerLogUnreadable(_no_statements(path))


def _padded(moment: str | None, *, upper: bool = False) -> str | None:
    """A time given to the second reaches to the end of that second for an end, the start of it for a start."""
    if moment is None or "." in moment:
        return moment
    return moment + (".999" if upper else ".000")


def _span(first: str | None, last: str | None) -> float:
    if not first or not last:
        return 0.0
    parsed = [datetime.strptime(moment, "%Y-%m-%d %H:%M:%S.%f") for moment in (first, last)]
    return (parsed[1] - parsed[0]).total_seconds()


@dataclass
class _Found:
    statements: int = 0
    sessions: set[bytes] = field(default_factory=set)
    first: str | None = None
    last: str | None = None


def _extract(chunks: Iterable[bytes], out: BinaryIO | None, *, fmt: str, start: str | None, end: str | None,
             skip_sessions: set[str], databases: Collection[str] | None) -> _Found:
    """Copy the entries of a log that a replay wants (in the window, of the databases, not ours) to ``out``."""
    found = _Found()
    skip = {session.encode() for session in skip_sessions}
    wanted = {name.encode() for name in databases} if databases is not None else None
    low, high = (start or "").encode(), (end or "").encode()
    entries = _stderr_entries(chunks) if fmt == STDERR else _csv_entries(chunks)
    for raw, (moment, user, dbname, session, severity, message) in entries:
        if (moment < low or (high and moment > high) or session in skip or user in (b"", b"[unknown]")
                or (wanted is not None and dbname not in wanted)):
            continue
        if out is not None:
            out.write(raw)
        found.sessions.add(session)
        found.first = found.first or moment.decode()
        found.last = moment.decode()
        if severity == b"LOG" and message.startswith(_REPLAYED):
            found.statements += 1
    return found


Fields = tuple[bytes, bytes, bytes, bytes, bytes, bytes]  # time, user, database, session, severity, message


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for line in whole:
            yield line + b"\n"
    if rest:
        yield rest + b"\n"


def _stderr_entries(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, Fields]]:
    """Each entry with PREFIX, and its continuation lines (a tab first); lines of no entry are dropped."""
    current: list[bytes] = []
    fields: Fields | None = None
    for line in _lines(chunks):
        if line.startswith(b"\t"):
            if fields is not None:
                current.append(line)
            continue
        if fields is not None:
            yield b"".join(current), fields
        match = _ENTRY.match(line)
        if match:
            current = [line]
            fields = (*match.groups(), line[match.end():])  # type: ignore[assignment]
        else:
            current, fields = [], None
    if fields is not None:
        yield b"".join(current), fields


def _csv_entries(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, Fields]]:
    """Each csvlog record (its quoted fields may hold newlines), read as PostgreSQL writes it."""
    record: list[bytes] = []
    quotes = 0
    for line in _lines(chunks):
        record.append(line)
        quotes += line.count(b'"')
        if quotes % 2:
            continue  # inside a quoted field: the record goes on
        raw, record, quotes = b"".join(record), [], 0
        if not _CSV_ENTRY.match(raw):
            continue
        row = next(csv.reader(io.StringIO(raw.decode("utf-8", errors="surrogateescape"))), [])
        if len(row) < 14:
            continue
        field = [value.encode("utf-8", errors="surrogateescape") for value in row]
        yield raw, (field[0][:23], field[1], field[2], field[5], field[11], field[13])
