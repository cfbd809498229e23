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

The docstring stub asks, for each index added, which query it serves; a contract revision's
stub says what must be filled first. What the template needs of each revision travels in
``config.attributes`` (``REVISION_NOTES``, ``REVISION_DATA_CHECKS``), keyed by revision id.
"""
from __future__ import annotations

import uuid
from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import _get_index_rendered_expressions, _render_dialect_kwargs_items, _repr_type
from alembic.operations import ops

HELPERS = "migrations_alembic.helpers"
REVISION_NOTES = "revision_notes"  # config.attributes[...][rev_id]: lines for the docstring stub
REVISION_DATA_CHECKS = "revision_data_checks"  # config.attributes[...][rev_id]: {name: query} (prechecks.py)


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


def _split_index_ops(container: ops.OpContainer, created_tables: set[str]) -> list[ops.MigrateOperation]:
    """Return ``container``'s operations with each index operation lifted out of its table's batch, in order."""
    result: list[ops.MigrateOperation] = []
    for op in container.ops:
        if isinstance(op, ops.ModifyTableOps):
            run: list[ops.MigrateOperation] = []
            for inner in op.ops:
                lifted = _safe_index_op(inner, created_tables)
                if lifted is None:
                    run.append(inner)
                    continue
                if run:
                    result.append(ops.ModifyTableOps(op.table_name, run, schema=op.schema))
                    run = []
                result.append(lifted)
            if run:
                result.append(ops.ModifyTableOps(op.table_name, run, schema=op.schema))
        else:
            result.append(_safe_index_op(op, created_tables) or op)
    return result


def _safe_index_op(op: ops.MigrateOperation, created_tables: set[str]) -> ops.MigrateOperation | None:
    if isinstance(op, ops.CreateIndexOp) and op.table_name not in created_tables:
        return BuildIndexOp(op)
    if isinstance(op, ops.DropIndexOp) and op.table_name not in created_tables:
        return DropIndexConcurrentlyOp(op)
    return None


def _required_columns_added(upgrade: ops.UpgradeOps) -> list[ops.AddColumnOp]:
    """Return the NOT NULL columns without a server default that are added to existing tables."""
    found = []
    for op in upgrade.ops:
        inner = op.ops if isinstance(op, ops.ModifyTableOps) else [op]
        found += [add for add in inner if isinstance(add, ops.AddColumnOp)
                  and not add.column.nullable and add.column.server_default is None]
    return found


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
    script.upgrade_ops.ops = _split_index_ops(script.upgrade_ops, created)
    script.downgrade_ops.ops = _split_index_ops(script.downgrade_ops, dropped)
    notes[script.rev_id] = [
        f"- {op.create.index_name} on {op.create.table_name}: which query does it serve? Quote it here, as "
        "004's docstring does (an index no query needs only slows writes)."
        for op in script.upgrade_ops.ops if isinstance(op, BuildIndexOp)]
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
