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
- Renames, type changes and removed columns of existing tables (with an ``id``) become the steps
  of one expand revision and one contract revision (``migrations_alembic/expand.py``): the expand
  revision's ``expand_steps`` (``RenameColumn``, ``ChangeType``, ``DropColumn``) present the new
  shape beside the old one, for the release before it and the release after it at once; the
  contract revision (``contracts = <expand>``, the same steps) removes the old shape once that
  release is gone, after the fill of the new columns (``requires_backfills``). A removed column and
  an added one alike but for the name are a rename only when the author says so: ``--rename
  TABLE.OLD=NEW``, or yes to the question a terminal is asked (``confirm_rename``); never guessed.
  NOT NULL on an existing column is set by the contract revision (``helpers.set_not_null``); a
  UNIQUE constraint added to an existing table is a unique index built concurrently by the expand
  revision and made the constraint by the contract (``helpers.add_unique_constraint``). One
  autogenerate writes at most one expand and one contract revision, whatever it found.
- A column dropped from a table without an ``id`` is dropped at once. A column a downgrade drops
  keeps its values, as the shipped revisions do (the guide: archive before dropping):
  ``helpers.archive_columns`` copies the rows whose value a re-added column would not get back (its
  server default) into ``archive_<rev>_<table>``, and the upgrade that adds the column again runs
  ``helpers.restore_columns``, which puts them back.
- Named CHECK constraints, which Alembic does not compare, are compared by name
  (``compare_check_constraints``); one added to an existing table becomes
  ``helpers.add_check_constraint`` (``NOT VALID``, then ``VALIDATE`` without blocking writes, behind
  a data pre-check), one removed ``helpers.drop_check_constraint``.

The docstring stub asks, for each index added, which query it serves; a contract revision's
stub says what must be filled first. What the template needs of each revision travels in
``config.attributes`` (``REVISION_NOTES``, ``REVISION_DATA_CHECKS``, ``REVISION_ACCEPTED_FINDINGS``,
``REVISION_MODULE``), keyed by revision id.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

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
from sqlalchemy.dialects import postgresql

from schema_engine.errors import InvalidRename

HELPERS = "migrations_alembic.helpers"
REVISION_NOTES = "revision_notes"  # config.attributes[...][rev_id]: lines for the docstring stub
REVISION_DATA_CHECKS = "revision_data_checks"  # config.attributes[...][rev_id]: {name: query} (prechecks.py)
REVISION_ACCEPTED_FINDINGS = "revision_accepted_findings"  # config.attributes[...][rev_id]: {squawk rule: why}
REVISION_MODULE = "revision_module"  # config.attributes[...][rev_id]: module-level lines (expand_steps, contracts)
EXPAND = "migrations_alembic.expand"
# metadata.py names each column's model field class here (column.info), for the rename question.
MODEL_FIELD_INFO = "model_field"
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_RENAME = re.compile(rf"({_IDENTIFIER})\.({_IDENTIFIER})=(?:({_IDENTIFIER})\.)?({_IDENTIFIER})")
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


class UniqueConstraintOp(ops.MigrateOperation):
    """``helpers.add_unique_constraint`` over the unique index the expand built (``drop``: its undoing)."""

    def __init__(self, create: ops.CreateUniqueConstraintOp, *, drop: bool = False) -> None:
        self.create, self.drop = create, drop

    @property
    def name(self) -> str:
        return str(self.create.constraint_name)


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


@renderers.dispatch_for(UniqueConstraintOp)
def _render_unique_constraint(autogen_context: AutogenContext, op: UniqueConstraintOp) -> str:
    helper = "drop_unique_constraint" if op.drop else "add_unique_constraint"
    autogen_context.imports.add(f"from {HELPERS} import {helper}")
    return f"{helper}({op.name!r}, {op.create.table_name!r}, {list(op.create.columns)!r})"


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


# --- renames, type changes and removed columns: one expand revision, one contract revision ---------

@dataclass(frozen=True)
class Rename:
    """``--rename TABLE.OLD=NEW``: the column the database calls ``old`` is the one the models now call ``new``."""

    table: str
    old: str
    new: str

    @classmethod
    def parse(cls, text: str) -> Rename:
        """Return the rename ``text`` says (``calls.outcome=call_outcome``); raise ``InvalidRename`` if malformed."""
        match = _RENAME.fullmatch(text.strip())
        if match is None or match[3] not in (None, match[1]):
            raise InvalidRename(f"--rename {text!r}: say TABLE.OLD=NEW, one column of one table, "
                                "e.g. --rename calls.outcome=call_outcome")
        return cls(match[1], match[2], match[4])

    def __str__(self) -> str:
        return f"{self.table}.{self.old}={self.new}"


