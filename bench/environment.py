"""What every benchmark script does first: the project importable, Django set up, and the PostgreSQL server it uses.

A script imports this module first (a script's own folder is on ``sys.path``), which puts the
project on ``sys.path``, then calls ``set_up()`` before it imports Django's models or the apps:
hence ruff's E402 for ``bench/*``. The server is the tests' one, ``TEST_POSTGRES_URL``, by
default this machine's; each benchmark makes and drops its own databases on it.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import django
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from schema_engine import scratch  # noqa: E402 (needs ROOT on sys.path; knows nothing of Django)

# libpq form (no driver): psycopg and the manage.py subprocesses take it as it is.
SERVER = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres").replace("+psycopg", "")


def set_up(*, server: str = SERVER, database: str = "postgres", **environ: str) -> None:
    """Set Django up on ``database`` of ``server``, with the variables ``environ`` set too.

    Django's default database matters only to a script that measures through Django's own
    connection; the others name each database they use.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reautomation.settings")
    os.environ.setdefault("SECRET_KEY", "benchmark-only")
    os.environ["DATABASE_URL"] = database_url(database, server=server)
    os.environ.update(environ)
    django.setup()


def database_url(name: str, *, server: str = SERVER) -> str:
    """libpq URL of database ``name`` on ``server`` (for psycopg and the manage.py subprocesses)."""
    return server.rsplit("/", 1)[0] + f"/{name}"


def sqlalchemy_url(url: str) -> sa.URL:
    """``url`` (libpq form) for SQLAlchemy, through psycopg 3."""
    return sa.make_url(url).set(drivername="postgresql+psycopg")


@functools.cache
def admin_engine(server: str = SERVER) -> sa.Engine:
    """The autocommit engine that creates and drops the benchmarks' databases on ``server``."""
    return scratch.admin_engine(sqlalchemy_url(server))


def fresh_database(name: str, *, template: str | None = None, file_copy: bool = False) -> str:
    """(Re)create database ``name`` on the server, empty or a copy of ``template``; return its libpq URL.

    ``file_copy``: copy the template's files after a checkpoint rather than through the WAL (a large
    copy then floods no measurement that follows with its WAL).
    """
    scratch.drop_database(admin_engine(), name)
    scratch.create_database(admin_engine(), name, template=template, file_copy=file_copy)
    return database_url(name)


def drop_database(name: str) -> None:
    """Drop database ``name`` on the server if it exists, closing whatever is still connected."""
    scratch.drop_database(admin_engine(), name)


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows the script's whole docstring: what it measures, and how to run it."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_server_url_argument(parser: argparse.ArgumentParser) -> None:
    """``--server-url``: the server's maintenance database, for the scripts that take one."""
    parser.add_argument("--server-url", default=sqlalchemy_url(SERVER).render_as_string(hide_password=False),
                        help="the PostgreSQL server's maintenance database (default: TEST_POSTGRES_URL, else this "
                             "machine's)")


def add_template_arguments(parser: argparse.ArgumentParser) -> None:
    """``--keep-template`` and ``--reuse``: keep the seeded database for a rerun, and skip the seeding in one."""
    parser.add_argument("--reuse", action="store_true", help="reuse the seeded database a --keep-template run kept")
    parser.add_argument("--keep-template", action="store_true", help="keep the seeded database for a --reuse run")
