"""Rehearsal: apply the pending revisions to a copy of the schema (no data) before the deploy does.

GitLab rehearses its migrations on a copy of production; a copy of the schema alone catches what
``plan`` cannot see from the revision files: a database stamped at another revision than its
schema is (a revision then fails: "already exists", "does not exist"), and a revision that
cannot apply at all. After the pending revisions the copy is compared with the models (the
drift check), which catches "stamp head after a failed revision" too.

The copy is a scratch database on the same server (PostgreSQL: ``pg_dump --schema-only`` into a
new database, which needs the CREATEDB privilege; SQLite: a new file beside the database),
with ``alembic_version`` copied, dropped afterwards whatever happened. The revisions run one by
one through ``commands.upgrade``, with every guard they meet in the deploy.
"""
from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

from schema_engine import commands, database, scratch
from schema_engine.backup import client_tool, tool_error
from schema_engine.errors import RehearsalUnavailable, SchemaDrift, SchemaError, first_line
from schema_engine.progress import Event, Reporter, ignore
from schema_engine.state import pending_scripts, recorded_revisions, script_directory

SCRATCH_PREFIX = "rehearsal"


@dataclass(frozen=True)
class RevisionRehearsed(Event):
    """One pending revision applied to the copy of the schema, or failed there."""

    revision: str
    seconds: float
    error: str = ""  # empty: applied

    def describe(self) -> str:
        outcome = f"failed: {self.error}" if self.error else "applied"
        return f"rehearsed {self.revision:<28} {self.seconds:8.2f}s  {outcome}"


@dataclass(frozen=True)
class Rehearsal:
    """What applying the pending revisions to a copy of the schema did."""

    revisions: tuple[RevisionRehearsed, ...]
    drift: str = ""  # the drift check at the end, when every revision applied; empty: none
    seconds: float = 0.0

    @property
    def failed(self) -> RevisionRehearsed | None:
        return next((rev for rev in self.revisions if rev.error), None)

    @property
    def problems(self) -> list[str]:
        if self.failed:
            return [f"rehearsal: revision {self.failed.revision} cannot apply to this schema ({self.failed.error}); "
                    "the database may record another revision than its schema is at (a stamp): compare "
                    "'manage.py migrate_schema current' with the tables, and stamp the revision it really is at"]
        if self.drift:
            return [f"rehearsal: after the pending revisions the schema still differs from the models ({self.drift}); "
                    "a revision recorded without running (stamp after a failure)? stamp the revision the schema "
                    "really is at and upgrade"]
        return []


def rehearse(*, url: sa.URL | str | None = None, reporter: Reporter = ignore) -> Rehearsal:
    """Copy ``url``'s schema into a scratch database, apply the pending revisions one by one, run the drift check.

    ``reporter`` hears of each revision as it is rehearsed (``RevisionRehearsed``); what the
    upgrade of the copy reports is the rehearsal's business, not the caller's.
    """
    url = database.resolve_url(url)
    started = time.perf_counter()
    with database.connect(url) as connection:
        pending = pending_scripts(script_directory(), recorded_revisions(connection), "head")
    done: list[RevisionRehearsed] = []
    drift = ""
    with _schema_copy(url) as copy:
        for script in pending:
            began = time.perf_counter()
            try:
                commands.upgrade(revision=script.revision, url=copy)
                error = ""
            except SchemaError as exc:
                error = str(exc)
            done.append(RevisionRehearsed(revision=script.revision, seconds=time.perf_counter() - began, error=error))
            reporter(done[-1])
            if error:
                break
        else:
            try:
                commands.check(url=copy, stdout=io.StringIO())  # Alembic's own line is not ours to print
            except SchemaDrift as exc:
                drift = exc.detail
    return Rehearsal(tuple(done), drift, time.perf_counter() - started)


@contextlib.contextmanager
def _schema_copy(url: sa.URL) -> Iterator[sa.URL]:
    if url.get_backend_name() == "sqlite":
        with _sqlite_copy(url) as copy:
            yield copy
        return
    admin = scratch.admin_engine(url)
    # The source's name, as much as fits in 63 bytes, says whose copy it is (one left by a killed run, too).
    name = scratch.unique_name(f"{SCRATCH_PREFIX}_{(url.database or 'db')[:40]}")
    try:
        copy = scratch.create_database(admin, name)
    except sa.exc.DBAPIError as exc:
        raise RehearsalUnavailable(f"cannot create a scratch database to rehearse in ({first_line(exc)}): the "
                                   "migration role needs CREATEDB (ALTER ROLE ... CREATEDB)") from exc
    try:
        _copy_postgresql_schema(url, copy)
        yield copy
    finally:
        scratch.drop_database(admin, copy)
        admin.dispose()


def _copy_postgresql_schema(source: sa.URL, copy: sa.URL) -> None:
    source_target, source_env = database.libpq_connection(source)
    copy_target, copy_env = database.libpq_connection(copy)
    dump = subprocess.Popen([client_tool("pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
                             "--dbname", source_target], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=source_env)
    load = subprocess.run([client_tool("psql"), "--no-psqlrc", "--quiet", "--single-transaction", "--set",
                           "ON_ERROR_STOP=1", "--dbname", copy_target, "--file", "-"],
                          stdin=dump.stdout, env=copy_env, capture_output=True, text=True)
    dump.stdout.close()  # type: ignore[union-attr]
    complaint = dump.stderr.read().decode(errors="replace") if dump.stderr else ""
    dumped = subprocess.CompletedProcess(dump.args, dump.wait(), stderr=complaint)
    if dumped.returncode != 0:
        raise RehearsalUnavailable(f"pg_dump --schema-only failed: {tool_error(dumped, source)}")
    if load.returncode != 0:
        raise RehearsalUnavailable(f"the schema copy could not be loaded: {tool_error(load, copy)}")
    _copy_versions(source, copy)


def _copy_versions(source: sa.URL, copy: sa.URL) -> None:
    """Copy ``alembic_version``'s rows: the copy claims what the database claims."""
    with database.connect(source) as conn:
        versions = recorded_revisions(conn)
    with database.connect(copy) as conn:
        for version in versions:
            conn.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": version})
        conn.commit()


@contextlib.contextmanager
def _sqlite_copy(url: sa.URL) -> Iterator[sa.URL]:
    source = Path(url.database or "")
    path = source.with_name(f".{SCRATCH_PREFIX}_{uuid.uuid4().hex[:12]}.sqlite3")
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            statements = [sql for (sql,) in reader.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
                "ORDER BY type = 'index', rowid")]
        finally:
            reader.close()
        writer = sqlite3.connect(path)
        try:
            for sql in statements:
                writer.execute(sql)
            writer.commit()
        finally:
            writer.close()
        copy = url.set(database=str(path))
        _copy_versions(url, copy)
        yield copy
    finally:
        path.unlink(missing_ok=True)
