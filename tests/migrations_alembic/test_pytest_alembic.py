"""pytest-alembic's built-in checks, on PostgreSQL and SQLite.

single head (a diverged history breaks deploys lazily), upgrade base->head one revision at a
time, models match the migrated DDL, and every revision's downgrade runs after its upgrade.
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from pytest_alembic import Config
from pytest_alembic.tests import (  # noqa: F401 - collected as tests here
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)

from schema_engine import config, database


@pytest.fixture
def alembic_config() -> Config:
    return Config.from_raw_config(config.alembic_config())


@pytest.fixture
def alembic_engine(empty_db: sa.URL) -> sa.Engine:
    return database.create_engine(empty_db)
