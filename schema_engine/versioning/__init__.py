"""Versioned schemas: an old and a new release of the application on one database, between expand and contract.

An expand revision E (module-level ``expand_steps = [...]``) makes the new shape exist beside the
old one. The old shape stays ``public`` itself; the new one is a schema of plain views,
``v_<E>``, one per table E changes; a trigger keeps an old column and its converted copy in step,
both ways. Its contract revision (``contracts = "<E>"``) removes the old shape.
``migrations_alembic/expand.py`` runs the phases with the statements built here; the site routes
each release to its version (``read_schemas``); ``env.py`` and ``plan`` refuse a contract while a
release older than E is connected.

What the database decides (a table's columns and grants, an old column's type, default and NOT
NULL), the SQL decides as it runs, in PL/pgSQL ``DO`` blocks reading the catalog: ``--sql``, the
checksums and squawk see exactly what runs. Every name in it is a checked identifier, quoted; the
up/down expressions are the revision author's SQL, never input at run time (``substitute``).

Along its seams:
- ``names``: what things are called, and the quoting of names;
- ``steps``: the steps an expand declares, and their up/down expressions;
- ``bookkeeping``: ``schema_versions``, what each expand found and what each contract took away;
- ``sync``: the trigger keeping old and new columns in step;
- ``views``: the version schemas and their grants;
- ``phases``: the physical changes of expand and contract, and their undos;
- ``fill``: the new columns of the rows written before expand;
- ``releases``: which release reads which version; the contract's refusal while an older one is connected.
"""
from schema_engine.versioning.bookkeeping import (
    CREATE_VERSIONS_SQL,
    contracted_sql,
    contracted_versions,
    forget_sql,
    null_allowed_by_expand,
    record_facts_sql,
    record_sql,
    was_not_null,
)
from schema_engine.versioning.fill import (
    declared_fills,
    fill_range,
    fill_sql,
    fill_tables,
    pending_fill_rows,
    pending_sql,
)
from schema_engine.versioning.names import (
    RELEASE_PREFIX,
    SCHEMA,
    VERSIONS_TABLE,
    archive_name,
    declared_table,
    fill_name,
    not_null_check,
    physical_name,
    qualified_table,
    release_application_name,
    sync_function,
    sync_trigger,
    version_schema,
)
from schema_engine.versioning.phases import (
    add_column_sql,
    add_not_null_check_sql,
    allow_null_sql,
    archive_sql,
    contract_table_sql,
    drop_new_column_sql,
    has_column_sql,
    none_null_sql,
    null_rows_sql,
    refuse_unfit_sql,
    uncontract_table_sql,
    validate_not_null_sql,
)
from schema_engine.versioning.releases import (
    Expand,
    ReleaseSession,
    contract_refusals,
    contracted_by,
    expands,
    in_flight_columns,
    is_expand,
    old_release_sessions,
    read_schemas,
    refuse_contract_while_old_release,
)
from schema_engine.versioning.steps import (
    ChangeType,
    DropColumn,
    RenameColumn,
    Step,
    changed_tables,
    check_steps,
    down_sql,
    removed_columns,
    substitute,
    up_sql,
)
from schema_engine.versioning.sync import (
    FILL_SETTING,
    FILL_SETTING_SQL,
    drop_sync_sql,
    sync_function_sql,
    sync_trigger_sql,
)
from schema_engine.versioning.views import (
    create_schema_sql,
    drop_older_views_sql,
    drop_version_sql,
    restore_older_views_sql,
    version_view_sql,
)

__all__ = [
    "CREATE_VERSIONS_SQL", "ChangeType", "DropColumn", "Expand", "FILL_SETTING", "FILL_SETTING_SQL",
    "RELEASE_PREFIX", "ReleaseSession", "RenameColumn", "SCHEMA", "Step", "VERSIONS_TABLE", "add_column_sql",
    "add_not_null_check_sql", "allow_null_sql", "archive_name", "archive_sql", "changed_tables", "check_steps",
    "contract_refusals", "contract_table_sql", "contracted_by", "contracted_sql", "contracted_versions",
    "create_schema_sql", "declared_fills", "declared_table", "down_sql", "drop_new_column_sql",
    "drop_older_views_sql", "drop_sync_sql", "drop_version_sql", "expands", "fill_name", "fill_range",
    "fill_sql", "fill_tables", "forget_sql", "has_column_sql", "in_flight_columns", "is_expand",
    "none_null_sql", "not_null_check", "null_allowed_by_expand", "null_rows_sql", "old_release_sessions",
    "pending_fill_rows", "pending_sql", "physical_name", "qualified_table", "read_schemas", "record_facts_sql",
    "record_sql", "refuse_contract_while_old_release", "refuse_unfit_sql", "release_application_name",
    "removed_columns", "restore_older_views_sql", "substitute", "sync_function", "sync_function_sql",
    "sync_trigger", "sync_trigger_sql", "uncontract_table_sql", "up_sql", "validate_not_null_sql",
    "version_schema", "version_view_sql", "was_not_null",
]
