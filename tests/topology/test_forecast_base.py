"""The forecast's parts against the topology's primary: its copy with data, its traffic captured, the capture replayed.

Each copy is a real ``pg_basebackup`` of the topology's primary (a few tens of MiB), started by
``pg_ctl`` as the ``postgres`` user; the captures switch the primary's own logging on and back.
The refusals that need a server configured otherwise (no replication line in pg_hba.conf, a log
collector) run against a small server of this module's own.
"""
from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest
import sqlalchemy as sa

from schema_engine import commands, scratch
from schema_engine.errors import (
    CaptureNotAllowed,
    ForecastUnavailable,
    NotEnoughDisk,
    PortInUse,
    ProgramMissing,
    ReplicationRefused,
    ServerLogUnreadable,
)
from schema_engine.forecast import capture, clone, leftovers, programs, replay, server
from schema_engine.progress import Event
from tests.conftest import ROOT, django_url, wait_for
from tests.topology.conftest import Topology

CHILD = Path(__file__).with_name("forecast_child.py")


@pytest.fixture
def rows_db(topology_db: Topology) -> Topology:
    """The new database with a table of three rows."""
    sql(topology_db.primary, "CREATE TABLE forecast_rows (id serial PRIMARY KEY, note text NOT NULL)",
        "INSERT INTO forecast_rows (note) VALUES ('one'), ('two'), ('three')")
    return topology_db


def sql(url: sa.URL, *statements: str) -> list[tuple]:
    """Run statements on ``url`` in autocommit; return the last one's rows."""
    with psycopg.connect(django_url(url), autocommit=True) as conn:
        rows: list[tuple] = []
        for statement in statements:
            cursor = conn.execute(statement)
            rows = cursor.fetchall() if cursor.description else []
    return rows


def notes(url: sa.URL) -> list[str]:
    return [note for (note,) in sql(url, "SELECT note FROM forecast_rows ORDER BY id")]


@contextlib.contextmanager
def socket_on_a_free_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a listening socket while inside."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


def answers(port: int) -> bool:
    try:
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def backups_streaming(topology: Topology) -> int:
    """The primary's WAL senders serving a pg_basebackup."""
    return sql(topology.primary.set(database="postgres"),
               "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pg_basebackup'")[0][0]