@dataclass(frozen=True)
class RenameCandidate:
    """A column removed and a column added on one existing table, alike but for the name: perhaps a rename."""

    table: str
    old: str
    new: str
    kind: str  # the model field's class (CharField), else the column's type

    @property
    def question(self) -> str:
        article = "an" if self.kind[:1] in "AEIOU" else "a"
        return f"Was {self.table}.{self.old} renamed to {self.table}.{self.new} ({article} {self.kind})? [y/N]"

    @property
    def rename(self) -> Rename:
        return Rename(self.table, self.old, self.new)


# Asked of each rename candidate no --rename named (a terminal's question); None: never asked.
ConfirmRename = Callable[[RenameCandidate], bool]


def _postgresql_type(type_: sa.types.TypeEngine) -> str:
    return type_.compile(dialect=postgresql.dialect()).lower()


@dataclass(frozen=True)
class Renamed:
    """A confirmed rename: ``RenameColumn`` in ``expand_steps``."""

    table: str
    old: str
    new: str

    def render(self, autogen_context: AutogenContext) -> str:
        autogen_context.imports.add(f"from {EXPAND} import RenameColumn")
        return f"RenameColumn({self.table!r}, {self.old!r}, {self.new!r})"

    def describe(self) -> str:
        return f"{self.table}.{self.old} is renamed {self.new}: the new shape calls it so, no data moves"


@dataclass(frozen=True)
class Retyped:
    """A column whose type the models changed: ``ChangeType``, converting with a cast both ways (editable)."""

    table: str
    column: str
    old_type: sa.types.TypeEngine
    new_type: sa.types.TypeEngine

    @property
    def up(self) -> str:
        return f"{self.column}::{_postgresql_type(self.new_type)}"

    @property
    def down(self) -> str:
        return f"{self.column}::{_postgresql_type(self.old_type)}"

    def render(self, autogen_context: AutogenContext) -> str:
        autogen_context.imports.add(f"from {EXPAND} import ChangeType")
        return (f"ChangeType({self.table!r}, {self.column!r}, {_repr_type(self.new_type, autogen_context)}, "
                f"up={self.up!r}, down={self.down!r})")

    def describe(self) -> str:
        return (f"{self.table}.{self.column} becomes {_postgresql_type(self.new_type)} (was "
                f"{_postgresql_type(self.old_type)}): a new column of that type, kept in step with the old one by a "
                f"trigger both ways and filled by this revision's fill. Check its conversions in expand_steps: up "
                f"{self.up!r} reads the old column, down {self.down!r} the new one (SQL over the column's name); "
                "edit them where a cast is not the conversion (text to jsonb: a cast fails on text that is not "
                "JSON; to a shorter varchar, it cuts)")


@dataclass(frozen=True)
class Dropped:
    """A column the models no longer have: ``DropColumn``."""

    table: str
    column: sa.Column  # as the database has it

    def render(self, autogen_context: AutogenContext) -> str:
        autogen_context.imports.add(f"from {EXPAND} import DropColumn")
        return f"DropColumn({self.table!r}, {self.column.name!r})"

    def describe(self) -> str:
        required = not self.column.nullable and self.column.server_default is None
        return (f"{self.table}.{self.column.name} leaves the new shape"
                + (" (NOT NULL without a default: expand makes it nullable, so that the new release's rows "
                   "pass)" if required else "")
                + "; contract archives its values and drops it")


Step = Renamed | Retyped | Dropped


class ExpandOp(ops.MigrateOperation):
    """``expand(revision, expand_steps)`` (``undo``: ``undo_expand``), with the module-level ``expand_steps``."""

    def __init__(self, revision: str, steps: Sequence[Step], *, undo: bool = False) -> None:
        self.revision, self.steps, self.undo = revision, list(steps), undo


class ContractOp(ops.MigrateOperation):
    """``contract(contracts, expand_steps)`` (``undo``: ``undo_contract``) in contract revision ``revision``."""

    def __init__(self, revision: str, expanded: str, steps: Sequence[Step], *, undo: bool = False) -> None:
        self.revision, self.expanded, self.steps, self.undo = revision, expanded, list(steps), undo


