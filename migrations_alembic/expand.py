"""The four phases of an expand/contract pair, as revisions call them: expand, undo_expand, contract, undo_contract.

An expand revision E (the guide's phases 1-2) makes the new shape exist beside the old one::

    from migrations_alembic.expand import ChangeType, DropColumn, RenameColumn, expand, undo_expand

    expand_steps = [RenameColumn("calls", "outcome", "call_outcome"),
                    ChangeType("calls", "duration_seconds", sa.BigInteger(),
                               up="duration_seconds::bigint", down="duration_seconds::integer"),
                    DropColumn("calls", "voice_id")]

    def upgrade() -> None:
        expand(revision, expand_steps)

    def downgrade() -> None:
        undo_expand(revision, expand_steps)

Its contract revision (phases 4-6) names it (``contracts = "<E>"``), carries its own copy of the
steps (revisions never import each other) and, when a step changes a type, waits for its fill
(``requires_backfills = (fill_name("<E>"),)``); it calls ``contract(contracts, expand_steps)`` and
``undo_contract(contracts, expand_steps)``.

On PostgreSQL, expand publishes the version schema ``v_<E>`` and keeps old and new columns in
step (``schema_engine/versioning/``): undone, it drops only what it added, so nothing either
release wrote is lost. Contract archives the old columns' values, then drops them; undone, it
puts them back from the archive. On SQLite (the embedded default) there are no versioned
schemas: expand applies the whole change at once (a batch table rebuild), contract does nothing.
"""
from __future__ import annotations

from typing import Iterable

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.sqlite import base as sqlite_base

from migrations_alembic.helpers import archive_columns, restore_columns
from schema_engine import versioning
from schema_engine.errors import InvalidExpandStep
from schema_engine.versioning import ChangeType, DropColumn, RenameColumn, Step, fill_name

__all__ = ["ChangeType", "DropColumn", "RenameColumn", "contract", "expand", "fill_name", "undo_contract",
           "undo_expand"]


def _run(*statements: str | None) -> None:
    for statement in statements:
        if statement is not None:
            # Colons escaped: the SQL holds no bind parameters, only casts and PL/pgSQL assignments.
            op.execute(sa.text(statement.replace(":", r"\:")))


def _on_postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _note(message: str) -> None:
    """Tell the operator what a phase did to data (env.py's ``on_archive``: printed or logged)."""
    report = op.get_context().opts.get("on_archive")
    if report is not None:
        report(message)


def expand(revision: str, steps: Iterable[Step]) -> None:
    """Make expand ``revision``'s new shape exist beside the old one (the revision's ``upgrade``)."""
    steps = versioning.check_steps(revision, steps)
    if not _on_postgresql():
        _apply_on_sqlite(revision, steps)
        return
    _run(versioning.CREATE_VERSIONS_SQL, versioning.refuse_unfit_sql(revision, steps),
         versioning.record_sql(revision, steps), versioning.record_facts_sql(revision, steps))
    for step in steps:
        if isinstance(step, ChangeType):
            _run(versioning.add_column_sql(revision, step))
        elif isinstance(step, DropColumn):
            _run(versioning.allow_null_sql(revision, step))
    for table in versioning.changed_tables(steps):
        function = versioning.sync_function_sql(revision, table, steps)
        if function is not None:
            _run(function, *versioning.sync_trigger_sql(revision, table))
    publish(revision, steps)


def publish(revision: str, steps: Iterable[Step]) -> None:
    """Create the version schema ``v_<revision>``: a view per changed table, in the new shape, with its grants."""
    _run(versioning.create_schema_sql(versioning.version_schema(revision)))
    for table in versioning.changed_tables(steps):
        _run(versioning.version_view_sql(revision, table, steps))


def undo_expand(revision: str, steps: Iterable[Step]) -> None:
    """Drop what expand ``revision`` added (the revision's ``downgrade``): instant, losing nothing either release wrote.

    The new columns' values are the old ones converted (the trigger kept them in step). A NOT
    NULL that expand let go for a removed column comes back unless the new release left rows without it.
    """
    steps = versioning.check_steps(revision, steps)
    if not _on_postgresql():
        _undo_on_sqlite(revision, steps)
        return
    tables = versioning.changed_tables(steps)
    _run(*versioning.drop_version_sql(revision, tables))
    for table in tables:
        _run(*versioning.drop_sync_sql(revision, table))
    for step in steps:
        if isinstance(step, ChangeType):
            _run(versioning.drop_new_column_sql(revision, step))
    drops = [step for step in steps if isinstance(step, DropColumn)]
    if drops:
        # Committed first: whether the new release left a row without the column is a scan, not to
        # be made while this transaction holds the table's exclusive lock.
        with op.get_context().autocommit_block():
            for step in drops:
                _report_left_nullable(revision, step)
                allowed = versioning.null_allowed_by_expand(revision, step.table, step.column)
                _run(versioning.add_not_null_check_sql(
                    step.table, step.column,
                    when=f"{allowed} AND {versioning.none_null_sql(step.table, step.column)}"),
                     versioning.validate_not_null_sql(step.table, step.column))
    _run(versioning.forget_sql(revision))