class Child:
    """``forecast_child.py`` in a process of its own; its lines read as they come."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, str(CHILD), *args], cwd=ROOT, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.said: list[str] = []

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")  # ended

    def expect(self, word: str) -> list[str]:
        """Wait for the line that begins with ``word``; return its words."""
        while True:
            line = self.lines.get(timeout=120)
            self.said.append(line)
            assert line, f"the child ended without saying {word!r}: {self.said}"
            if line.split()[0] == word:
                return line.split()[1:]

    def kill(self, signum: int) -> int:
        self.process.send_signal(signum)
        returncode = self.process.wait(timeout=120)
        self.process.stdin.close()  # type: ignore[union-attr]
        return returncode


# --- the copy ---------------------------------------------------------------------------------------

def test_a_copy_of_the_primary_answers_on_its_port_with_the_same_rows_and_is_gone_after(
        rows_db: Topology, forecast_root: Path) -> None:
    events: list[Event] = []
    # The topology trusts every local connection: the password is only carried, in a passfile.
    source = rows_db.primary.set(password="not-on-any-command-line")
    odd = "a\\b 'c'"  # a setting's value as written: its backslash and quotes kept
    with clone.cloned(source, root=forecast_root, reporter=events.append,
                      settings={"forecast_test.value": odd}) as copy:
        assert sql(copy.url, "SELECT current_setting('forecast_test.value')") == [(odd,)]
        passfile = copy.folder / "passfile"
        assert "not-on-any-command-line" in passfile.read_text()
        assert (passfile.stat().st_mode & 0o777) == 0o600 and passfile.stat().st_uid == programs.server_user().uid
        assert not any("not-on-any-command-line" in event.describe() for event in events)
        assert copy.url.port == copy.port and copy.url.host == "127.0.0.1"
        assert notes(copy.url) == ["one", "two", "three"]
        # A copy of its own: what is written there stays there.
        sql(copy.url, "INSERT INTO forecast_rows (note) VALUES ('copy only')")
        assert notes(rows_db.primary) == ["one", "two", "three"]
        assert copy.bytes > copy.source_bytes / 2 > 0 and copy.seconds > 0
        assert copy.folder.parent == forecast_root and (copy.folder.stat().st_mode & 0o777) == 0o700
        postmaster = int((copy.data_directory / "postmaster.pid").read_text().split()[0])
        assert Path(f"/proc/{postmaster}").stat().st_uid == programs.server_user().uid
        if os.geteuid() == 0:
            assert copy.os_user == "postgres"  # PostgreSQL refuses root
        folder, port = copy.folder, copy.port
        ready = [event for event in events if isinstance(event, clone.CloneReady)]
        assert ready and ready[0].port == port and ready[0].bytes == copy.bytes
    assert not folder.exists()
    assert not answers(port)
    assert not leftovers.processes_using(folder)


def test_sigterm_while_copying_removes_the_copy(rows_db: Topology, forecast_root: Path) -> None:
    child = Child("clone", str(forecast_root), django_url(rows_db.primary), "32k")  # slow: killed mid-way
    folder = Path(child.expect("folder")[0])
    wait_for(lambda: leftovers.processes_using(folder) and (folder / "data").exists())
    assert child.kill(signal.SIGTERM) != 0
    assert not folder.exists()
    assert not leftovers.processes_using(folder)
    wait_for(lambda: backups_streaming(rows_db) == 0)


def test_a_copy_killed_while_copying_is_removed_by_the_next_run(rows_db: Topology, forecast_root: Path) -> None:
    child = Child("clone", str(forecast_root), django_url(rows_db.primary), "32k")
    folder = Path(child.expect("folder")[0])
    wait_for(lambda: leftovers.processes_using(folder) and (folder / "data").exists())
    child.kill(signal.SIGKILL)
    assert folder.exists() and leftovers.processes_using(folder)  # pg_basebackup goes on, orphaned
    assert clone.remove_leftovers(forecast_root) == (folder,)
    assert not folder.exists()
    assert not leftovers.processes_using(folder)
    wait_for(lambda: backups_streaming(rows_db) == 0)


def test_a_copy_killed_once_running_is_stopped_and_removed_by_the_next_run(
        rows_db: Topology, forecast_root: Path) -> None:
    child = Child("clone", str(forecast_root), django_url(rows_db.primary))
    port, folder = child.expect("ready")
    child.kill(signal.SIGKILL)
    assert answers(int(port)) and Path(folder).exists()  # its server runs on, detached
    events: list[Event] = []
    with clone.cloned(rows_db.primary, root=forecast_root, reporter=events.append) as copy:
        assert not Path(folder).exists()
        assert not answers(int(port)) or copy.port == int(port)
        assert [event.folder for event in events if isinstance(event, leftovers.LeftoverRemoved)] == [folder]
        assert [path.name for path in forecast_root.iterdir()] == [copy.folder.name]


def test_a_role_without_replication_is_refused_before_copying(topology: Topology, forecast_root: Path) -> None:
    admin = scratch.admin_engine(topology.primary.set(database="postgres"))
    role = scratch.unique_name("forecaster")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        with pytest.raises(ReplicationRefused, match=f"ALTER ROLE {role} REPLICATION"):
            with clone.cloned(topology.primary.set(username=role, database="postgres"), root=forecast_root):
                pass
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()
    assert not list(forecast_root.iterdir())


def test_a_port_in_use_is_refused_before_copying(topology: Topology, forecast_root: Path) -> None:
    with socket_on_a_free_port() as port:
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is in use"):
            with clone.cloned(topology.primary, root=forecast_root, port=port):
                pass
    assert not list(forecast_root.iterdir())


def test_a_disk_without_room_for_the_copy_is_refused_before_copying(topology: Topology, forecast_root: Path) -> None:
    free = shutil.disk_usage(forecast_root).free
    with pytest.raises(NotEnoughDisk, match=f"{forecast_root} has .* MiB free") as refused:
        with clone.cloned(topology.primary, root=forecast_root, headroom=free):
            pass
    assert refused.value.needed > refused.value.free
    assert not list(forecast_root.iterdir())


def test_a_scratch_folder_the_server_s_user_cannot_reach_is_refused(topology: Topology, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the copy's server to another OS user")
    # pytest's folders are root's, 0700
    with pytest.raises(ForecastUnavailable, match=f"the OS user postgres, who runs the copy's server, may not enter "
                                                  f"/tmp/pytest-of-.* on the way to the scratch folder {tmp_path}"):
        with clone.cloned(topology.primary, root=tmp_path):
            pass
    assert not list(tmp_path.iterdir())


def test_missing_server_programs_are_named(topology: Topology, forecast_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ProgramMissing, match="pg_basebackup of PostgreSQL 15 is not installed .*postgresql-15"):
        with clone.cloned(topology.primary, root=forecast_root, bin_dir=tmp_path):
            pass
    assert not list(forecast_root.iterdir())


# --- the capture ------------------------------------------------------------------------------------

def logging_settings(url: sa.URL) -> tuple[dict[str, str | None], dict[str, str]]:
    """What postgresql.auto.conf sets of the capture's settings, and what a new session runs with."""
    conf = dict.fromkeys(capture.LOGGING)
    conf.update(dict(sql(url.set(database="postgres"),
                         "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%/postgresql.auto.conf' "
                         "ORDER BY seqno")))
    running = dict(sql(url.set(database="postgres"), "SELECT name, setting FROM pg_settings WHERE name IN ("
                       + ", ".join(f"'{name}'" for name in capture.LOGGING) + ")"))
    return {name: conf[name] for name in capture.LOGGING}, running


