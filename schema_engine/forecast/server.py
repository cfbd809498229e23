"""A server of the forecast's own in a run's scratch folder: kept apart from its source, started, stopped, measured.

Both copies run this way (``clone.py``'s physical one, ``logical.py``'s logical one): their data
folder in ``FOLDER/data``, a port of their own (a free one unless the caller names it), a socket
in ``FOLDER/socket`` (0700: only the server's OS user and root reach it) where every role is
trusted, their log in ``FOLDER/server.log``, and nothing that reaches back to the source
(archiving, a primary to follow, synchronous standbys, logical replication workers).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import sqlalchemy as sa

from schema_engine import database
from schema_engine.errors import ForecastUnavailable, NotEnoughDisk, PortInUse
from schema_engine.forecast import leftovers, programs
from schema_engine.forecast.programs import OsUser
from schema_engine.forecast.result import PHYSICAL
from schema_engine.progress import Reporter

START_SECONDS = 300  # pg_ctl's wait for the copy to finish its recovery and accept connections
FREE_PORT_TRIES = 3  # a free port picked can be taken before the server binds it
MiB = 1024 * 1024
MIN_HEADROOM = 256 * MiB  # beyond the copy's size: the WAL written while copying, the copy's own log
_DATA_DIRECTORY_LINE = re.compile(r"^(\s*data_directory\s*=)", re.MULTILINE)


@dataclass(frozen=True)
class Clone:
    """A running copy of the primary: where it answers, what it cost."""

    # Physical: 127.0.0.1:port, the source's role, password and database (the source's pg_hba rules).
    # Logical: the same as local_url (it listens on its socket only; its roles have no passwords).
    url: sa.URL
    local_url: sa.URL  # through the copy's private socket folder: any role, no password
    port: int
    folder: Path  # this run's scratch folder: data/, socket/, server.log
    bytes: int  # the copy's size on disk
    seconds: float  # the time to copy it and start it
    os_user: str  # who runs its server
    source_bytes: int  # the source's databases (a logical copy: its database), as it reported them before the copy
    description: str = PHYSICAL  # which copy: "physical", or "logical: TABLE ≤ N rows" (logical.py)

    @property
    def socket_folder(self) -> Path:
        return self.folder / "socket"

    @property
    def data_directory(self) -> Path:
        return self.folder / "data"


def local_url(drivername: str, *, folder: Path, port: int, username: str | None, database: str | None) -> sa.URL:
    """The URL of a copy through its private socket folder (no password: the socket trusts every role)."""
    return sa.URL.create(drivername, username=username, database=database,
                         query={"host": str(folder / "socket"), "port": str(port)})


def claim_folder(root: Path | None, kind: str, *, owner: OsUser, source: sa.URL, size: int, headroom: int | None,
                 needed_for: str, port: int | None, reporter: Reporter) -> Path:
    """Make this run's folder of ``kind`` under ``root`` once the leftovers of killed runs of that kind are removed
    and the disk (``check_disk``) and the port asked (``check_port``) are found fit."""
    root = leftovers.prepare_root(root or leftovers.DEFAULT_ROOT, owner=owner)
    leftovers.remove_stale(root, kind, reporter=reporter)
    check_disk(root, size, headroom, needed_for=needed_for)
    if port is not None:
        check_port(port)
    return leftovers.claim(root, kind, owner=owner, source=database.display_url(source))


def check_disk(root: Path, size: int, headroom: int | None, *, needed_for: str) -> None:
    """Refuse unless ``root``'s disk has ``size`` bytes free and ``headroom`` more (default: a tenth, 256 MiB+)."""
    spare = headroom if headroom is not None else max(size // 10, MIN_HEADROOM)
    free = shutil.disk_usage(root).free
    if free < size + spare:
        raise NotEnoughDisk(f"the copy needs {mib(size)} for {needed_for} and {mib(spare)} to spare, and "
                            f"{root} has {mib(free)} free: free some space there, or name a scratch folder on a "
                            "larger disk", folder=str(root), needed=size + spare, free=free)


def mib(size: int) -> str:
    return f"{size / MiB:,.0f} MiB"


def check_port(port: int) -> None:
    """Refuse a port that is no port number, or that another program listens on (127.0.0.1)."""
    if not 1 <= port <= 65535:
        raise PortInUse(f"{port} is not a port number: name one from 1 to 65535, or leave it out for a free one",
                        port=port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(f"port {port} on 127.0.0.1 is in use by another program: name another port for the copy, "
                            "or leave it out for a free one", port=port) from None


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _configure(folder: Path, *, owner: OsUser, port: int, settings: Mapping[str, str], rules: str | None) -> None:
    """Keep the copy apart from its source: its own port, socket, log; nothing that reaches back to the source."""
    data = folder / "data"
    socket_folder = folder / "socket"
    socket_folder.mkdir(mode=0o700, exist_ok=True)
    if not owner.is_me:
        os.chown(socket_folder, owner.uid, owner.gid)
    config = data / "postgresql.conf"
    if config.exists():  # a data_directory there would start the copy on the source's own folder
        config.write_text(_DATA_DIRECTORY_LINE.sub(r"# (forecast copy) \1", config.read_text()))
    own = {
        "port": str(port), "listen_addresses": "127.0.0.1", "unix_socket_directories": str(socket_folder),
        "unix_socket_permissions": "0700", "cluster_name": "forecast_copy", "external_pid_file": "",
        "hba_file": str(data / "pg_hba.conf"), "ident_file": str(data / "pg_ident.conf"),
        "logging_collector": "off", "log_destination": "stderr", "log_statement": "none",
        "log_min_duration_statement": "-1", "log_connections": "off", "log_disconnections": "off",
        "archive_mode": "off", "archive_command": "", "restore_command": "", "primary_conninfo": "",
        "primary_slot_name": "", "synchronous_standby_names": "", "ssl": "off", **settings,
        # Last, so no setting given undoes it: a copy of a subscriber must not apply from the real
        # publishers (it would consume changes from their slots that production then never gets).
        "max_logical_replication_workers": "0",
    }
    lines = "".join(f"{name} = {_quoted(name, value)}\n" for name, value in own.items())
    write(data / "postgresql.auto.conf", "# the forecast's copy: its own settings (schema_engine/forecast/server.py)\n"
          + lines, owner=owner, append=True)
    hba = data / "pg_hba.conf"
    if rules is None:
        rules = hba.read_text() if hba.exists() else (  # the source keeps it elsewhere (Debian's /etc/postgresql)
            "host all all 127.0.0.1/32 md5\nhost replication all 127.0.0.1/32 md5\n")
    write(hba, "# the forecast's copy: any role on its private socket (schema_engine/forecast/server.py)\n"
          "local all all trust\nlocal replication all trust\n" + rules, owner=owner)
    for name in ("postgresql.conf", "pg_ident.conf"):
        if not (data / name).exists():
            write(data / name, "", owner=owner)


def write(path: Path, text: str, *, owner: OsUser, append: bool = False) -> None:
    """Write (or append) ``text`` to ``path``; a new file is 0600 and ``owner``'s."""
    existed = path.exists()
    with open(path, "a" if append else "w", encoding="utf-8") as out:
        out.write(text)
    if not existed:
        path.chmod(0o600)
        if not owner.is_me:
            os.chown(path, owner.uid, owner.gid)


def start(pg_ctl: Path, *, folder: Path, owner: OsUser, port: int | None, settings: Mapping[str, str],
          rules: str | None = None, what: str = "the copy of the primary") -> int:
    """Configure the server in ``folder/data`` and start it; return its port.

    ``rules``: the pg_hba.conf lines after the private socket's trust (None: the data folder's own).
    ``what``: the copy's name in a refusal.
    """
    chosen = port if port is not None else free_port()
    _configure(folder, owner=owner, port=chosen, settings=settings, rules=rules)
    for attempt in range(1 if port is not None else FREE_PORT_TRIES):
        if attempt:  # the free port picked was taken before the server could bind it: another one
            chosen = free_port()
            write(folder / "data" / "postgresql.auto.conf", f"port = '{chosen}'\n", owner=owner, append=True)
        log = folder / "server.log"
        log.unlink(missing_ok=True)
        done = programs.run([pg_ctl, "start", "--pgdata", folder / "data", "--log", log, "--wait",
                             f"--timeout={START_SECONDS}", "--silent"], user=owner, env=server_env(), cwd=folder)
        if done.returncode == 0:
            return chosen
        said = log_problem(log) or (done.stderr or done.stdout or "pg_ctl failed").strip().splitlines()[0]
        if "Address already in use" not in said:
            raise ForecastUnavailable(f"{what} did not start: {said}")
        stop(pg_ctl, folder=folder, owner=owner)
    raise PortInUse(f"port {chosen} on 127.0.0.1 is in use by another program: name another port for the copy, or "
                    "leave it out for a free one", port=int(chosen or 0))


def log_problem(log: Path) -> str:
    """The first FATAL (else LOG about a failure) line of the copy's server log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for marker in ("FATAL:", "could not", "PANIC:"):
        line = next((line for line in lines if marker in line), None)
        if line:
            return line.split(":  ", 1)[-1].strip() if ":  " in line else line.strip()
    return ""


def size(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def stop(pg_ctl: Path, *, folder: Path, owner: OsUser) -> None:
    """Stop the copy's server if it runs (an immediate shutdown: the copy is thrown away)."""
    if not (folder / "data" / "postmaster.pid").exists():
        return
    # A server that does not stop in time is left to leftovers.remove, which ends what still works in the folder.
    with contextlib.suppress(subprocess.TimeoutExpired):
        programs.run([pg_ctl, "stop", "--pgdata", folder / "data", "--mode=immediate", "--wait", "--silent"],
                     user=owner, env=server_env(), cwd=folder, timeout=60)


def server_env() -> dict[str, str]:
    """The environment of the server's programs: none of libpq's variables (PGPORT would be its port)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _quoted(name: str, value: str) -> str:
    """``value`` as a quoted string of postgresql.conf: backslashes and quotes doubled; no line breaks."""
    if any(char in value for char in "\n\r\0"):
        raise ForecastUnavailable(f"the copy's setting {name} may not hold a line break or a NUL: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
