"""Model changes and revision files the schema engine's tests make, as a developer would, and take back."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from django.db import models

from calls.models import Call
from tests.conftest import HEAD

ADD_COLUMN = '''"""Add calls.{column} (nullable), {why}."""
import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("{column}", sa.String(8), nullable=True))


def downgrade() -> None:
    op.drop_column("calls", "{column}")
'''


def add_column_revision(migrations: Path, *, revision: str, column: str, why: str, down: str = HEAD) -> None:
    """Write revision ``revision`` into ``migrations``: add ``calls.column`` (nullable) on ``down`` (today's head)."""
    (migrations / "versions" / f"{revision}.py").write_text(
        ADD_COLUMN.format(revision=revision, column=column, why=why, down=down))


def _added_to_calls(name: str, field: models.Field) -> Iterator[models.Field]:
    # The names are test-only ("scratch_"), so an operator who adds the guide's real ``priority`` to
    # calls/models.py does not break these tests; a name that is taken anyway says so, not a confusing diff.
    assert name not in {f.name for f in Call._meta.get_fields()}, f"Call has a field {name!r}: rename the test's"
    field.contribute_to_class(Call, name)
    yield field
    Call._meta.local_fields.remove(field)
    Call._meta._expire_cache()


@pytest.fixture
def priority_field() -> Iterator[models.Field]:
    """The guide's example model change (its ``Call.priority``): NOT NULL, server default 0, indexed."""
    yield from _added_to_calls("scratch_priority", models.IntegerField(db_default=0, db_index=True))


@pytest.fixture
def region_field() -> Iterator[models.Field]:
    """A NOT NULL column without a default: existing rows have no value for it."""
    yield from _added_to_calls("scratch_region", models.CharField(max_length=8))