def _module_lines(autogen_context: AutogenContext, revision: str, lines: list[str]) -> None:
    config = autogen_context.migration_context.config
    assert config is not None  # autogenerate runs through alembic.command, which gives its Config
    config.attributes.setdefault(REVISION_MODULE, {})[revision] = lines


def _steps_lines(autogen_context: AutogenContext, steps: Sequence[Step]) -> list[str]:
    return ["expand_steps = [", *(f"    {step.render(autogen_context)}," for step in steps), "]"]


@renderers.dispatch_for(ExpandOp)
def _render_expand(autogen_context: AutogenContext, op: ExpandOp) -> str:
    helper = "undo_expand" if op.undo else "expand"
    autogen_context.imports.add(f"from {EXPAND} import {helper}")
    _module_lines(autogen_context, op.revision, [
        "# The new shape beside the old one (migrations_alembic/expand.py), for the release before this revision",
        "# and the release after it at once; its contract revision removes the old shape.",
        *_steps_lines(autogen_context, op.steps)])
    return f"{helper}(revision, expand_steps)"


@renderers.dispatch_for(ContractOp)
def _render_contract(autogen_context: AutogenContext, op: ContractOp) -> str:
    helper = "undo_contract" if op.undo else "contract"
    autogen_context.imports.add(f"from {EXPAND} import {helper}")
    lines = [f"contracts = {op.expanded!r}  # the expand revision whose old shape this removes"]
    if any(isinstance(step, Retyped) for step in op.steps):
        autogen_context.imports.add(f"from {EXPAND} import fill_name")
        lines += ["# Its new columns filled first: the backfill gate refuses this revision until then.",
                  "requires_backfills = (fill_name(contracts),)"]
    lines += ["# The steps of the expand revision, as it wrote them.", *_steps_lines(autogen_context, op.steps)]
    _module_lines(autogen_context, op.revision, lines)
    return f"{helper}(contracts, expand_steps)"


def _candidate_kind(column: sa.Column) -> str:
    return str(column.info.get(MODEL_FIELD_INFO) or column.type)


def _alike_but_for_the_name(context: Any, removed: sa.Column, added: sa.Column) -> bool:
    """Whether ``removed`` (as the database has it) and ``added`` (as the models declare it) differ only in name."""
    return (not context.impl.compare_type(removed, added) and bool(removed.nullable) == bool(added.nullable)
            and (removed.server_default is None) == (added.server_default is None))


def _column_ops(upgrade: ops.UpgradeOps, created: set[str]) -> Iterable[tuple[ops.ModifyTableOps, Any]]:
    for modify in upgrade.ops:
        if isinstance(modify, ops.ModifyTableOps) and modify.table_name not in created:
            for inner in list(modify.ops):
                yield modify, inner


def _rename_refused(rename: Rename, upgrade: ops.UpgradeOps, created: set[str], chosen: list[Renamed]) -> str:
    """Say in one line why ``rename`` names no rename candidate of this autogenerate."""
    removed = {(modify.table_name, op.column_name) for modify, op in _column_ops(upgrade, created)
               if isinstance(op, ops.DropColumnOp)}
    added = {(modify.table_name, op.column.name) for modify, op in _column_ops(upgrade, created)
             if isinstance(op, ops.AddColumnOp)}
    taken = {(r.table, r.old) for r in chosen} | {(r.table, r.new) for r in chosen}
    if (rename.table, rename.old) in taken or (rename.table, rename.new) in taken:
        why = "another --rename names one of these columns already"
    elif (rename.table, rename.old) not in removed:
        why = f"the models still have {rename.table}.{rename.old}, or the table has no such column"
    elif (rename.table, rename.new) not in added:
        why = f"the models add no column {rename.table}.{rename.new}"
    else:
        why = (f"{rename.table}.{rename.old} and {rename.table}.{rename.new} differ in type, nullability or default: "
               "a rename keeps the column as it is (rename it first, change it in a later revision)")
    return f"--rename {rename} names no rename this autogenerate can make: {why}"


