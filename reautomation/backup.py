"""A backup of the database before a migration: ``migrate_schema upgrade --backup DIR``.

PostgreSQL: ``pg_dump --format=custom`` (the password goes through the environment, never the
command line). SQLite: SQLite's online backup into a file. Either way, the command to restore.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from reautomation import database
from reautomation.schema import SchemaError


class BackupFailed(SchemaError):
    """No backup could be made; nothing was migrated."""


@dataclass(frozen=True)
class Backup:
    path: Path
    restore_command: str


def back_up(directory: Path, *, label: str, url: sa.URL | str | None = None) -> Backup:
    """Write a backup of the database into ``directory``, named for the database, ``label`` and the time."""
    url = sa.make_url(url) if url is not None else database.sqlalchemy_url()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupFailed(f"cannot create the backup directory {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK):
        raise BackupFailed(f"the backup directory {directory} is not writable")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = Path(url.database or "database").stem
    if url.get_backend_name() == "sqlite":
        return _back_up_sqlite(url, directory / f"{name}-{label}-{stamp}.sqlite3")
    return _back_up_postgresql(url, directory / f"{name}-{label}-{stamp}.dump")


def _libpq(url: sa.URL) -> tuple[str, dict[str, str]]:
    """Return ``url`` as libpq's own URL without the password, and an environment carrying it (PGPASSWORD).

    A password on a command line is visible to every user of the host (``ps``).
    """
    target = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return target, env


def _back_up_postgresql(url: sa.URL, path: Path) -> Backup:
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise BackupFailed("pg_dump is not installed: install PostgreSQL's client tools (Debian: postgresql-client)")
    target, env = _libpq(url)
    result = subprocess.run([pg_dump, "--format=custom", "--file", str(path), "--dbname", target], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        path.unlink(missing_ok=True)
        reason = (result.stderr.strip().splitlines() or ["no output"])[0]
        if url.password:
            reason = reason.replace(str(url.password), "***")
        raise BackupFailed(f"pg_dump failed, nothing was migrated: {reason}")
    restore = (f"pg_restore --clean --if-exists --no-owner --single-transaction --dbname "
               f"{shlex.quote(target)} {shlex.quote(str(path))}")
    return Backup(path=path, restore_command=restore)


def _back_up_sqlite(url: sa.URL, path: Path) -> Backup:
    source_path = url.database
    if not source_path or source_path == ":memory:":
        raise BackupFailed("an in-memory SQLite database cannot be backed up")
    source = sqlite3.connect(source_path)
    try:
        target = sqlite3.connect(path)
        with target:
            source.backup(target)
        target.close()
    except sqlite3.Error as exc:
        path.unlink(missing_ok=True)
        raise BackupFailed(f"the SQLite backup failed, nothing was migrated: {exc}") from exc
    finally:
        source.close()
    return Backup(path=path, restore_command=f"cp {shlex.quote(str(path))} {shlex.quote(source_path)}")


def restore(path: Path, *, url: sa.URL | str | None = None) -> None:
    """Replace the database's contents with the backup at ``path`` (made by ``back_up``)."""
    url = sa.make_url(url) if url is not None else database.sqlalchemy_url()
    if not path.is_file():
        raise BackupFailed(f"no backup file at {path}")
    if url.get_backend_name() == "sqlite":
        source = sqlite3.connect(path)
        target = sqlite3.connect(url.database)
        try:
            with target:
                source.backup(target)
        finally:
            source.close()
            target.close()
        return
    pg_restore = shutil.which("pg_restore")
    if pg_restore is None:
        raise BackupFailed("pg_restore is not installed: install PostgreSQL's client tools (Debian: postgresql-client)")
    target, env = _libpq(url)
    result = subprocess.run([pg_restore, "--clean", "--if-exists", "--no-owner", "--single-transaction",
                             "--dbname", target, str(path)], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[0]
        raise BackupFailed(f"pg_restore failed and rolled back, the database is unchanged: {reason}")