def captured_while(write: Callable[[], None], url: sa.URL, output: Path, **options: object) -> capture.Capture:
    """Capture ``url``'s statements while ``write`` runs: the window opens before it and closes after."""
    began, stop, result = threading.Event(), threading.Event(), []
    events: list[Event] = []

    def hear(event: Event) -> None:
        events.append(event)
        if isinstance(event, capture.CaptureStarted):
            began.set()

    def run() -> None:
        result.append(capture.capture(output, url=url, seconds=600, stop=stop, reporter=hear, **options))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: began.is_set() or not thread.is_alive())
        assert began.is_set(), "the capture ended before its window opened"
        write()
    finally:
        stop.set()
        thread.join()
    assert result, "the capture failed"
    assert any(isinstance(event, capture.LoggingRestored) for event in events)
    return result[0]


def write_rows(url: sa.URL, *values: str) -> Callable[[], None]:
    """Insert rows as the application does (bound parameters), then one in a transaction of its own."""
    def write() -> None:
        with psycopg.connect(django_url(url), autocommit=True) as conn:
            for value in values:
                conn.execute("INSERT INTO forecast_rows (note) VALUES (%s)", (value,))
            with conn.transaction():
                conn.execute("INSERT INTO forecast_rows (note) VALUES ('two\nlines')")
    return write