def _renames(context: Any, upgrade: ops.UpgradeOps, created: set[str], given: Sequence[Rename],
             confirm: ConfirmRename | None) -> tuple[list[Renamed], list[RenameCandidate]]:
    """Return the renames ``given`` names and ``confirm`` says yes to (their removal and addition taken
    out), and the candidates left as a removal and an addition.

    Each ``given`` must name a candidate (``InvalidRename`` otherwise); the other candidates are asked
    of ``confirm``, a column at most once. Without either, a removal and an addition stay what they are.
    """
    candidates = []
    for modify, removed in _column_ops(upgrade, created):
        if isinstance(removed, ops.DropColumnOp):
            candidates += [(modify, removed, added) for added in modify.ops if isinstance(added, ops.AddColumnOp)
                           and _alike_but_for_the_name(context, removed.to_column(), added.column)]
    # Alembic finds columns by set difference: in name order, the questions and the steps are the same each time.
    candidates.sort(key=lambda found: (found[0].table_name, found[1].column_name, found[2].column.name))
    chosen: list[Renamed] = []
    taken: set[tuple[str, str]] = set()

    def take(modify: ops.ModifyTableOps, removed: ops.DropColumnOp, added: ops.AddColumnOp) -> None:
        chosen.append(Renamed(modify.table_name, removed.column_name, added.column.name))
        taken.update({(modify.table_name, removed.column_name), (modify.table_name, added.column.name)})
        modify.ops.remove(removed)
        modify.ops.remove(added)

    for rename in given:
        match = [(m, r, a) for m, r, a in candidates
                 if (m.table_name, r.column_name, a.column.name) == (rename.table, rename.old, rename.new)
                 and not {(m.table_name, r.column_name), (m.table_name, a.column.name)} & taken]
        if not match:
            raise InvalidRename(_rename_refused(rename, upgrade, created, chosen))
        take(*match[0])
    declined = []
    for modify, removed, added in candidates:
        if {(modify.table_name, removed.column_name), (modify.table_name, added.column.name)} & taken:
            continue
        candidate = RenameCandidate(modify.table_name, removed.column_name, added.column.name,
                                    _candidate_kind(added.column))
        if confirm is not None and confirm(candidate):
            take(modify, removed, added)
        else:
            declined.append(candidate)
    return chosen, declined


def _expand_steps(context: Any, upgrade: ops.UpgradeOps, *, created: set[str], keyed: set[str],
                  renames: Sequence[Rename], confirm: ConfirmRename | None
                  ) -> tuple[list[Step], list[RenameCandidate]]:
    """Take the renames, type changes and column removals of existing tables out of ``upgrade``; return them
    as steps, and the rename candidates not taken for renames.

    Type changes and removals need an ``id`` (the fill and the archive go by it); elsewhere they stay.
    """
    renamed, declined = _renames(context, upgrade, created, renames, confirm)
    retyped: list[Step] = []
    dropped: list[Step] = []
    for modify, op in _column_ops(upgrade, created):
        if modify.table_name not in keyed:
            continue
        if isinstance(op, ops.AlterColumnOp) and op.modify_type is not None:
            retyped.append(Retyped(modify.table_name, op.column_name, op.existing_type, op.modify_type))
            op.modify_type = None
            if not op.has_changes():
                modify.ops.remove(op)
        elif isinstance(op, ops.DropColumnOp):
            dropped.append(Dropped(modify.table_name, op.to_column()))
            modify.ops.remove(op)
    upgrade.ops = [op for op in upgrade.ops if not (isinstance(op, ops.ModifyTableOps) and not op.ops)]
    by_name = sorted(retyped, key=lambda step: (step.table, step.column))
    by_name += sorted(dropped, key=lambda step: (step.table, step.column.name))
    return [*renamed, *by_name], declined


def _columns_made_not_null(upgrade: ops.UpgradeOps, created: set[str], keyed: set[str]) -> list[SetNotNullOp]:
    """Take NOT NULL on existing columns out of ``upgrade``; return it as ``helpers.set_not_null`` steps.

    Only on tables with an ``id``, by which the data check names the rows still NULL; elsewhere it stays.
    """
    found = []
    for modify, op in _column_ops(upgrade, created):
        if isinstance(op, ops.AlterColumnOp) and op.modify_nullable is False and modify.table_name in keyed:
            found.append(SetNotNullOp(modify.table_name, op.column_name, op.modify_type or op.existing_type))
            op.modify_nullable = None
            if not op.has_changes():
                modify.ops.remove(op)
    upgrade.ops = [op for op in upgrade.ops if not (isinstance(op, ops.ModifyTableOps) and not op.ops)]
    return found


