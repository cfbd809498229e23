"""``revision --autogenerate`` that writes revisions ``plan`` accepts as they are.

Alembic renders what the models changed as plain operations; on a live PostgreSQL two of them
are unsafe, and ``plan`` (squawk) rightly refuses them. Here they are rewritten before rendering:

- Index creation and removal become the project's helpers (``migrations_alembic.helpers``
  ``build_index``/``drop_index``) inside an autocommit block: ``CREATE/DROP INDEX CONCURRENTLY``
  on PostgreSQL, which never blocks writers; plain ones on SQLite. Indexes of a table created in
  the same revision stay as they are (an empty table, in the same transaction).
- A NOT NULL column without a server default, added to an existing table (one that has rows in
  production, whatever the development database holds), becomes expand/contract: this revision
  adds it nullable, and a second revision makes it NOT NULL through ``helpers.set_not_null``
  (a ``CHECK ... NOT VALID``, validated without blocking writes), behind a data pre-check that
  refuses while any row is NULL: fill the column in between (a data migration or backfill).
  With a server default, PostgreSQL (11+) adds the column NOT NULL without rewriting the table:
  one step.
- A column dropped from an existing table keeps its values, as the shipped revisions do (the
  guide: archive before dropping): ``helpers.archive_columns`` copies the rows whose value a
  re-added column would not get back (its server default) into ``archive_<rev>_<table>`` (columns
  the downgrade drops) or ``archive_<rev>_upgrade_<table>`` (columns the upgrade drops), and the
  step that adds the column again runs ``helpers.restore_columns``, which puts them back.
- Named CHECK constraints, which Alembic does not compare, are compared by name
  (``compare_check_constraints``); one added to an existing table becomes
  ``helpers.add_check_constraint`` (``NOT VALID``, then ``VALIDATE`` without blocking writes, behind
  a data pre-check), one removed ``helpers.drop_check_constraint``.

The docstring stub asks, for each index added, which query it serves; a contract revision's
stub says what must be filled first. What the template needs of each revision travels in
``config.attributes`` (``REVISION_NOTES``, ``REVISION_DATA_CHECKS``), keyed by revision id.
"""
from __future__ import annotations

import re
import uuid
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import comparators, renderers
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import (
    _get_index_rendered_expressions,
    _render_column,
    _render_dialect_kwargs_items,
    _repr_type,
)
from alembic.operations import ops

HELPERS = "migrations_alembic.helpers"
REVISION_NOTES = "revision_notes"  # config.attributes[...][rev_id]: lines for the docstring stub
REVISION_DATA_CHECKS = "revision_data_checks"  # config.attributes[...][rev_id]: {name: query} (prechecks.py)
# helpers.set_not_null leaves this CHECK behind on PostgreSQL (redundant with NOT NULL, kept to spare
# a lock): the database's, not the models'.
NOT_NULL_CHECK = "ck_{table}_{column}_not_null"
# A server default a comparison can use as it is: a number, a quoted string (with a PostgreSQL cast), true/false.
_LITERAL_DEFAULT = re.compile(r"-?\d+(\.\d+)?|'([^']|'')*'(::[\w ]+)?|true|false", re.IGNORECASE)


class BuildIndexOp(ops.MigrateOperation):
    """``helpers.build_index`` in an autocommit block: CREATE INDEX CONCURRENTLY on PostgreSQL."""

    def __init__(self, create: ops.CreateIndexOp) -> None:
        self.create = create

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return self.create.to_diff_tuple()


class DropIndexConcurrentlyOp(ops.MigrateOperation):
    """``helpers.drop_index`` in an autocommit block: DROP INDEX CONCURRENTLY on PostgreSQL."""

    def __init__(self, drop: ops.DropIndexOp) -> None:
        self.drop = drop

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return self.drop.to_diff_tuple()


class SetNotNullOp(ops.MigrateOperation):
    """``helpers.set_not_null`` (or ``drop_not_null`` with ``allow_null``): a column's NULLs, without a long lock."""

    def __init__(self, table: str, column: str, type_: Any, *, allow_null: bool = False) -> None:
        self.table, self.column, self.type_, self.allow_null = table, column, type_, allow_null


