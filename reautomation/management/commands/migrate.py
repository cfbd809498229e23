"""Refuse Django's ``migrate``: Alembic owns the schema."""
from reautomation.management.refusal import RefusedMigrationCommand


class Command(RefusedMigrationCommand):
    instead = "run 'manage.py migrate_schema'"