def _uniques_added(upgrade: ops.UpgradeOps, created: set[str], keyed: set[str]
                   ) -> list[ops.CreateUniqueConstraintOp]:
    """Take the UNIQUE constraints added to existing tables (with an ``id``) out of ``upgrade``.

    Each becomes a unique index built without blocking writes (expand) and the constraint made of it
    (contract); a data check names the rows that share a value first.
    """
    found = []
    for modify, op in _column_ops(upgrade, created):
        if isinstance(op, ops.CreateUniqueConstraintOp) and modify.table_name in keyed:
            found.append(op)
            modify.ops.remove(op)
    upgrade.ops = [op for op in upgrade.ops if not (isinstance(op, ops.ModifyTableOps) and not op.ops)]
    return found


def _unique_index(unique: ops.CreateUniqueConstraintOp) -> ops.CreateIndexOp:
    return ops.CreateIndexOp(str(unique.constraint_name), unique.table_name, list(unique.columns), unique=True)


def _duplicates_query(unique: ops.CreateUniqueConstraintOp) -> str:
    columns = ", ".join(unique.columns)
    present = " AND ".join(f"{column} IS NOT NULL" for column in unique.columns)  # NULLs never clash
    return f"SELECT {columns} FROM {unique.table_name} WHERE {present} GROUP BY {columns} HAVING count(*) > 1"


def _index_columns(op: ops.CreateIndexOp | ops.DropIndexOp) -> set[str]:
    create = op if isinstance(op, ops.CreateIndexOp) else op._reverse
    return {str(getattr(column, "name", column)) for column in (create.columns if create is not None else ())}


def _index_ops_of_renamed(upgrade: ops.UpgradeOps, renamed: list[Renamed]) -> list[ops.MigrateOperation]:
    """Take out of ``upgrade`` the index operations on renamed columns: they run after the contract's rename."""
    names = {(step.table, name) for step in renamed for name in (step.old, step.new)}
    moved = []
    for container in [upgrade, *(op for op in upgrade.ops if isinstance(op, ops.ModifyTableOps))]:
        for op in list(container.ops):
            if isinstance(op, (ops.CreateIndexOp, ops.DropIndexOp)) and {
                    (op.table_name, column) for column in _index_columns(op)} & names:
                container.ops.remove(op)
                moved.append(op)
    upgrade.ops = [op for op in upgrade.ops if not (isinstance(op, ops.ModifyTableOps) and not op.ops)]
    return moved


def _expand_notes(steps: Sequence[Step], contract_id: str) -> list[str]:
    return [f"- Expand step: the models' new shape beside the old one, for the release before this revision and the "
            f"release after it at once (migrations_alembic/expand.py); revision {contract_id} removes the old shape "
            "once the release before is stopped.",
            *(f"- {step.describe()}." for step in steps)]


def _contract_notes(expand_id: str, steps: Sequence[Step]) -> list[str]:
    notes = [f"Contract step of {expand_id}: removes the old shape of its steps (migrations_alembic/expand.py), "
             "refused while a session of the release before it is connected."]
    if any(isinstance(step, Retyped) for step in steps):
        notes.append(f"Run the fill of {expand_id}'s new columns first (requires_backfills): the backfill gate "
                     "refuses this revision until it is finished.")
    return notes


def _accepted_findings(expand_id: str, steps: Sequence[Step]) -> tuple[dict[str, str], dict[str, str]]:
    """Return the squawk findings the expand and the contract revision accept, each with why."""
    expand: dict[str, str] = {}
    contract: dict[str, str] = {}
    # Accepted for every removed column: expand(), which cannot look in --sql mode, may say DROP NOT NULL for any.
    loosened = [f"{step.table}.{step.column.name}" for step in steps if isinstance(step, Dropped)]
    if loosened:
        expand["ban-drop-not-null"] = (f"{', '.join(loosened)}: the release after this revision writes no value "
                                       "there (NOT NULL without a default would refuse its rows); the contract "
                                       "revision drops the column")
    gone = "the release that read them is stopped first (contract refuses while one of its sessions is connected)"
    renamed = [f"{step.table}.{step.old} to {step.new}" for step in steps if isinstance(step, Renamed)]
    renamed += [f"{step.table}.{step.column}'s new column to {step.column}" for step in steps
                if isinstance(step, Retyped)]
    if renamed:
        contract["renaming-column"] = f"contract step of {expand_id}: renames {', '.join(renamed)}; {gone}"
    dropped = [f"{step.table}.{step.column.name}" for step in steps if isinstance(step, Dropped)]
    dropped += [f"{step.table}.{step.column}'s old column" for step in steps if isinstance(step, Retyped)]
    if dropped:
        contract["ban-drop-column"] = (f"contract step of {expand_id}: drops {', '.join(dropped)}, values archived "
                                       f"first; {gone}")
    return expand, contract


