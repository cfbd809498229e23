"""Fixtures for the calls app's tests: a PostgreSQL database at head with sample data."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from calls.sample_data import generate_sample_data
from schema_engine import database


@pytest.fixture
def seeded(pg_head_db: sa.URL, request: pytest.FixtureRequest) -> sa.URL:
    """A PostgreSQL database at head with sample data; ``@pytest.mark.sample_calls(N)`` sets how many calls."""
    marker = request.node.get_closest_marker("sample_calls")
    with database.connect(pg_head_db) as conn:
        generate_sample_data(connection=conn, calls=marker.args[0] if marker else 12, seed=5)
    return pg_head_db
