"""Django's own migration commands, refused: Alembic owns the schema."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.migrations.autodetector import MigrationAutodetector


class RefusedMigrationCommand(BaseCommand):
    """A Django migration command that refuses with one line naming what to run instead."""

    instead: str = "run 'manage.py migrate_schema'"
    requires_system_checks: list[str] = []
    autodetector = MigrationAutodetector  # Django's checks compare migrate's with makemigrations'

    @property
    def help(self) -> str:  # type: ignore[override]
        return f"Disabled: the schema is owned by Alembic; {self.instead}."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("args", nargs="*")

    def handle(self, *args: Any, **options: Any) -> None:
        raise CommandError(f"Django migrations are disabled here: Alembic owns the schema; {self.instead}")
