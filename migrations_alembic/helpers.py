"""Building blocks the revisions share. Owned by the migrations, not by today's models.

Revisions describe the schema as it was when they were written, so they never import the
Django models; what they share lives here and must only ever grow, never change meaning.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGSERIAL.
BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def id_column() -> sa.Column:
    """Return a BIGSERIAL (SQLite: INTEGER) primary key column named ``id``."""
    return sa.Column("id", BIGINT, primary_key=True, autoincrement=True)


def now_column(name: str) -> sa.Column:
    """Return a NOT NULL timestamp column that defaults to the time of insert."""
    return sa.Column(name, TIMESTAMP, server_default=sa.func.now(), nullable=False)


def foreign_key(table: str, column: str, target: str, *, ondelete: str | None) -> sa.ForeignKeyConstraint:
    """Return the FK ``table.column -> target.id`` as the models declare it (deferred, like Django's)."""
    return sa.ForeignKeyConstraint(
        [column],
        [f"{target}.id"],
        name=op.f(f"fk_{table}_{column}_{target}"),
        ondelete=ondelete,
        deferrable=True,
        initially="DEFERRED",
    )


def _archive_table(name: str, columns: list[sa.Column]) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", BIGINT, primary_key=True, autoincrement=False),
        *(sa.Column(c.name, c.type, nullable=True) for c in columns),
        sa.Column("archived_at", TIMESTAMP, server_default=sa.func.now(), nullable=False),
    )


def archive_columns(table: str, columns: list[sa.Column], *, archive: str, where: str) -> None:
    """Copy ``columns`` of the rows matching ``where`` into the ``archive`` table, by id.

    Run before a downgrade drops the columns; ``restore_columns`` in the next upgrade puts the
    values back. The archive keeps the values even if that upgrade never comes.
    """
    archive_table = _archive_table(archive, columns)
    op.create_table(archive, *(c._copy() for c in archive_table.columns))
    names = ", ".join(c.name for c in columns)
    op.execute(f"INSERT INTO {archive} (id, {names}) SELECT id, {names} FROM {table} WHERE {where}")
    if not op.get_context().as_sql and not op.get_bind().execute(sa.text(f"SELECT 1 FROM {archive} LIMIT 1")).first():
        op.drop_table(archive)  # nothing to keep: leave no empty table behind


def restore_columns(table: str, columns: list[sa.Column], *, archive: str) -> None:
    """Put back the values ``archive_columns`` kept, for rows that still exist, and drop the archive.

    The archive is created if missing so the same SQL runs on a database that never had one
    (and in ``--sql`` output, which cannot look).
    """
    archive_table = _archive_table(archive, columns)
    op.create_table(archive, *(c._copy() for c in archive_table.columns), if_not_exists=True)
    assignments = ", ".join(f"{c.name} = a.{c.name}" for c in columns)
    op.execute(f"UPDATE {table} SET {assignments} FROM {archive} AS a WHERE {table}.id = a.id")
    op.drop_table(archive)


def index_state(name: str) -> bool | None:
    """Return whether PostgreSQL index ``name`` is valid, or None if absent (or in ``--sql`` mode)."""
    if op.get_context().as_sql:
        return None
    row = op.get_bind().execute(
        sa.text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :name AND pg_catalog.pg_table_is_visible(c.oid)"
        ),
        {"name": name},
    ).first()
    return None if row is None else bool(row[0])


def build_index(name: str, table: str, columns: list[str], **dialect_options: object) -> None:
    """Create an index; on PostgreSQL without blocking writes (call inside ``autocommit_block``).

    ``CREATE INDEX CONCURRENTLY`` that fails or is killed leaves an INVALID index, which writes
    keep maintaining and the planner never uses, and which ``IF NOT EXISTS`` would keep. So a
    valid index from an earlier, interrupted run is kept, and an invalid one is dropped first.
    """
    if op.get_context().dialect.name != "postgresql":
        options = {k: v for k, v in dialect_options.items() if not k.startswith("postgresql_")}
        # No INCLUDE elsewhere: the included columns become trailing key columns.
        covered = list(dialect_options.get("postgresql_include", []))
        op.create_index(name, table, columns + covered, **options)
        return
    state = index_state(name)
    if state is True:
        return
    concurrently = _concurrently()
    op.execute(f"DROP INDEX {'CONCURRENTLY ' if concurrently else ''}IF EXISTS {name}")
    options = {k: v for k, v in dialect_options.items() if not k.startswith("sqlite_")}
    op.create_index(name, table, columns, postgresql_concurrently=concurrently, **options)