def _report_left_nullable(revision: str, step: DropColumn) -> None:
    if op.get_context().as_sql:
        return
    bind = op.get_bind()
    allowed = bind.execute(sa.text(
        f"SELECT {versioning.null_allowed_by_expand(revision, step.table, step.column)}")).scalar()
    if allowed:
        missing = bind.execute(sa.text(versioning.null_rows_sql(step.table, step.column))).scalar()
        if missing:
            _note(f"{step.table}.{step.column} stays nullable: the new release wrote {missing:,} row(s) without it; "
                  "fill them, then make it NOT NULL with helpers.set_not_null")


def contract(revision: str, steps: Iterable[Step]) -> None:
    """Remove expand ``revision``'s old shape (its contract revision's ``upgrade``).

    First the NOT NULL of a type-changed column carried over to its new copy (CHECK NOT VALID,
    commit, VALIDATE: writes go on); then, in one transaction, the old columns' values archived,
    the other versions' views of the tables dropped, the sync triggers dropped, the old columns
    dropped and the new ones renamed to their names. ``v_<revision>`` stays: it now equals the tables.
    """
    steps = versioning.check_steps(revision, steps)
    if not _on_postgresql():
        return  # SQLite: expand applied the whole change
    contract_revision = _contract_revision(revision)
    changes = [step for step in steps if isinstance(step, ChangeType)]
    for step in changes:
        new = versioning.physical_name(revision, step.column)
        _run(versioning.add_not_null_check_sql(
            step.table, new, when=f"{versioning.was_not_null(revision, step.table, step.column)} "
                                  f"AND {versioning.has_column_sql(step.table, new)}"))
    if changes:
        with op.get_context().autocommit_block():
            for step in changes:
                _run(versioning.validate_not_null_sql(step.table, versioning.physical_name(revision, step.column)))
    for table in versioning.changed_tables(steps):
        archive = versioning.archive_sql(contract_revision, table, steps)
        if archive is not None:
            _run(archive)
            _report_archived(contract_revision, table)
        _run(versioning.drop_older_views_sql(revision, table), *versioning.drop_sync_sql(revision, table),
             versioning.contract_table_sql(revision, table, steps))
    _run(versioning.contracted_sql(revision, True))


def _report_archived(contract_revision: str, table: str) -> None:
    if op.get_context().as_sql:
        return
    archive = versioning.archive_name(contract_revision, table)
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT to_regclass(:name)"), {"name": f'"{archive}"'}).scalar() is not None:
        kept = bind.execute(sa.text(f'SELECT count(*) FROM {versioning.SCHEMA}."{archive}"')).scalar()
        _note(f"archived {kept:,} row(s) of {table} in {archive}; the downgrade puts them back")


def undo_contract(revision: str, steps: Iterable[Step]) -> None:
    """Put expand ``revision``'s old shape back, as expand left it (its contract revision's ``downgrade``).

    The old columns return with their archived values (and, for rows written since the contract,
    the new values converted down); the sync triggers and the other versions' views come back;
    an old column's NOT NULL is restored as ``helpers.set_not_null`` does it.
    """
    steps = versioning.check_steps(revision, steps)
    if not _on_postgresql():
        return
    contract_revision = _contract_revision(revision)
    for table in versioning.changed_tables(steps):
        _run(versioning.uncontract_table_sql(revision, contract_revision, table, steps))
        function = versioning.sync_function_sql(revision, table, steps)
        if function is not None:
            _run(function, *versioning.sync_trigger_sql(revision, table))
        hidden = [versioning.physical_name(revision, step.column) for step in steps
                  if step.table == table and isinstance(step, ChangeType)]
        _run(versioning.restore_older_views_sql(revision, table, hidden))
    removed = [step for step in steps if isinstance(step, (ChangeType, DropColumn))]
    for step in removed:
        was = versioning.was_not_null(revision, step.table, step.column)
        if isinstance(step, DropColumn):  # a NOT NULL expand let go stays let go, as expand left it
            was = f"{was} AND NOT ({versioning.null_allowed_by_expand(revision, step.table, step.column)})"
        _run(versioning.add_not_null_check_sql(step.table, step.column, when=was))
    _run(versioning.contracted_sql(revision, False))
    if removed:
        with op.get_context().autocommit_block():
            for step in removed:
                _run(versioning.validate_not_null_sql(step.table, step.column))


def _contract_revision(revision: str) -> str:
    """Return the id of the contract revision of expand ``revision`` (its archives are named for it)."""
    script = op.get_context().opts.get("script")
    found = [rev.revision for rev in (script.walk_revisions() if script is not None else ())
             if getattr(rev.module, "contracts", None) == revision]
    if len(found) != 1:
        raise InvalidExpandStep(f"expand {revision} has {len(found)} contract revisions (contracts = \"{revision}\"); "
                                "it needs exactly one")
    return found[0]