def _refuse_unmatched(renames: Sequence[Rename]) -> None:
    if renames:
        raise InvalidRename(f"--rename {renames[0]} names no rename this autogenerate can make: "
                            "the models and the database do not differ")


def deployable(context: Any, revision: Any, directives: list[Any], *, renames: Sequence[Rename] = (),
               confirm_rename: ConfirmRename | None = None) -> None:
    """``process_revision_directives``: rewrite an autogenerated revision as described above.

    ``renames`` (``--rename``) and ``confirm_rename`` (a terminal's answers) say which removed and
    added columns are renames; one of ``renames`` that names none raises ``InvalidRename`` before
    any file is written.
    """
    if not directives or not getattr(directives[0], "upgrade_ops", None) or directives[0].upgrade_ops.is_empty():
        _refuse_unmatched(renames)
        return
    script = directives[0]
    attributes = context.config.attributes
    notes = attributes.setdefault(REVISION_NOTES, {})
    checks = attributes.setdefault(REVISION_DATA_CHECKS, {})
    accepted = attributes.setdefault(REVISION_ACCEPTED_FINDINGS, {})
    created = {op.table_name for op in script.upgrade_ops.ops if isinstance(op, ops.CreateTableOp)}
    dropped = {op.table_name for op in script.downgrade_ops.ops if isinstance(op, ops.CreateTableOp)}
    keyed = _tables_with_ids(context.opts.get("target_metadata"))

    steps, declined = _expand_steps(context, script.upgrade_ops, created=created, keyed=keyed, renames=renames,
                                    confirm=confirm_rename)
    after_rename = _index_ops_of_renamed(script.upgrade_ops, [step for step in steps if isinstance(step, Renamed)])
    made_not_null = _columns_made_not_null(script.upgrade_ops, created, keyed)
    uniques = _uniques_added(script.upgrade_ops, created, keyed)
    if steps or made_not_null or uniques:  # the downgrade undoes what is left of the upgrade
        script.upgrade_ops.reverse_into(script.downgrade_ops)

    required = _required_columns_added(script.upgrade_ops)
    for add in required:
        add.column.nullable = True  # expand: the contract revision below makes it NOT NULL

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
    notes[script.rev_id] += [
        f"- {c.table}.{c.old} is removed and {c.table}.{c.new} added, alike but for the name: not taken for a rename. "
        f"If it is one, write this revision again with --rename {c.rename} (or answer yes on a terminal); as it is, "
        f"the new release never sees the values of {c.table}.{c.old}." for c in declined]
    for op in script.upgrade_ops.ops:
        if isinstance(op, AddCheckConstraintOp):
            table, name = op.create.table_name, str(op.create.constraint_name)
            notes[script.rev_id].append(
                f"- {name} on {table} is added NOT VALID and validated without blocking writes "
                "(helpers.add_check_constraint).")
            if table in keyed and table not in added_to:  # on columns this revision adds, no row can break it yet
                checks.setdefault(script.rev_id, {})[f"every row of {table} satisfies {name}"] = (
                    f"SELECT id FROM {table} WHERE NOT ({op.condition}) ORDER BY id")

    contract_id = uuid.uuid4().hex[-12:]
    for unique in uniques:
        name, table = str(unique.constraint_name), unique.table_name
        script.upgrade_ops.ops.append(BuildIndexOp(_unique_index(unique)))
        script.downgrade_ops.ops.insert(0, DropIndexConcurrentlyOp(_unique_index(unique).reverse()))
        notes[script.rev_id].append(f"- {name}: a unique index on {table} ({', '.join(unique.columns)}), built "
                                    f"without blocking writes; revision {contract_id} makes it the constraint.")
        checks.setdefault(script.rev_id, {})[f"no two rows of {table} share {', '.join(unique.columns)}"] = (
            _duplicates_query(unique))
    tightened = [SetNotNullOp(add.table_name, add.column.name, add.column.type) for add in required]
    for op in tightened:
        notes[script.rev_id].append(f"- {op.table}.{op.column} is added nullable (expand); revision {contract_id} "
                                    "makes it NOT NULL once every row has a value: fill it in between.")
    tightened += made_not_null
    if made_not_null and not (steps or required or uniques or after_rename or script.upgrade_ops.ops):
        # Only NOT NULL on existing columns: nothing to expand, this revision is the contract step itself.
        script.upgrade_ops.ops = list(made_not_null)
        script.downgrade_ops.ops = [_allowing_null(op) for op in reversed(made_not_null)]
        _not_null_notes_and_checks(made_not_null, notes[script.rev_id], checks.setdefault(script.rev_id, {}))
        return
    if not (steps or tightened or uniques):
        return
    notes[contract_id] = _contract_notes(script.rev_id, steps) if steps else [
        f"Contract step of {script.rev_id}: what it added, made binding without blocking writes."]
    up: list[ops.MigrateOperation] = []
    down: list[ops.MigrateOperation] = []
    if steps:
        script.upgrade_ops.ops.append(ExpandOp(script.rev_id, steps))
        script.downgrade_ops.ops.insert(0, ExpandOp(script.rev_id, steps, undo=True))
        notes[script.rev_id] += _expand_notes(steps, contract_id)
        accepted[script.rev_id], accepted[contract_id] = _accepted_findings(script.rev_id, steps)
        up, down = _contract_ops(contract_id, script.rev_id, steps, after_rename)
    _not_null_notes_and_checks(tightened, notes[contract_id], checks.setdefault(contract_id, {}))
    notes[contract_id] += [f"- {UniqueConstraintOp(unique).name} becomes the UNIQUE constraint of {unique.table_name} "
                           "over the index its expand built (helpers.add_unique_constraint): no scan, no long lock."
                           for unique in uniques]
    up += [UniqueConstraintOp(unique) for unique in uniques] + tightened
    down = ([_allowing_null(op) for op in reversed(tightened)]
            + [UniqueConstraintOp(unique, drop=True) for unique in reversed(uniques)] + down)
    named = ", ".join(f"{op.table}.{op.column}" for op in tightened)
    message = f"contract {script.message}" if steps or uniques else f"make {named} not null"
    directives.append(ops.MigrationScript(
        rev_id=contract_id, message=message,
        imports=set(), upgrade_ops=ops.UpgradeOps(up), downgrade_ops=ops.DowngradeOps(down),
        head=directives[-1].rev_id, splice=False, branch_label=None, version_path=script.version_path,
        depends_on=None))


