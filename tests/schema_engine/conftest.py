"""Model changes the schema engine's tests make, as a developer would, and take back."""
from __future__ import annotations

from typing import Iterator

import pytest
from django.db import models

from calls.models import Call


def _added_to_calls(name: str, field: models.Field) -> Iterator[models.Field]:
    field.contribute_to_class(Call, name)
    yield field
    Call._meta.local_fields.remove(field)
    Call._meta._expire_cache()


@pytest.fixture
def priority_field() -> Iterator[models.Field]:
    """The guide's example model change: ``Call.priority``, NOT NULL, server default 0, indexed."""
    yield from _added_to_calls("priority", models.IntegerField(db_default=0, db_index=True))


@pytest.fixture
def region_field() -> Iterator[models.Field]:
    """A NOT NULL column without a default: existing rows have no value for it."""
    yield from _added_to_calls("region", models.CharField(max_length=8))
