"""Refuse Django's ``migrate``: Alembic owns the schema."""
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.migrations.autodetector import MigrationAutodetector


class Command(BaseCommand):
    help = "Disabled: the schema is owned by Alembic; use 'manage.py migrate_schema'."
    requires_system_checks: list[str] = []
    autodetector = MigrationAutodetector  # Django's checks compare migrate's with makemigrations'

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs="*")

    def handle(self, *args: Any, **options: Any) -> None:
        raise CommandError("Django migrations are disabled here: Alembic owns the schema; run 'manage.py migrate_schema'")
