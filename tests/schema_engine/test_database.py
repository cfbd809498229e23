"""``schema_engine/database.py``: the one database URL and engine, and the one place that hides passwords."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from schema_engine import database, errors


@pytest.mark.parametrize("url", [
    "postgresql://ops:hunter2@db:5432/reautomation",
    "postgresql://ops@db:5432/reautomation?sslmode=require&password=hunter2",
    "postgresql://ops:hun@ter2@db:5432/reautomation",
])
def test_redact_hides_every_spelling_of_a_password(url: str) -> None:
    shown = database.redact(f"cannot use {url} now")
    assert "hunter2" not in shown and "ter2" not in shown and "***" in shown
    assert shown.startswith("cannot use postgresql://ops") and shown.endswith(" now")


@pytest.mark.parametrize("url", [
    "postgresql://ops@127.0.0.1:5432/reautomation?password=hunter2",
    "postgresql://ops:hun@ter2@127.0.0.1:5432/reautomation",
])
def test_a_password_in_the_query_or_with_an_at_sign_is_a_password(url: str) -> None:
    config = database.database_config(url, sqlite_path=Path("unused"))
    assert config["PASSWORD"] in ("hunter2", "hun@ter2") and "password" not in (config.get("OPTIONS") or {})
    bare, env = database.libpq_connection(database.sqlalchemy_url(config))
    assert "hunter2" not in bare and "ter2" not in bare and env["PGPASSWORD"] in ("hunter2", "hun@ter2")
    assert "ter2" not in database.display_url(database.sqlalchemy_url(config))


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql://ops:hunter2@127.0.0.1:notaport/reautomation", "is malformed"),
    ("mysql://ops:hunter2@127.0.0.1/reautomation", "not a postgresql:// or sqlite:/// URL"),
    ("postgresql://ops:hunter2@127.0.0.1:5432/", "names no database"),
])
def test_a_bad_url_is_refused_without_its_password(url: str, message: str) -> None:
    with pytest.raises(errors.InvalidDatabaseURL, match=message) as caught:
        database.database_config(url, sqlite_path=Path("unused"))
    assert "hunter2" not in str(caught.value)


def test_without_a_url_the_embedded_file_only_when_allowed(tmp_path: Path) -> None:
    assert database.database_config("", sqlite_path=tmp_path / "db.sqlite3")["NAME"] == str(tmp_path / "db.sqlite3")
    with pytest.raises(errors.InvalidDatabaseURL, match="DATABASE_URL is not set"):
        database.database_config("", sqlite_path=tmp_path / "db.sqlite3", embedded_allowed=False)


def test_a_new_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite3"
    engine = database.create_engine(sa.URL.create("sqlite", database=str(path)))
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TABLE t (x integer)"))
    engine.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_dead_database_is_one_line_without_its_password() -> None:
    url = sa.make_url("postgresql+psycopg://ops:hunter2@127.0.0.1:1/reautomation")
    with pytest.raises(errors.DatabaseUnreachable) as caught, database.connect(url):
        pass
    assert str(caught.value).startswith("cannot connect to the database postgresql+psycopg://ops:***@127.0.0.1:1/")
    assert "hunter2" not in str(caught.value) and "\n" not in str(caught.value)
