"""Refuse Django's ``makemigrations``: Alembic owns the schema."""
from reautomation.management.refusal import RefusedMigrationCommand


class Command(RefusedMigrationCommand):
    instead = "write a revision with 'manage.py migrate_schema revision --autogenerate -m MESSAGE'"