class ArchiveColumnsOp(ops.MigrateOperation):
    """``helpers.archive_columns``: keep the values of columns about to be dropped."""

    def __init__(self, table: str, columns: list[sa.Column], *, archive: str) -> None:
        self.table, self.columns, self.archive = table, columns, archive

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("archive_columns", self.table, [column.name for column in self.columns], self.archive)


class RestoreColumnsOp(ops.MigrateOperation):
    """``helpers.restore_columns``: put back the values ``ArchiveColumnsOp`` kept, once the columns are back."""

    def __init__(self, table: str, columns: list[sa.Column], *, archive: str) -> None:
        self.table, self.columns, self.archive = table, columns, archive

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("restore_columns", self.table, [column.name for column in self.columns], self.archive)


class AddCheckConstraintOp(ops.MigrateOperation):
    """``helpers.add_check_constraint``: NOT VALID, then VALIDATE without blocking writes (PostgreSQL)."""

    def __init__(self, create: ops.CreateCheckConstraintOp) -> None:
        self.create = create

    @property
    def condition(self) -> str:
        return str(self.create.to_constraint().sqltext)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return self.create.to_diff_tuple()


class DropCheckConstraintOp(ops.MigrateOperation):
    """``helpers.drop_check_constraint``: a plain DROP CONSTRAINT, in batch mode on SQLite."""

    def __init__(self, drop: ops.DropConstraintOp) -> None:
        self.drop = drop

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return self.drop.to_diff_tuple()


def _autocommit_block(call: str) -> list[str]:
    # Alembic's printer indents after a line ending in ":" and closes the block at the empty line.
    return ["with op.get_context().autocommit_block():", call, ""]


@renderers.dispatch_for(BuildIndexOp)
def _render_build_index(autogen_context: AutogenContext, op: BuildIndexOp) -> list[str]:
    autogen_context.imports.add(f"from {HELPERS} import build_index")
    index = op.create.to_index()
    columns = ", ".join(_get_index_rendered_expressions(index, autogen_context))
    options = _render_dialect_kwargs_items(autogen_context, index.dialect_kwargs)
    if index.unique:
        options.insert(0, "unique=True")
    extra = "".join(f", {option}" for option in options)
    return _autocommit_block(f"build_index({str(index.name)!r}, {op.create.table_name!r}, [{columns}]{extra})")


@renderers.dispatch_for(DropIndexConcurrentlyOp)
def _render_drop_index(autogen_context: AutogenContext, op: DropIndexConcurrentlyOp) -> list[str]:
    autogen_context.imports.add(f"from {HELPERS} import drop_index")
    return _autocommit_block(f"drop_index({str(op.drop.index_name)!r}, {op.drop.table_name!r})")


@renderers.dispatch_for(SetNotNullOp)
def _render_set_not_null(autogen_context: AutogenContext, op: SetNotNullOp) -> str:
    helper = "drop_not_null" if op.allow_null else "set_not_null"
    autogen_context.imports.add(f"from {HELPERS} import {helper}")
    return f"{helper}({op.table!r}, {op.column!r}, {_repr_type(op.type_, autogen_context)})"


def _render_columns(autogen_context: AutogenContext, columns: list[sa.Column]) -> str:
    return "[" + ", ".join(_render_column(column, autogen_context) for column in columns) + "]"


@renderers.dispatch_for(ArchiveColumnsOp)
def _render_archive_columns(autogen_context: AutogenContext, op: ArchiveColumnsOp) -> str:
    autogen_context.imports.add(f"from {HELPERS} import archive_columns")
    where = " OR ".join(changed_by_readding(column, autogen_context.dialect) for column in op.columns)
    return (f"archive_columns({op.table!r}, {_render_columns(autogen_context, op.columns)}, "
            f"archive={op.archive!r}, where={where!r})")


@renderers.dispatch_for(RestoreColumnsOp)
def _render_restore_columns(autogen_context: AutogenContext, op: RestoreColumnsOp) -> str:
    autogen_context.imports.add(f"from {HELPERS} import restore_columns")
    return f"restore_columns({op.table!r}, {_render_columns(autogen_context, op.columns)}, archive={op.archive!r})"


