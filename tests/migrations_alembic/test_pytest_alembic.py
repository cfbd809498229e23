"""pytest-alembic's built-in checks, and its experimental ones, on PostgreSQL and SQLite.

single head (a diverged history breaks deploys lazily), upgrade base->head one revision at a
time, models match the migrated DDL, and every revision's downgrade runs after its upgrade;
experimental: each downgrade leaves no trace of its upgrade, and every model reaches env.py's
metadata. env.py runs on the engine or connection pytest-alembic passes, never on another
database; inside pytest-alembic's transaction (rolled back after each step) indexes are built
without CONCURRENTLY, which cannot run in one (migrations_alembic/helpers.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from django.apps import apps
from pytest_alembic import Config
from pytest_alembic.tests import (  # noqa: F401 - collected as tests here
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from pytest_alembic.tests.experimental import test_downgrade_leaves_no_trace  # noqa: F401 - collected here
from pytest_alembic.tests.experimental.all_models_register_on_metadata import (
    get_bare_import_tableset,
    traverse_modules,
    url_to_string,
)

from schema_engine import config, database, metadata
from tests import settings as test_settings
from tests.conftest import ROOT


@pytest.fixture
def alembic_config() -> Config:
    return Config.from_raw_config(config.alembic_config())


@pytest.fixture
def alembic_engine(empty_db: sa.URL) -> sa.Engine:
    return database.create_engine(empty_db)


def test_all_models_register_on_metadata(alembic_engine: sa.Engine) -> None:
    """pytest-alembic's experimental check, for a metadata derived from Django's app registry.

    A model in a module that nothing imports is missing from env.py's metadata, and autogenerate
    would drop its table. The tables env.py compares with (read by pytest-alembic in a fresh
    interpreter) must be those the registry holds once every module of the project's apps is
    imported. pytest-alembic's own version looks for a MetaData in the models' package; here it is
    built from the registry (schema_engine.metadata), so the apps are named instead.
    """
    _, bare = get_bare_import_tableset(url_to_string(alembic_engine.url))
    for app in apps.get_app_configs():
        if Path(app.path).is_relative_to(ROOT):
            list(traverse_modules(app.name))
    assert bare == set(metadata.build_metadata(alembic_engine.dialect.name).tables)


def test_a_stray_connection_of_the_tests_reaches_no_database(postgres_admin: sa.Engine) -> None:
    """Without DATABASE_URL the test settings name a database that is never created (tests/settings.py).

    A connection that misses its test's own database fails loudly, instead of migrating the server's
    ``postgres`` maintenance database (as env.py once did with pytest-alembic's wrapped connection).
    """
    with postgres_admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                              {"name": test_settings.NO_DATABASE}).first()
    assert exists is None
    assert sa.make_url(test_settings.DEFAULT_DATABASE_URL).database == test_settings.NO_DATABASE
