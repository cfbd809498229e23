"""Alembic environment for ``manage.py migrate_schema``, the ``alembic`` CLI and the tests.

The database comes from ``config.attributes["connection"]`` when the caller passes one
(``reautomation.schema`` and the tests do), else from the Django settings through
``reautomation.database`` (the ``alembic`` CLI). ``target_metadata`` is derived from the Django
models (``reautomation.metadata``), for ``check`` and ``revision --autogenerate``.
"""
from __future__ import annotations

import logging
import os

import sqlalchemy as sa
from alembic import context
from alembic.util import CommandError

config = context.config
if config.config_file_name is not None and config.cmd_opts is not None:
    # The plain `alembic` CLI: log "Running upgrade ..." lines as alembic.ini says.
    from logging.config import fileConfig

    fileConfig(config.config_file_name, disable_existing_loggers=False)

try:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reautomation.settings")
    django.setup()
except Exception as exc:  # settings errors reach the alembic CLI as one line, not a traceback
    raise CommandError(f"Django settings could not be loaded: {exc}") from exc

from reautomation import database, metadata, migration_guard, permissions, schema  # noqa: E402

# Commands that write to the database take the migration lock; reading ones (current, check) never wait.
WRITING_COMMANDS = {"upgrade", "downgrade", "stamp"}
log = logging.getLogger("alembic.env")


def report_archive(message: str) -> None:
    """Say what a downgrade archived (helpers.archive_*): the plain CLI logs it; migrate_schema passes its own."""
    log.info(message)


def configure_options(dialect_name: str) -> dict:
    """Return the ``context.configure`` options shared by online and offline runs."""
    try:
        target_metadata = metadata.build_metadata(dialect_name) if _needs_metadata() else None
    except metadata.UnsupportedModelField as exc:
        raise CommandError(f"cannot compare with the models: {exc}") from exc
    return {
        "target_metadata": target_metadata,
        "include_object": schema.include_object,
        "compare_type": True,
        "compare_server_default": True,
        "render_as_batch": dialect_name == "sqlite",  # SQLite cannot ALTER most things in place
        "transaction_per_migration": True,
        # SQLite DDL is transactional with database.create_engine(); Alembic assumes not.
        "transactional_ddl": True,
        "on_version_apply": config.attributes.get("on_version_apply"),
        "process_revision_directives": config.attributes.get("process_revision_directives")
        or schema.skip_empty_autogenerate,
        # Read by migrations_alembic.helpers: where a downgrade reports the rows it archived.
        "on_archive": config.attributes.get("on_archive") or report_archive,
    }


def _needs_metadata() -> bool:
    # Building the metadata compiles conditions with Django; only comparisons need it.
    return bool(config.attributes.get("needs_metadata", True))


def run_migrations_offline() -> None:
    url = config.attributes.get("url") or database.sqlalchemy_url()
    url = sa.make_url(url)
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **configure_options(url.get_backend_name()),
    )
    if url.get_backend_name() == "postgresql":
        # Whoever runs this script by hand gets the same guards as migrate_schema. The values were
        # checked to be durations (reautomation/setting_values.py) and are quoted as SQL literals.
        guard = migration_guard.GuardSettings.from_settings()
        quote = sa.String().literal_processor(dialect=url.get_dialect()())
        context.execute(f"SET lock_timeout = {quote(guard.lock_timeout)}")
        context.execute(f"SET statement_timeout = {quote(guard.statement_timeout)}")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if isinstance(connectable, sa.Connection):
        _run(connectable)
        return
    # An Engine passed in (pytest-alembic does), or none: the configured database.
    engine = connectable if isinstance(connectable, sa.Engine) else database.create_engine(database.sqlalchemy_url())
    if config.cmd_opts is not None:  # the alembic CLI names the database it acts on, before it acts
        log.info("Database: %s", database.display_url(engine.url))
    try:
        with engine.connect() as connection:
            _run(connection)
    except sa.exc.OperationalError as exc:
        raise CommandError(schema.unreachable_message(engine.url, exc)) from exc


def _run(connection: sa.Connection) -> None:
    try:
        _run_guarded(connection)
    except schema.SchemaError as exc:
        if config.cmd_opts is not None:  # the alembic CLI: one line, not a traceback
            raise CommandError(str(exc)) from exc
        raise


def _run_guarded(connection: sa.Connection) -> None:
    if not config.attributes.get("skip_recorded_check") and not getattr(config.cmd_opts, "purge", False):
        schema.recorded_revisions(connection)  # one line naming what alembic_version holds, not a traceback
    context.configure(connection=connection, **configure_options(connection.dialect.name))

    def run_once() -> None:
        with context.begin_transaction():
            context.run_migrations()
        if _command() == "upgrade":
            # Django's post-migrate step never runs here: content types and permissions follow the models.
            permissions.sync(connection)
            connection.commit()

    if connection.dialect.name != "postgresql" or _command() not in WRITING_COMMANDS:
        run_once()  # SQLite serialises writers itself (BEGIN IMMEDIATE)
        return
    guard = migration_guard.GuardSettings.from_settings()
    with migration_guard.migration_lock(connection.engine, guard.lock_wait_seconds):
        migration_guard.set_timeouts(connection, guard)
        migration_guard.with_lock_retries(run_once, guard, on_retry=config.attributes.get("on_lock_retry"))


def _command() -> str:
    """Return the Alembic command running: ``upgrade``, ``downgrade``, ``stamp``, ``current``..."""
    if "command" in config.attributes:  # reautomation.schema says so
        return str(config.attributes["command"])
    # The alembic CLI: its parser stores (command function, positional, keyword names) as ``cmd``.
    command_function, _, _ = getattr(config.cmd_opts, "cmd", (None, None, None))
    return getattr(command_function, "__name__", "")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