@renderers.dispatch_for(AddCheckConstraintOp)
def _render_add_check_constraint(autogen_context: AutogenContext, op: AddCheckConstraintOp) -> str:
    autogen_context.imports.add(f"from {HELPERS} import add_check_constraint")
    return f"add_check_constraint({str(op.create.constraint_name)!r}, {op.create.table_name!r}, {op.condition!r})"


@renderers.dispatch_for(DropCheckConstraintOp)
def _render_drop_check_constraint(autogen_context: AutogenContext, op: DropCheckConstraintOp) -> str:
    autogen_context.imports.add(f"from {HELPERS} import drop_check_constraint")
    return f"drop_check_constraint({str(op.drop.constraint_name)!r}, {op.drop.table_name!r})"


def changed_by_readding(column: sa.Column, dialect: sa.Dialect | None) -> str:
    """Return SQL selecting the rows whose ``column`` value would not come back if it were dropped and added again.

    Adding a column fills the existing rows with its server default (NULL without one), so only the
    other rows need archiving; with a default that is not a plain literal (``now()``), every row.
    """
    name = column.name
    default = column.server_default
    if default is None:
        return f"{name} IS NOT NULL"  # NOT NULL: every row
    arg = getattr(default, "arg", default)
    literal = arg if isinstance(arg, str) else str(arg.compile(dialect=dialect)) if dialect else str(arg)
    if not _LITERAL_DEFAULT.fullmatch(literal.strip()):
        return f"{name} IS NULL OR {name} IS NOT NULL"  # every row
    return f"{name} IS NULL OR {name} <> {literal.strip()}" if column.nullable else f"{name} <> {literal.strip()}"


@comparators.dispatch_for("table")
def compare_check_constraints(autogen_context: AutogenContext, modify_table_ops: ops.ModifyTableOps,
                              schema: str | None, table_name: str, conn_table: sa.Table | None,
                              metadata_table: sa.Table | None) -> None:
    """Report the named CHECK constraints the models declare and the table lacks, and the reverse.

    Alembic compares no CHECK constraint by default. These are compared by name only: the database
    rewrites a condition's text (PostgreSQL turns ``IN (...)`` into ``= ANY (ARRAY[...])``), so a
    text comparison would report changes where there are none. A changed condition takes a new name.
    """
    if conn_table is None or metadata_table is None:
        return  # a table created or dropped whole carries its constraints with it
    declared = {str(const.name): const for const in metadata_table.constraints
                if isinstance(const, sa.CheckConstraint) and const.name}
    not_null_checks = {NOT_NULL_CHECK.format(table=table_name, column=column.name) for column in metadata_table.c}
    try:
        reflected = autogen_context.inspector.get_check_constraints(table_name, schema=schema)
    except NotImplementedError:
        return
    found = {ck["name"]: ck for ck in reflected if ck.get("name") and ck["name"] not in not_null_checks - set(declared)}
    for name in sorted(set(found) - set(declared)):
        const = sa.CheckConstraint(sa.text(found[name]["sqltext"]), name=sa.sql.elements.conv(name))
        sa.Table(table_name, sa.MetaData(), schema=schema).append_constraint(const)
        if autogen_context.run_object_filters(const, name, "check_constraint", True, None):
            modify_table_ops.ops.append(ops.DropConstraintOp.from_constraint(const))
    for name in sorted(set(declared) - set(found)):
        const = declared[name]
        if autogen_context.run_object_filters(const, name, "check_constraint", False, None):
            modify_table_ops.ops.append(ops.AddConstraintOp.from_constraint(const))


def _split_index_ops(container: ops.OpContainer, created_tables: set[str], *,
                     archive_for: Any = None) -> list[ops.MigrateOperation]:
    """Return ``container``'s operations with each index and CHECK operation lifted out of its table's batch, in order.

    ``archive_for(table, upgrade_drops=...)`` names the archive keeping a table's dropped columns
    (None: not kept); each run of column drops is then preceded by their archiving, and each run of
    column additions followed by their restoring.
    """
    result: list[ops.MigrateOperation] = []
    for op in container.ops:
        if isinstance(op, ops.ModifyTableOps):
            run: list[ops.MigrateOperation] = []
            for inner in _checks_dropped_first_added_last(op.ops):
                lifted = _safe_index_op(inner, created_tables)
                if lifted is None:
                    run.append(inner)
                    continue
                if run:
                    result += _keeping_values(ops.ModifyTableOps(op.table_name, run, schema=op.schema), archive_for)
                    run = []
                result.append(lifted)
            if run:
                result += _keeping_values(ops.ModifyTableOps(op.table_name, run, schema=op.schema), archive_for)
        else:
            result.append(_safe_index_op(op, created_tables) or op)
    return result