def _contract_ops(contract_id: str, expand_id: str, steps: list[Step], after_rename: list[ops.MigrateOperation]
                  ) -> tuple[list[ops.MigrateOperation], list[ops.MigrateOperation]]:
    """Return the contract's upgrade and downgrade: the steps, and the index changes of renamed columns after them.

    An index on a renamed column is dropped and built under its new name once the column has it;
    the downgrade drops the new one before the column takes its old name back, and builds the old one after.
    """
    def concurrent(op: ops.MigrateOperation) -> ops.MigrateOperation:
        return _safe_index_op(op, set()) or op

    drops = [op for op in after_rename if isinstance(op, ops.DropIndexOp)]
    creates = [op for op in after_rename if isinstance(op, ops.CreateIndexOp)]
    up = [ContractOp(contract_id, expand_id, steps), *map(concurrent, drops), *map(concurrent, creates)]
    down = [*(concurrent(op.reverse()) for op in reversed(creates)),
            ContractOp(contract_id, expand_id, steps, undo=True),
            *(concurrent(op.reverse()) for op in reversed(drops))]
    return up, down


def _allowing_null(op: SetNotNullOp) -> SetNotNullOp:
    return SetNotNullOp(op.table, op.column, op.type_, allow_null=True)


def _not_null_notes_and_checks(tightened: list[SetNotNullOp], notes: list[str], checks: dict[str, str]) -> None:
    for op in tightened:
        notes.append(f"- {op.table}.{op.column} becomes NOT NULL without blocking writes (helpers.set_not_null). "
                     "Fill it first (a data migration or a backfill): the data check below refuses the upgrade while "
                     "a row is NULL, before any lock.")
        checks[f"no NULL in {op.table}.{op.column}"] = (
            f"SELECT id FROM {op.table} WHERE {op.column} IS NULL ORDER BY id")