# --- SQLite: no versioned schemas ------------------------------------------------------------------

_VERSIONS = sa.Table(
    versioning.VERSIONS_TABLE, sa.MetaData(),
    sa.Column("revision", sa.Text(), primary_key=True),
    sa.Column("schema", sa.Text(), nullable=True),
    sa.Column("steps", sa.JSON(), nullable=False),
    sa.Column("facts", sa.JSON(), nullable=False),
    sa.Column("expanded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column("contracted_at", sa.DateTime(timezone=True), nullable=True),
)


def _apply_on_sqlite(revision: str, steps: tuple[Step, ...]) -> None:
    """Apply the whole change at once, recording what the undo needs (each removed or retyped column as it was)."""
    inspector = sa.inspect(op.get_bind())
    found = {(table, c["name"]): c for table in versioning.changed_tables(steps) for c in inspector.get_columns(table)}
    facts = {}
    for step in steps:
        column = step.old if isinstance(step, RenameColumn) else step.column
        if (step.table, column) not in found:
            raise InvalidExpandStep(f"expand {revision}: {step.table}.{column} does not exist")
        if not isinstance(step, RenameColumn):
            was = found[(step.table, column)]
            facts[f"{step.table}.{column}"] = {"type": was["type"].compile(dialect=op.get_bind().dialect),
                                               "not_null": not was["nullable"], "default": was["default"]}
    op.create_table(_VERSIONS.name, *(c._copy() for c in _VERSIONS.columns), if_not_exists=True)
    op.execute(_VERSIONS.insert().values(revision=revision, schema=None, steps=[s.as_json() for s in steps],
                                         facts={"columns": facts}))
    for step in steps:
        if isinstance(step, DropColumn):
            archive_columns(step.table, [sa.Column(step.column, found[(step.table, step.column)]["type"])],
                            archive=versioning.archive_name(revision, step.table), where=f'"{step.column}" IS NOT NULL')
    for table in versioning.changed_tables(steps):
        with op.batch_alter_table(table) as batch:
            for step in (s for s in steps if s.table == table):
                if isinstance(step, RenameColumn):
                    batch.alter_column(step.old, new_column_name=step.new)
                elif isinstance(step, ChangeType):
                    batch.alter_column(step.column, type_=step.type_)  # the rebuild copies with CAST
                else:
                    batch.drop_column(step.column)


def _undo_on_sqlite(revision: str, steps: tuple[Step, ...]) -> None:
    """Put back what ``_apply_on_sqlite`` changed: names, types, and removed columns with their archived values."""
    row = op.get_bind().execute(sa.select(_VERSIONS.c.facts).where(_VERSIONS.c.revision == revision)).first()
    facts = row[0]["columns"] if row is not None else {}
    for table in versioning.changed_tables(steps):
        dropped = [step for step in steps if step.table == table and isinstance(step, DropColumn)]
        with op.batch_alter_table(table) as batch:
            for step in (s for s in steps if s.table == table):
                if isinstance(step, RenameColumn):
                    batch.alter_column(step.new, new_column_name=step.old)
                elif isinstance(step, ChangeType):
                    batch.alter_column(step.column, type_=_sqlite_type(facts, table, step.column))
                else:
                    type_ = _sqlite_type(facts, table, step.column)
                    default = facts[f"{table}.{step.column}"]["default"]
                    batch.add_column(sa.Column(step.column, type_, nullable=True,
                                               server_default=None if default is None else sa.text(default)))
        for step in dropped:
            type_ = _sqlite_type(facts, table, step.column)
            restore_columns(table, [sa.Column(step.column, type_)], archive=versioning.archive_name(revision, table))
            unset = op.get_bind().execute(sa.text(f'SELECT 1 FROM "{table}" WHERE "{step.column}" IS NULL LIMIT 1'))
            if facts[f"{table}.{step.column}"]["not_null"] and unset.first() is None:
                with op.batch_alter_table(table) as batch:
                    batch.alter_column(step.column, existing_type=type_, nullable=False)
    op.execute(_VERSIONS.delete().where(_VERSIONS.c.revision == revision))


def _sqlite_type(facts: dict, table: str, column: str) -> sa.types.TypeEngine:
    """Return the type expand recorded for ``table.column`` (SQLite's text, e.g. ``VARCHAR(64)``)."""
    recorded = facts.get(f"{table}.{column}")
    if recorded is None:
        raise InvalidExpandStep(f"undo of expand: {versioning.VERSIONS_TABLE} has no record of {table}.{column}")
    name, _, args = recorded["type"].partition("(")
    type_class = sqlite_base.ischema_names.get(name.strip().upper(), sa.types.NullType)
    lengths = [int(a) for a in args.rstrip(")").split(",") if a.strip().isdigit()]
    return type_class(*lengths)