def test_a_capture_holds_the_window_s_statements_and_puts_the_logging_back(
        rows_db: Topology, forecast_root: Path, tmp_path: Path) -> None:
    primary = rows_db.primary
    # One setting the operator set with ALTER SYSTEM (put back to that), the others unset (reset).
    sql(primary.set(database="postgres"), "ALTER SYSTEM SET log_line_prefix = '%m [%p] operator '",
        "SELECT pg_reload_conf()")
    try:
        before = logging_settings(primary)
        assert before[0]["log_line_prefix"] == "%m [%p] operator "
        output = tmp_path / "window.log"
        sql(primary, "INSERT INTO forecast_rows (note) VALUES ('before the window')")
        taken = captured_while(write_rows(primary, "alpha", "beta"), primary, output, root=forecast_root,
                               databases=[primary.database])
        sql(primary, "INSERT INTO forecast_rows (note) VALUES ('after the window')")

        assert logging_settings(primary)[0] == before[0]
        wait_for(lambda: logging_settings(primary)[1] == before[1])  # the reload reaches new sessions
        text = output.read_text()
        assert (output.stat().st_mode & 0o777) == 0o600
        # Two bound inserts, then BEGIN, the insert and COMMIT: what pgreplay replays.
        assert taken.statements == 5 and taken.sessions == 1
        assert "$1 = 'alpha'" in text and "$1 = 'beta'" in text and "two\n\tlines" in text
        assert "window'" not in text and "ALTER SYSTEM" not in text and "current_setting" not in text
        assert all(line.startswith("\t") or f"|{primary.database}|" in line for line in text.splitlines())
        assert taken.bytes == output.stat().st_size and 0 < taken.seconds < 600
        assert not list(forecast_root.iterdir())  # its marker is gone with the settings put back

        # The capture reads back as the forecast will take it, and a log can be cut to a window.
        loaded = capture.load(output)
        assert (loaded.format, loaded.bytes, loaded.statements, loaded.sessions) == (
            capture.STDERR, taken.bytes, taken.statements, taken.sessions)
        lines = text.splitlines()
        beta = next(line for line in lines if "'beta'" in line)[:23]
        cut = capture.from_log(output, tmp_path / "cut.log", start=beta)
        replayed_from_beta = [line for line in lines if line[:23] >= beta and ("|LOG:  statement: " in line
                                                                               or "|LOG:  execute " in line)]
        assert cut.statements == len(replayed_from_beta) >= 4  # beta's insert, BEGIN, the insert, COMMIT
    finally:
        sql(primary.set(database="postgres"), "ALTER SYSTEM RESET log_line_prefix", "SELECT pg_reload_conf()")


def test_a_log_without_the_prefix_pgreplay_reads_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("2026-01-01 00:00:00.000 UTC [123] LOG:  statement: SELECT 1\n")
    with pytest.raises(ServerLogUnreadable, match="log_line_prefix = '%m|%u|%d|%c|'"):
        capture.from_log(log, tmp_path / "capture.log")
    assert not (tmp_path / "capture.log").exists()


def test_a_role_that_may_not_alter_the_system_is_refused(topology: Topology, forecast_root: Path,
                                                         tmp_path: Path) -> None:
    admin = scratch.admin_engine(topology.primary.set(database="postgres"))
    role = scratch.unique_name("capturer")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    before = logging_settings(topology.primary)
    try:
        with pytest.raises(CaptureNotAllowed, match=f"GRANT ALTER SYSTEM ON PARAMETER log_statement, .* TO {role}; "
                                                    f"GRANT EXECUTE ON FUNCTION pg_reload_conf\\(\\) TO {role}"):
            capture.capture(tmp_path / "capture.log", url=topology.primary.set(username=role, database="postgres"),
                            seconds=1, root=forecast_root)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()
    assert logging_settings(topology.primary) == before
    assert not (tmp_path / "capture.log").exists()


def test_a_capture_killed_mid_window_is_put_back_by_the_next_one(
        rows_db: Topology, forecast_root: Path, tmp_path: Path) -> None:
    primary = rows_db.primary
    before = logging_settings(primary)
    child = Child("capture", str(forecast_root), django_url(primary), str(tmp_path / "killed.log"))
    child.expect("capturing")
    child.kill(signal.SIGKILL)
    assert logging_settings(primary)[1]["log_statement"] == "all"  # left on, as a SIGKILL leaves it
    events: list[Event] = []
    stop = threading.Event()
    stop.set()  # the window closes at once: only the putting back is under test
    capture.capture(tmp_path / "next.log", url=primary, seconds=60, stop=stop, root=forecast_root,
                    reporter=events.append)
    left = [event for event in events if isinstance(event, capture.LoggingRestored) and event.left_by]
    assert len(left) == 1 and set(left[0].settings) == set(capture.LOGGING)
    assert logging_settings(primary)[0] == before[0]
    wait_for(lambda: logging_settings(primary)[1] == before[1])
    assert not list(forecast_root.iterdir())


# --- the replay -------------------------------------------------------------------------------------

