"""The guide's entry point: ``python -m migrations_alembic.data_migrations.backfill_context_fields [options]``.

Runs ``manage.py backfill_context --only calls`` (same code, same options).
"""
from migrations_alembic.data_migrations import run_backfill

if __name__ == "__main__":
    run_backfill("calls")