def _is_check(op: ops.MigrateOperation) -> bool:
    return isinstance(op, ops.CreateCheckConstraintOp) or (
        isinstance(op, ops.DropConstraintOp) and op.constraint_type == "check")


def _checks_dropped_first_added_last(inner: list[ops.MigrateOperation]) -> list[ops.MigrateOperation]:
    # A CHECK may name a column the same revision adds (after it) or drops (before it).
    return ([op for op in inner if isinstance(op, ops.DropConstraintOp) and _is_check(op)]
            + [op for op in inner if not _is_check(op)]
            + [op for op in inner if isinstance(op, ops.CreateCheckConstraintOp)])


def _keeping_values(modify: ops.ModifyTableOps, archive_for: Any) -> list[ops.MigrateOperation]:
    """Return ``modify`` preceded by the archiving of the columns it drops
    and followed by the restoring of those it adds."""
    if archive_for is None:
        return [modify]
    table = modify.table_name
    dropped = [op.to_column() for op in modify.ops if isinstance(op, ops.DropColumnOp)]
    added = [op.column for op in modify.ops if isinstance(op, ops.AddColumnOp)]
    before, after = [], []
    if dropped and (archive := archive_for(table, dropping=True)):
        before.append(ArchiveColumnsOp(table, dropped, archive=archive))
    if added and (archive := archive_for(table, dropping=False)):
        after.append(RestoreColumnsOp(table, added, archive=archive))
    return [*before, modify, *after]


def _safe_index_op(op: ops.MigrateOperation, created_tables: set[str]) -> ops.MigrateOperation | None:
    if isinstance(op, ops.CreateIndexOp) and op.table_name not in created_tables:
        return BuildIndexOp(op)
    if isinstance(op, ops.DropIndexOp) and op.table_name not in created_tables:
        return DropIndexConcurrentlyOp(op)
    if isinstance(op, ops.CreateCheckConstraintOp) and op.table_name not in created_tables:
        return AddCheckConstraintOp(op)
    if _is_check(op) and op.table_name not in created_tables:
        return DropCheckConstraintOp(op)
    return None


def _required_columns_added(upgrade: ops.UpgradeOps) -> list[ops.AddColumnOp]:
    """Return the NOT NULL columns without a server default that are added to existing tables."""
    found = []
    for op in upgrade.ops:
        inner = op.ops if isinstance(op, ops.ModifyTableOps) else [op]
        found += [add for add in inner if isinstance(add, ops.AddColumnOp)
                  and not add.column.nullable and add.column.server_default is None]
    return found


def _inner_ops(container: ops.OpContainer) -> list[ops.MigrateOperation]:
    return [inner for op in container.ops for inner in (op.ops if isinstance(op, ops.ModifyTableOps) else [op])]


def _tables_with_ids(metadata: sa.MetaData | None) -> set[str]:
    return {name for name, table in (metadata.tables.items() if metadata is not None else ()) if "id" in table.c}


def _archive_notes(upgrade: ops.UpgradeOps, downgrade: ops.DowngradeOps) -> list[str]:
    notes = []
    for op in downgrade.ops:
        if isinstance(op, ArchiveColumnsOp):
            names = ", ".join(f"{op.table}.{column.name}" for column in op.columns)
            notes.append(f"- Downgrade keeps the values of {names} in {op.archive}; the next upgrade restores them.")
    for op in upgrade.ops:
        if isinstance(op, ArchiveColumnsOp):
            names = ", ".join(f"{op.table}.{column.name}" for column in op.columns)
            notes.append(f"- Upgrade drops {names} after keeping the values in {op.archive} (a downgrade restores "
                         "them); plan refuses the drop (ban-drop-column) until ACCEPTED_LINT_FINDINGS says why no "
                         "code reads them any more.")
    for op in upgrade.ops:
        if isinstance(op, DropCheckConstraintOp):
            notes.append(f"- Upgrade drops {op.drop.constraint_name} on {op.drop.table_name}; the downgrade adds it "
                         "back with the condition as this database reported it (in its own SQL dialect).")
    return notes