def test_a_capture_replayed_on_the_copy_writes_its_rows_there(
        rows_db: Topology, forecast_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    primary = rows_db.primary
    with clone.cloned(primary, root=forecast_root) as copy:
        captured_while(write_rows(primary, "gamma", "delta"), primary, tmp_path / "window.log",
                       root=forecast_root, databases=[primary.database])
        monkeypatch.chdir(tmp_path)
        taken = capture.load(Path("window.log"))  # named as an operator names it: relative to where they are
        assert notes(copy.url) == ["one", "two", "three"]
        with replay.replaying(taken, clone=copy) as replaying:
            done = replaying.wait(timeout=120)
        assert notes(copy.url) == ["one", "two", "three", "gamma", "delta", "two\nlines"]
        assert done.complete and done.statements == taken.statements and done.failed == 0
        assert done.behind_seconds is not None and done.behind_seconds < 5

        (tmp_path / "window.log").unlink()  # gone between the forecast's reading and pgreplay's: one error, no other
        with pytest.raises(ForecastUnavailable, match="^pgreplay could not replay the capture: .*No such file"):
            with replay.replaying(taken, clone=copy) as replaying:
                replaying.wait(timeout=120)


def test_without_a_capture_the_bench_writers_write_to_the_copy(topology_db: Topology, forecast_root: Path) -> None:
    commands.upgrade(revision="head", url=topology_db.primary)
    with clone.cloned(topology_db.primary, root=forecast_root) as copy:
        with replay.workload(None, clone=copy) as running:
            wait_for(lambda: sql(copy.url, "SELECT count(*) FROM conversation_history")[0][0] >= 20)
            done = running.stop()
        assert done.description.startswith("the bench writers")
        assert done.statements and done.failed == 0 and len(done.latencies) == done.statements
        calls = sql(copy.url, "SELECT count(*) FROM calls")[0][0]
        assert calls >= 10
    assert sql(topology_db.primary, "SELECT count(*) FROM calls")[0][0] == 0


# --- a server of this module's own: no replication line in its pg_hba.conf, a log collector ----------

@pytest.fixture(scope="module")
def private_server() -> Iterator[sa.URL]:
    """A small PostgreSQL server: trust for all, no replication line, the log collector on; removed after."""
    bin_dir = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
    if not (bin_dir / "initdb").exists():
        pytest.skip(f"PostgreSQL's server programs are not in {bin_dir}")
    owner = programs.server_user()
    folder = Path(tempfile.mkdtemp(prefix="forecast-server-", dir="/tmp"))
    folder.chmod(0o711)
    (folder / "data").mkdir(mode=0o700)
    os.chown(folder / "data", owner.uid, owner.gid)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    done = programs.run([bin_dir / "initdb", "-D", folder / "data", "-U", "postgres", "--auth=trust"], user=owner,
                        env=env, cwd=folder)
    assert done.returncode == 0, done.stderr
    port = server.free_port()
    (folder / "data" / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    with open(folder / "data" / "postgresql.conf", "a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{folder / 'data'}'\n"
                   "logging_collector = on\nlog_directory = 'log'\n")
    pg_ctl = bin_dir / "pg_ctl"
    done = programs.run([pg_ctl, "start", "-D", folder / "data", "-l", folder / "data" / "start.log", "-w"],
                        user=owner, env=env, cwd=folder)
    assert done.returncode == 0, done.stderr
    try:
        yield sa.make_url(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres")
    finally:
        programs.run([pg_ctl, "stop", "-D", folder / "data", "-m", "immediate", "-w"], user=owner, env=env, cwd=folder)
        shutil.rmtree(folder)


def test_a_pg_hba_without_a_replication_line_is_named(private_server: sa.URL, forecast_root: Path) -> None:
    with pytest.raises(ReplicationRefused, match="pg_hba.conf lets role postgres connect, but not for replication: "
                                                 "add a line such as 'host replication postgres"):
        with clone.cloned(private_server, root=forecast_root):
            pass
    assert not list(forecast_root.iterdir())


def test_a_capture_reads_the_log_collector_s_file_through_sql(
        private_server: sa.URL, forecast_root: Path, tmp_path: Path) -> None:
    sql(private_server, "CREATE TABLE IF NOT EXISTS forecast_rows (id serial PRIMARY KEY, note text NOT NULL)")
    before = logging_settings(private_server)
    taken = captured_while(write_rows(private_server, "epsilon"), private_server, tmp_path / "window.log",
                           root=forecast_root)
    assert taken.statements == 4
    assert "$1 = 'epsilon'" in (tmp_path / "window.log").read_text()
    assert logging_settings(private_server)[0] == before[0]
