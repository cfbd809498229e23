"""Alembic environment for ``manage.py migrate_schema``, the ``alembic`` CLI and the tests.

What to do comes as one ``EnvOptions`` (``schema_engine/config.py``): the caller's connection and
command from ``migrate_schema`` and the tests, the defaults of its command for the plain CLI, which
connects to the configured database (``schema_engine.database``); a connection or engine passed in
(pytest-alembic's) is the only database used then. Both spellings get the same checks, in this
order: what ``alembic_version`` records; for an upgrade, the backfill gate, a contract while the
release before its expand is connected (``versioning.py``), the applied revisions'
checksums and the pending revisions' data checks (``commands.refuse_unsafe_upgrade``); for a
downgrade, the checksums (a changed downgrade must not run); then on PostgreSQL the migration lock
and the timeouts (writing commands). Each revision applied records its checksums, in its own
transaction. ``target_metadata`` is derived from the Django models (``schema_engine.metadata``),
for ``check`` and ``revision --autogenerate``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from logging.config import fileConfig
from typing import Any, Callable, Iterable, Iterator

import django
import sqlalchemy as sa
from alembic import context
from alembic.util import CommandError

config = context.config
if config.config_file_name is not None and config.cmd_opts is not None:
    # The plain `alembic` CLI: log "Running upgrade ..." lines as alembic.ini says.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reautomation.settings")
try:
    django.setup()
except Exception as exc:  # settings errors reach the alembic CLI as one line, not a traceback
    raise CommandError(f"Django settings could not be loaded: {exc}") from exc

from schema_engine import (  # noqa: E402  (after django.setup())
    checksums,
    database,
    gate,
    guard,
    metadata,
    permissions,
    prechecks,
    versioning,
)
from schema_engine.commands import (  # noqa: E402
    ArchiveNote,
    RevisionApplied,
    RevisionStarted,
    refuse_unsafe_upgrade,
)
from schema_engine.config import EnvOptions, include_object, process_revision_directives  # noqa: E402
from schema_engine.errors import SchemaError, UnsupportedModelField  # noqa: E402
from schema_engine.progress import Event  # noqa: E402
from schema_engine.state import pending_scripts, recorded_revisions, summary  # noqa: E402

options = EnvOptions.of(config)
log = logging.getLogger("alembic.env")
# The plain CLI's levels; INFO for the rest. Alembic's own "Running upgrade ..." already says a revision started.
LOG_LEVELS: dict[type[Event], int] = {RevisionStarted: logging.DEBUG, guard.LockRetry: logging.WARNING}


def log_event(event: Event) -> None:
    """The plain CLI's reporter: each event's line (as ``migrate_schema`` prints it) through the log."""
    log.log(LOG_LEVELS.get(type(event), logging.INFO), event.describe())


# Whom to tell what happens: the caller's reporter (migrate_schema's, a test's), or the log.
reporter = options.reporter or log_event


def configure_options(dialect_name: str) -> dict:
    """Return the ``context.configure`` options shared by online and offline runs."""
    try:
        # Building the metadata compiles conditions with Django; only comparisons need it.
        target_metadata = metadata.build_metadata(dialect_name) if options.needs_metadata else None
    except UnsupportedModelField as exc:
        raise CommandError(f"cannot compare with the models: {exc}") from exc
    return {
        "target_metadata": target_metadata,
        "include_object": lambda *compared: include_object(*compared, leave_out=options.in_flight),
        "compare_type": True,
        "compare_server_default": True,
        "render_as_batch": dialect_name == "sqlite",  # SQLite cannot ALTER most things in place
        "transaction_per_migration": True,
        # SQLite DDL is transactional with database.create_engine(); Alembic assumes not.
        "transactional_ddl": True,
        "process_revision_directives": process_revision_directives,
        # Read by migrations_alembic.helpers (which may not import the engine): where a revision
        # says what it archived or restored.
        "on_archive": lambda message: reporter(ArchiveNote(message=message)),
    }


def run_migrations_offline() -> None:
    with one_line_for_the_cli():
        url = database.resolve_url(options.url)
    # A merge revision's range starts at all its parents (a FROM:TO range names one): Alembic's starting_rev.
    starting = {"starting_rev": options.starting_revisions} if options.starting_revisions else {}
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"},
                      **configure_options(url.get_backend_name()), **starting)
    if url.get_backend_name() == "postgresql" and options.render_guards:
        # Whoever runs this script by hand gets the same guards as migrate_schema. The values were
        # checked to be durations (reautomation/setting_values.py) and are quoted as SQL literals.
        settings = guard.GuardSettings.from_settings()
        quote = sa.String().literal_processor(dialect=url.get_dialect()())
        context.execute(f"SET lock_timeout = {quote(settings.lock_timeout)}")
        context.execute(f"SET statement_timeout = {quote(settings.statement_timeout)}")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = options.connection
    if isinstance(connectable, sa.Connection):
        _run_reporting(connectable)
        return
    # An Engine passed in (pytest-alembic's), or its open connection wrapped to look like one (its
    # downgrade test connect()s it): that database and no other. None: the configured database.
    given = connectable is not None
    with one_line_for_the_cli():
        engine = connectable if given else database.create_engine(database.resolve_url())
    if config.cmd_opts is not None:  # the alembic CLI names the database it acts on, before it acts
        log.info("Database: %s", database.display_url(engine.url))
    try:
        with engine.connect() as connection:
            _run_reporting(connection)
    except sa.exc.OperationalError as exc:
        raise CommandError(database.unreachable_message(engine.url, exc)) from exc


@contextlib.contextmanager
def one_line_for_the_cli() -> Iterator[None]:
    """The alembic CLI prints a CommandError as one line; ``migrate_schema`` wants the typed error itself."""
    try:
        yield
    except SchemaError as exc:
        if config.cmd_opts is not None:
            raise CommandError(str(exc)) from exc
        raise


def _run_reporting(connection: sa.Connection) -> None:
    with one_line_for_the_cli():
        _run(connection)


def record_checksums(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
    """In the revision's own transaction: its checksums are recorded if and only if it applied."""
    if step.is_upgrade:
        checksums.record(ctx.connection, step.up_revision)  # rendered before the run (refuse_unsafe_upgrade)
    else:
        checksums.forget(ctx.connection, step.up_revision_id)