def drop_index(name: str, table: str) -> None:
    """Drop an index; on PostgreSQL without blocking writes (call inside ``autocommit_block``)."""
    if op.get_context().dialect.name == "postgresql":
        op.execute(f"DROP INDEX {'CONCURRENTLY ' if _concurrently() else ''}IF EXISTS {name}")
    else:
        op.drop_index(name, table_name=table)


def _concurrently() -> bool:
    """CONCURRENTLY, unless the revision runs inside its caller's own transaction, which it cannot leave.

    Only a connection lent the cookbook way inside a transaction (pytest-alembic's, rolled back
    after each step) is; env.py says so in ``in_callers_transaction``. migrate_schema and the
    alembic CLI never run in one.
    """
    return not op.get_context().opts.get("in_callers_transaction", False)


def set_not_null(table: str, column: str, existing_type: sa.types.TypeEngine) -> None:
    """Make ``table.column`` NOT NULL without scanning the table under an exclusive lock (PostgreSQL).

    ``SET NOT NULL`` alone scans every row under ACCESS EXCLUSIVE: reads and writes wait. Instead:
    add ``CHECK (column IS NOT NULL) NOT VALID`` (instant; new rows are checked from then on),
    commit, ``VALIDATE`` it (scans, but under SHARE UPDATE EXCLUSIVE: writes go on), after which
    ``SET NOT NULL`` trusts the valid constraint and skips its scan. The check stays (redundant,
    and cheap): dropping it would be one more ACCESS EXCLUSIVE lock for nothing.
    Commits part-way (autocommit block): a rerun after an interruption skips what is done.
    Elsewhere (SQLite): a plain ``ALTER COLUMN``, a table rebuild in batch mode.
    """
    if op.get_context().dialect.name != "postgresql":
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, existing_type=existing_type, nullable=False)
        return
    check = f"ck_{table}_{column}_not_null"
    quoted = f'"{table}"'
    if _constraint_exists(table, check) is not True:
        op.execute(f"ALTER TABLE {quoted} ADD CONSTRAINT {check} CHECK ({column} IS NOT NULL) NOT VALID")
    with op.get_context().autocommit_block():
        op.execute(f"ALTER TABLE {quoted} VALIDATE CONSTRAINT {check}")
        op.execute(f"ALTER TABLE {quoted} ALTER COLUMN {column} SET NOT NULL")


def drop_not_null(table: str, column: str, existing_type: sa.types.TypeEngine) -> None:
    """Allow NULL in ``table.column`` again, dropping ``set_not_null``'s check (instant on PostgreSQL)."""
    if op.get_context().dialect.name == "postgresql":
        op.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS ck_{table}_{column}_not_null')
    with op.batch_alter_table(table) as batch:
        batch.alter_column(column, existing_type=existing_type, nullable=True)


def add_check_constraint(name: str, table: str, condition: str) -> None:
    """Add ``CHECK (condition)`` to ``table`` without scanning it under an exclusive lock (PostgreSQL).

    Added ``NOT VALID`` (instant; new rows are checked from then on), committed, then ``VALIDATE``d,
    which scans under SHARE UPDATE EXCLUSIVE: writes go on. A row that breaks it fails the
    validation and leaves the constraint NOT VALID; a rerun after the data is corrected skips the add.
    Elsewhere (SQLite): the constraint in a batch-mode table rebuild.
    """
    if op.get_context().dialect.name != "postgresql":
        with op.batch_alter_table(table) as batch:
            batch.create_check_constraint(name, sa.text(condition))
        return
    if _constraint_exists(table, name) is not True:
        op.create_check_constraint(name, table, sa.text(condition), postgresql_not_valid=True)
    with op.get_context().autocommit_block():
        op.execute(f'ALTER TABLE "{table}" VALIDATE CONSTRAINT {name}')


def drop_check_constraint(name: str, table: str) -> None:
    """Drop the CHECK constraint ``name`` of ``table`` (instant on PostgreSQL; SQLite: a batch-mode table rebuild)."""
    if op.get_context().dialect.name == "postgresql":
        # IF EXISTS: dropping a column drops the checks on it, maybe earlier in the same revision.
        op.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS {name}')
        return
    with op.batch_alter_table(table) as batch:
        batch.drop_constraint(name, type_="check")


