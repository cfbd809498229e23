"""Model changes and revision files the schema engine's tests make, as a developer would, and take back; roles
that are no superuser, as a managed service gives."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from django.db import models

from calls.models import Call
from schema_engine import scratch
from tests.conftest import HEAD, run_sql

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


def _replace_fields(model: type[models.Model], changes: dict[str, models.Field | None],
                    added: dict[str, models.Field]) -> Iterator[None]:
    """Change ``model``'s fields as an edit of its class would, and put them back after.

    ``changes`` maps a field's name to its new definition (None: removed); ``added`` are new fields.
    """
    opts = model._meta
    before = list(opts.local_fields)
    attributes = {name: model.__dict__[name] for name in [*changes, *added] if name in model.__dict__}
    for name, field in changes.items():
        opts.local_fields.remove(opts.get_field(name))
        opts._expire_cache()
        if field is not None:
            field.contribute_to_class(model, name)
    for name, field in added.items():
        assert name not in {f.name for f in opts.get_fields()}, f"{model.__name__} has a field {name!r} already"
        field.contribute_to_class(model, name)
    opts._expire_cache()
    yield
    opts.local_fields[:] = before
    for name in [*changes, *added]:
        if name in attributes:
            setattr(model, name, attributes[name])
        elif name in model.__dict__:
            delattr(model, name)
    opts._expire_cache()


@pytest.fixture
def operators_change() -> Iterator[None]:
    """Issue 25's example: ``Call.outcome`` renamed ``call_outcome``, ``duration_seconds`` widened to a
    BigIntegerField, ``voice_id`` removed."""
    yield from _replace_fields(
        Call,
        {"outcome": None, "duration_seconds": models.BigIntegerField(null=True, blank=True), "voice_id": None},
        {"call_outcome": models.CharField(max_length=64, null=True, blank=True)})


@pytest.fixture
def outcome_renamed_voice_id_removed() -> Iterator[None]:
    """Issue 25's example without the widening: nothing to fill between expand and contract."""
    yield from _replace_fields(Call, {"outcome": None, "voice_id": None},
                               {"call_outcome": models.CharField(max_length=64, null=True, blank=True)})


@pytest.fixture
def summary_required() -> Iterator[None]:
    """``Call.summary`` made NOT NULL (no default): rows written before may hold NULL."""
    yield from _replace_fields(Call, {"summary": models.TextField()}, {})


@pytest.fixture
def phone_number_renamed() -> Iterator[None]:
    """``Call.phone_number`` (indexed) renamed ``phone``: its index gets the new name too."""
    yield from _replace_fields(Call, {"phone_number": None}, {"phone": models.CharField(max_length=32, db_index=True)})


@pytest.fixture
def phone_number_removed() -> Iterator[None]:
    """``Call.phone_number`` (NOT NULL, no default, indexed) removed."""
    yield from _replace_fields(Call, {"phone_number": None}, {})


@pytest.fixture
def voice_id_unique() -> Iterator[None]:
    """``Call.voice_id`` made unique: rows written before may share a value."""
    yield from _replace_fields(Call, {"voice_id": models.CharField(max_length=64, null=True, blank=True, unique=True)},
                               {})


@pytest.fixture
def unprivileged_roles(pg_db: sa.URL, postgres_admin: sa.Engine) -> Iterator[tuple[sa.URL, sa.URL]]:
    """URLs for two new roles, neither a superuser: the migrator owns the database; the application's only reads.

    Roles belong to the whole server: each is named uniquely and dropped afterwards.
    """
    migrator, application = scratch.unique_name("test_migrator"), scratch.unique_name("test_application")
    quote = postgres_admin.dialect.identifier_preparer.quote
    with postgres_admin.connect() as admin:
        for role in (migrator, application):
            admin.execute(sa.text(f"CREATE ROLE {quote(role)} LOGIN"))
        admin.execute(sa.text(f"ALTER DATABASE {quote(pg_db.database)} OWNER TO {quote(migrator)}"))
    try:
        yield pg_db.set(username=migrator), pg_db.set(username=application)
    finally:
        roles = f"{quote(migrator)}, {quote(application)}"
        run_sql(pg_db, f"REASSIGN OWNED BY {roles} TO CURRENT_USER")
        run_sql(pg_db, f"DROP OWNED BY {roles}")
        with postgres_admin.connect() as admin:
            admin.execute(sa.text(f"DROP ROLE {roles}"))
