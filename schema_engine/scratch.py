"""Scratch PostgreSQL databases: made empty (or copied from a template), dropped with whatever is still connected.

The tests make one per test, the benchmarks one per measurement.
"""
from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

import sqlalchemy as sa


def admin_engine(server_url: sa.URL | str) -> sa.Engine:
    """Return an autocommit engine on a server's maintenance database (CREATE/DROP DATABASE need no transaction)."""
    return sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def create_database(admin: sa.Engine, name: str, *, template: str | None = None, file_copy: bool = False) -> sa.URL:
    """Create database ``name`` on ``admin``'s server, empty or a copy of ``template``; return its URL.

    ``file_copy``: copy the template's files after a checkpoint (PostgreSQL 15's FILE_COPY strategy)
    rather than through the WAL, so the copy starts as a restored backup would.
    """
    quote = admin.dialect.identifier_preparer.quote
    copy = f" TEMPLATE {quote(template)}" if template else ""
    strategy = " STRATEGY = FILE_COPY" if file_copy else ""
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quote(name)}{copy}{strategy}"))
    return admin.url.set(database=name)


def drop_database(admin: sa.Engine, url_or_name: sa.URL | str) -> None:
    """Drop a database (by URL or name), closing whatever is still connected to it."""
    name = url_or_name.database if isinstance(url_or_name, sa.URL) else url_or_name
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {admin.dialect.identifier_preparer.quote(name)} WITH (FORCE)"))


@contextlib.contextmanager
def scratch_database(admin: sa.Engine, prefix: str = "scratch", *, template: str | None = None,
                     file_copy: bool = False) -> Iterator[sa.URL]:
    """Yield the URL of a new database (empty, or a copy of ``template``), dropped afterwards."""
    url = create_database(admin, unique_name(prefix), template=template, file_copy=file_copy)
    try:
        yield url
    finally:
        drop_database(admin, url)