class RevisionClock:
    """Tell the reporter of each revision as Alembic starts it and as it commits it, with how long it took."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def steps(self, steps: Callable[..., Iterable[Any]]) -> Callable[..., Iterator[Any]]:
        """Wrap the command's steps: Alembic asks for each one just before running it."""
        def reported(heads: Any, migration_context: Any) -> Iterator[Any]:
            for step in steps(heads, migration_context):
                reporter(RevisionStarted(revision=step.revision.revision, is_upgrade=step.is_upgrade,
                                         doc=summary(step.revision)))
                self.started = time.perf_counter()
                yield step

        return reported

    def applied(self, *, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        """Alembic's ``on_version_apply``: the revision's transaction is about to commit."""
        # For a downgrade step too, ``up_revision`` is the revision being applied or undone.
        reporter(RevisionApplied(revision=step.up_revision_id, is_upgrade=step.is_upgrade,
                                 seconds=time.perf_counter() - self.started, doc=summary(step.up_revision)))


def checks_before(steps: Callable[..., Iterable[Any]], deferred: frozenset[str],
                  connection: sa.Connection) -> Callable[..., Iterator[Any]]:
    """Wrap the command's steps: a revision whose data checks had to wait gets them run just before it.

    Alembic asks for each step after committing the one before, so these checks read what it added.
    """
    def checked(heads: Any, migration_context: Any) -> Iterator[Any]:
        for step in steps(heads, migration_context):
            if step.is_upgrade and step.revision.revision in deferred:
                prechecks.refuse_unfit_now(connection, step.revision)
            yield step

    return checked


def _run(connection: sa.Connection) -> None:
    # A connection lent inside its caller's transaction (pytest-alembic's downgrade test rolls each
    # step back) is never committed here, as reading the recorded revisions would: Alembic reads them.
    lent = options.lent and connection.in_transaction()
    if options.writes and connection.dialect.name == "postgresql":
        # Before anything reads: through a transaction pooler, refused in one line (not a prepared-statement clash).
        database.require_session(connection.engine.url)
    current = () if options.skip_recorded_check or lent else recorded_revisions(connection)
    deferred: frozenset[str] = frozenset()
    if options.command == "upgrade":
        pending = pending_scripts(context.script, current, context.get_revision_argument())
        # Before any lock: a revision that needs an unfinished backfill, a changed applied revision,
        # or a revision whose data is not fit is refused, not started.
        gate.refuse_blocked(pending, url=connection.engine.url)
        # A contract drops the old shape: not while a release that reads it is connected.
        versioning.refuse_contract_while_old_release(connection, pending, context.script)
        if not options.guarded:  # migrate_schema, one revision at a time, ran these for all of them
            deferred = refuse_unsafe_upgrade(connection, pending)
    elif options.command == "downgrade":
        checksums.refuse_changed(connection)  # a changed downgrade() is not what was reviewed with its upgrade
    if not lent and connection.in_transaction():
        # What the checks read ends here: Alembic takes a connection already in a transaction for its
        # caller's, and would then run each revision in it (no autocommit block, no commit per revision).
        connection.commit()
    configured = {"connection": connection, **configure_options(connection.dialect.name)}
    clock = RevisionClock()
    moves = options.command in ("upgrade", "downgrade")
    if moves:
        configured["on_version_apply"] = [record_checksums, clock.applied]
    if lent:
        configured["in_callers_transaction"] = True  # read by helpers.build_index/drop_index: no CONCURRENTLY
    context.configure(**configured)
    if moves:
        # The command's own steps (alembic.command's work function): each reported as it starts,
        # after its deferred data checks, if any, passed.
        steps = context.get_context().opts["fn"]
        if deferred:
            steps = checks_before(steps, deferred, connection)
        context.configure(**configured, fn=clock.steps(steps))
    if lent:
        # That transaction cannot be left (CONCURRENTLY cannot run in it, and its caller rolls it
        # back): an autocommit block runs inside it. Never so for migrate_schema or the alembic CLI.
        context.get_context().autocommit_block = contextlib.nullcontext  # type: ignore[method-assign]

    def run_once() -> None:
        with context.begin_transaction():
            context.run_migrations()
        if options.command == "upgrade":
            checksums.record_missing(connection)  # applied before checksums existed (committed)
            # Django's post-migrate step never runs here: content types and permissions follow the models.
            permissions.sync(connection)
            connection.commit()

    if connection.dialect.name != "postgresql" or not options.writes:
        run_once()  # SQLite serialises writers itself (BEGIN IMMEDIATE)
        return
    settings = guard.GuardSettings.from_settings()
    with guard.migration_lock(connection.engine, settings.lock_wait_seconds):
        guard.set_timeouts(connection, settings)
        pid = connection.connection.driver_connection.info.backend_pid
        guard.with_lock_retries(run_once, settings, reporter=reporter,
                                watch=lambda: guard.BlockerWatch(connection.engine, pid))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
