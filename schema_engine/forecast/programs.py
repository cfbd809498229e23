"""PostgreSQL's programs as the forecast runs them: of the server's version, as a user that may run a server.

PostgreSQL refuses to run its server as root, and the deploy host may run this project as root
(the tests here do). ``scripts/topology`` then runs the server programs through ``runuser -u
postgres``; here each program is started with Python's own ``user=``/``group=``/``extra_groups=``
(a setuid in the child before exec): no shell, no PAM session, and the environment that carries
the connection reaches the program exactly as given, where ``runuser`` would reset part of it.

The connection travels in libpq's environment (``PGHOST``, ``PGPORT``, ``PGUSER``, ...), and a
password in a passfile readable by that user alone: a command line is visible to every user of
the host (``ps``).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

import sqlalchemy as sa

from schema_engine.errors import ForecastUnavailable, ProgramMissing

# The OS user the server programs run as when this process is root (Debian's packages make it).
DEFAULT_SERVER_USER = "postgres"
# A URL's libpq parameters and the environment variables that carry them (libpq's own table).
LIBPQ_ENVIRONMENT = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE",
    "service": "PGSERVICE", "options": "PGOPTIONS", "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL", "sslcrldir": "PGSSLCRLDIR", "sslsni": "PGSSLSNI", "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION", "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE", "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB",
    "channel_binding": "PGCHANNELBINDING", "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "load_balance_hosts": "PGLOADBALANCEHOSTS",
}


@dataclass(frozen=True)
class OsUser:
    """The OS user a program runs as: this process's own, or the one root hands the server programs to."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()

    def may_enter(self, folder: Path) -> Path | None:
        """Return the first folder on the way to ``folder`` this user may not pass through, or None."""
        for part in [*reversed(folder.resolve().parents), folder.resolve()]:
            if not part.exists():
                return None  # made by us, for this user
            mode = part.stat()
            if self.uid == 0:
                continue
            bit = 0o100 if mode.st_uid == self.uid else 0o010 if mode.st_gid in (self.gid, *self.groups) else 0o001
            if not mode.st_mode & bit:
                return part
        return None


def me() -> OsUser:
    """Return the OS user this process runs as."""
    entry = pwd.getpwuid(os.geteuid())
    return OsUser(entry.pw_name, entry.pw_uid, os.getegid(), tuple(os.getgroups()), entry.pw_dir)


def server_user(name: str | None = None) -> OsUser:
    """Return the OS user the server programs run as: ourselves, or, as root (refused by PostgreSQL), ``name``.

    ``name`` defaults to ``postgres``; only root can hand programs to another user.
    """
    if os.geteuid() != 0:
        myself = me()
        if name not in (None, myself.name):
            raise ForecastUnavailable(f"this process runs as {myself.name} and cannot run PostgreSQL's programs as "
                                      f"{name}: leave the OS user unset, or run as root")
        return myself
    name = name or DEFAULT_SERVER_USER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ForecastUnavailable(f"there is no OS user {name} to run PostgreSQL's server as (it refuses root): "
                                  "create one (Debian's postgresql packages do), or name another") from None
    if entry.pw_uid == 0:
        raise ForecastUnavailable(f"the OS user {name} is root, which PostgreSQL's server refuses: name another")
    groups = tuple(g for g in os.getgrouplist(name, entry.pw_gid) if g != entry.pw_gid)
    return OsUser(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def program(name: str, *, major: int, bin_dir: Path | None = None) -> Path:
    """Return the path of PostgreSQL ``major``'s program ``name``; raise ``ProgramMissing`` naming the package.

    Looked for in ``bin_dir`` when given, else in Debian's ``/usr/lib/postgresql/MAJOR/bin`` (where
    ``pg_ctl`` lives: it is not on the PATH there), else on the PATH.
    """
    folders = [bin_dir] if bin_dir else [Path(f"/usr/lib/postgresql/{major}/bin")]
    for folder in folders:
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = None if bin_dir else shutil.which(name)
    if found:
        return Path(found)
    where = f"{bin_dir}" if bin_dir else f"/usr/lib/postgresql/{major}/bin or the PATH"
    raise ProgramMissing(f"{name} of PostgreSQL {major} is not installed (looked in {where}): install PostgreSQL "
                         f"{major}'s server programs (Debian: apt-get install postgresql-{major}), or name the "
                         "folder that holds them", program=name)


def client_program(name: str, *, package: str) -> Path:
    """Return the path of a program on the PATH; raise ``ProgramMissing`` naming its Debian package."""
    found = shutil.which(name)
    if found is None:
        raise ProgramMissing(f"{name} is not installed: apt-get install {package}", program=name)
    return Path(found)


def private_file(path: Path, text: str, *, owner: OsUser) -> Path:
    """Write ``text`` to a new file that only ``owner`` may read (0600), e.g. a passfile."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(text)
    if not owner.is_me:
        os.chown(path, owner.uid, owner.gid)
    return path


def connection_environment(url: sa.URL, *, passfile_folder: Path, owner: OsUser) -> dict[str, str]:
    """Return the environment that connects libpq's programs to ``url``: PG* variables, a password in a passfile.

    The operator's own PG* variables are left out: the URL alone says where to connect. The
    passfile (``passfile_folder/passfile``, 0600, owned by ``owner``) is written when the URL
    has a password, once per folder.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    parts = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
    password = url.password
    for key, value in url.query.items():
        value = value if isinstance(value, str) else value[-1]
        if key.lower() == "password":
            password = value
        elif key in LIBPQ_ENVIRONMENT:
            parts[key] = value
        else:
            raise ForecastUnavailable(f"the database URL's parameter {key} has no libpq environment variable, and "
                                      "the forecast puts no connection setting on a command line: leave it out")
    env.update({LIBPQ_ENVIRONMENT[key]: str(value) for key, value in parts.items() if value not in (None, "")})
    if password:
        passfile = passfile_folder / "passfile"
        if not passfile.exists():
            escaped = str(password).replace("\\", "\\\\").replace(":", "\\:")
            user = (url.username or "*").replace("\\", "\\\\").replace(":", "\\:")
            private_file(passfile, f"*:*:*:{user}:{escaped}\n", owner=owner)
        env["PGPASSFILE"] = str(passfile)
    return env


def run(argv: Sequence[str | Path], *, user: OsUser, env: dict[str, str], cwd: Path,
        timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run a program as ``user`` and wait for it; killed (and reaped) if this process is interrupted meanwhile."""
    return subprocess.run([str(arg) for arg in argv], env=_env_of(user, env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, **_as(user))


def start(argv: Sequence[str | Path], *, user: OsUser, env: dict[str, str], cwd: Path,
          stdout: IO[bytes] | int | None = subprocess.DEVNULL,
          stderr: IO[bytes] | int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start a program as ``user``; the caller waits for it (and ends it)."""
    return subprocess.Popen([str(arg) for arg in argv], env=_env_of(user, env), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=stderr, **_as(user))


def _as(user: OsUser) -> dict[str, object]:
    if user.is_me:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}


def _env_of(user: OsUser, env: dict[str, str]) -> dict[str, str]:
    # Another user's programs look in their own home (libpq's defaults), not in root's.
    return env if user.is_me else {**env, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}
