"""Fixtures for the migration tests: the revision chain, and schema snapshots to compare."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from reautomation import schema

# The guide's chain, in order: (revision id, file name).
CHAIN = [
    ("000_django_framework", "000_add_django_framework_tables.py"),
    ("26a6cb1543c8", "26a6cb1543c8_add_base_tables.py"),
    ("001_langsmith_monitoring", "001_add_langsmith_monitoring_tables.py"),
    ("002_voice_agent_integration", "002_add_voice_agent_integration_fields.py"),
    ("003_context_management", "003_add_context_management_fields.py"),
    ("004_performance_indexes", "004_add_performance_indexes.py"),
    ("005_backfill_runs", "005_add_backfill_runs.py"),
]
REVISIONS = [rev for rev, _ in CHAIN]


def previous(revision: str) -> str:
    """Return the revision before ``revision`` in the chain, or ``base``."""
    index = REVISIONS.index(revision)
    return REVISIONS[index - 1] if index else "base"


def snapshot(url: sa.URL) -> dict[str, dict[str, object]]:
    """Return every table's columns (name, type, nullability), indexes and unique constraints.

    Archive tables are data a downgrade kept (``archives`` lists them), not schema.
    """
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        inspector = sa.inspect(engine)
        result = {}
        for table in sorted(inspector.get_table_names()):
            if table == "alembic_version" or table.startswith(schema.ARCHIVE_TABLE_PREFIX):
                continue
            result[table] = {
                "columns": sorted((c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)),
                "indexes": sorted(i["name"] for i in inspector.get_indexes(table)),
                "uniques": sorted(u["name"] or "" for u in inspector.get_unique_constraints(table)),
            }
        return result
    finally:
        engine.dispose()


def archives(url: sa.URL) -> set[str]:
    """Return the archive tables in the database: rows and values that downgrades kept."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return {t for t in sa.inspect(engine).get_table_names() if t.startswith(schema.ARCHIVE_TABLE_PREFIX)}
    finally:
        engine.dispose()


@pytest.fixture
def scratch_migrations(tmp_path: Path, settings: object) -> Iterator[Path]:
    """A copy of migrations_alembic that tests may add revisions to; the settings point at it."""
    source = Path(schema.__file__).resolve().parent.parent / "migrations_alembic"
    target = tmp_path / "migrations_copy"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    settings.ALEMBIC_SCRIPT_LOCATION = str(target)
    yield target