def add_unique_constraint(name: str, table: str, columns: list[str]) -> None:
    """Make the unique index ``name`` that ``build_index(..., unique=True)`` built the table's UNIQUE constraint.

    On PostgreSQL ``ADD CONSTRAINT ... UNIQUE USING INDEX``: no scan, the index already holds every
    row (built ``CONCURRENTLY``, without blocking writes). A rerun after an interruption skips it.
    Elsewhere (SQLite): the constraint in a batch-mode table rebuild, in place of the index.
    """
    if op.get_context().dialect.name != "postgresql":
        op.drop_index(name, table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.create_unique_constraint(name, columns)
        return
    if _constraint_exists(table, name) is not True:
        op.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT {name} UNIQUE USING INDEX {name}')


def drop_unique_constraint(name: str, table: str, columns: list[str]) -> None:
    """Undo ``add_unique_constraint``: the constraint goes, the unique index ``name`` stays as it was before.

    On PostgreSQL dropping the constraint drops its index: it is built again without blocking writes.
    """
    if op.get_context().dialect.name != "postgresql":
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(name, type_="unique")
        op.create_index(name, table, columns, unique=True)
        return
    op.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS {name}')
    with op.get_context().autocommit_block():
        build_index(name, table, columns, unique=True)


def _constraint_exists(table: str, name: str) -> bool | None:
    if op.get_context().as_sql:
        return None
    return op.get_bind().execute(
        sa.text("SELECT 1 FROM pg_constraint WHERE conname = :name AND conrelid = CAST(:table AS regclass)"),
        {"name": name, "table": table},
    ).first() is not None


def _report(message: str) -> None:
    """Tell the operator what a revision did to data
    (env.py's ``on_archive``: an ``ArchiveNote``, printed or logged)."""
    report = op.get_context().opts.get("on_archive")
    if report is not None:
        report(message)


def _table_exists(name: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(name)


def drop_table_keeping_rows(table: str, *, archive_prefix: str) -> None:
    """Drop ``table``, first copying its rows, if it has any, into the table ``archive_prefix + table``.

    A downgrade must not lose data (the guide: "drop columns with data: create archive table
    first"); ``restore_rows`` in the next upgrade puts the rows back and drops the archive, which
    otherwise stays. In ``--sql`` output the archive is always made (the SQL cannot look).
    """
    archive = f"{archive_prefix}{table}"
    copy = f"CREATE TABLE {archive} AS SELECT * FROM {table}"
    if op.get_context().as_sql:
        op.execute(copy)
    elif op.get_bind().execute(sa.text(f"SELECT 1 FROM {table} LIMIT 1")).first():
        op.execute(copy)
        kept = op.get_bind().execute(sa.text(f"SELECT count(*) FROM {archive}")).scalar()
        _report(f"archived {kept:,} row(s) of {table} in {archive}; the next upgrade puts them back")
    op.drop_table(table)


def restore_rows(table: sa.Table, *, archive_prefix: str) -> sa.Table:
    """Put back into ``table`` (just created) the rows ``drop_table_keeping_rows`` kept, and drop the archive.

    A row whose parent (a foreign key's target) was deleted meanwhile is treated as the key's
    ``ON DELETE`` says: left out (CASCADE, or no rule), or kept with the key NULL (SET NULL). On
    PostgreSQL the id sequence then continues after the highest restored id.
    """
    context = op.get_context()
    archive = f"{archive_prefix}{table.name}"
    if context.as_sql:
        op.create_table(archive, *(sa.Column(c.name, c.type, nullable=True) for c in table.columns),
                        if_not_exists=True)
    elif not _table_exists(archive):
        return table
    quote = context.dialect.identifier_preparer.quote
    selected = {column.name: f"a.{quote(column.name)}" for column in table.columns}
    required = []
    for key in sorted(table.foreign_key_constraints, key=lambda k: k.column_keys):  # a set: sorted, for one SQL
        (column,) = key.column_keys
        parent = key.elements[0].target_fullname.split(".")[0]
        # A table referring to itself: the parent may be one of the rows being restored.
        source = archive if parent == table.name else parent
        found = f"EXISTS (SELECT 1 FROM {source} p WHERE p.id = a.{quote(column)})"
        if (key.ondelete or "").upper() == "SET NULL":
            selected[column] = f"CASE WHEN {found} THEN a.{quote(column)} END"
        else:
            required.append(f"(a.{quote(column)} IS NULL OR {found})")
    names = ", ".join(quote(name) for name in selected)
    where = f" WHERE {' AND '.join(required)}" if required else ""
    insert = f"INSERT INTO {table.name} ({names}) SELECT {', '.join(selected.values())} FROM {archive} a{where}"
    if context.dialect.name == "postgresql":
        # The foreign keys are deferred: checked now, they leave no pending trigger events, which
        # would forbid the revision's next CREATE INDEX on this table.
        op.execute("SET CONSTRAINTS ALL IMMEDIATE")
    if context.as_sql:
        op.execute(insert)
    else:
        restored = op.get_bind().execute(sa.text(insert)).rowcount
        _report(f"restored {restored:,} row(s) of {table.name} from {archive}")
    if context.dialect.name == "postgresql" and "id" in table.columns and table.columns["id"].autoincrement:
        op.execute(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), max(id)) FROM {table.name} "
                   "HAVING max(id) IS NOT NULL")
    op.drop_table(archive)
    return table