def deployable(context: Any, revision: Any, directives: list[Any]) -> None:
    """``process_revision_directives``: rewrite an autogenerated revision as described above."""
    if not directives:
        return
    script = directives[0]
    if not getattr(script, "upgrade_ops", None) or script.upgrade_ops.is_empty():
        return
    attributes = context.config.attributes
    notes = attributes.setdefault(REVISION_NOTES, {})
    checks = attributes.setdefault(REVISION_DATA_CHECKS, {})
    created = {op.table_name for op in script.upgrade_ops.ops if isinstance(op, ops.CreateTableOp)}
    dropped = {op.table_name for op in script.downgrade_ops.ops if isinstance(op, ops.CreateTableOp)}

    required = _required_columns_added(script.upgrade_ops)
    for add in required:
        add.column.nullable = True  # expand: the contract revision below makes it NOT NULL
    keyed = _tables_with_ids(context.opts.get("target_metadata"))

    def archive(table: str, *, upgrade_drops: bool) -> str | None:
        # Archives hold rows by id (helpers.archive_columns); the upgrade's and the downgrade's never share one.
        return (f"archive_{script.rev_id}_upgrade_{table}" if upgrade_drops else f"archive_{script.rev_id}_{table}") \
            if table in keyed else None

    added_to = {op.table_name for op in _inner_ops(script.upgrade_ops) if isinstance(op, ops.AddColumnOp)}
    script.upgrade_ops.ops = _split_index_ops(
        script.upgrade_ops, created, archive_for=lambda table, dropping: archive(table, upgrade_drops=dropping))
    script.downgrade_ops.ops = _split_index_ops(
        script.downgrade_ops, dropped, archive_for=lambda table, dropping: archive(table, upgrade_drops=not dropping))
    notes[script.rev_id] = [
        f"- {op.create.index_name} on {op.create.table_name}: which query does it serve? Quote it here, as "
        "004's docstring does (an index no query needs only slows writes)."
        for op in script.upgrade_ops.ops if isinstance(op, BuildIndexOp)]
    notes[script.rev_id] += _archive_notes(script.upgrade_ops, script.downgrade_ops)
    for op in script.upgrade_ops.ops:
        if isinstance(op, AddCheckConstraintOp):
            table, name = op.create.table_name, str(op.create.constraint_name)
            notes[script.rev_id].append(
                f"- {name} on {table} is added NOT VALID and validated without blocking writes "
                "(helpers.add_check_constraint).")
            if table in keyed and table not in added_to:  # on columns this revision adds, no row can break it yet
                checks.setdefault(script.rev_id, {})[f"every row of {table} satisfies {name}"] = (
                    f"SELECT id FROM {table} WHERE NOT ({op.condition}) ORDER BY id")
    for add in required:
        table, column, contract_id = add.table_name, add.column.name, uuid.uuid4().hex[-12:]
        notes[script.rev_id].append(f"- {table}.{column} is added nullable (expand); revision {contract_id} makes "
                                    "it NOT NULL once every row has a value: fill it in between.")
        notes[contract_id] = [
            f"Contract step of {script.rev_id}: {table}.{column} becomes NOT NULL without blocking writes "
            "(helpers.set_not_null).",
            f"Fill {table}.{column} first (a data migration or a backfill): the data check below refuses the upgrade "
            "while a row is NULL, before any lock."]
        checks[contract_id] = {f"no NULL in {table}.{column}":
                               f"SELECT id FROM {table} WHERE {column} IS NULL ORDER BY id"}
        directives.append(ops.MigrationScript(
            rev_id=contract_id, message=f"make {table}.{column} not null", imports=set(),
            upgrade_ops=ops.UpgradeOps([SetNotNullOp(table, column, add.column.type)]),
            downgrade_ops=ops.DowngradeOps([SetNotNullOp(table, column, add.column.type, allow_null=True)]),
            head=directives[-1].rev_id, splice=False, branch_label=None, version_path=script.version_path,
            depends_on=None))
