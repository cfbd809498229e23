"""The version schemas: one plain view per table an expand changes, presenting it in that expand's shape.

Each view is made by a ``DO`` block that reads the table's columns from the catalog when it runs
(so ``--sql`` and the checksums see what runs), and gets the table's grants. A plain view of one
table is auto-updatable: INSERT, UPDATE, DELETE and RETURNING go through it to the table, and
the table's defaults fill what a write leaves out.
"""
from __future__ import annotations

from typing import Iterable

from schema_engine.versioning.names import (
    VERSIONS,
    do_block,
    literal,
    physical_name,
    quoted,
    table_name,
    version_schema,
)
from schema_engine.versioning.steps import ChangeType, RenameColumn, Step, of_table

# The privileges a view can hold that a role may have on its table.
_VIEW_PRIVILEGES = "('SELECT', 'INSERT', 'UPDATE', 'DELETE', 'REFERENCES', 'TRIGGER')"


def create_schema_sql(schema: str) -> str:
    return f"CREATE SCHEMA IF NOT EXISTS {quoted(schema)}"


def _create_view(schema_sql: str, table: str, *, renamed: dict[str, str], hidden: Iterable[str]) -> str:
    """Return PL/pgSQL creating view ``<schema>.table`` (``schema_sql``: the quoted schema name, as text)."""
    hidden = sorted(set(hidden))
    cases = "".join(f"\n            WHEN {literal(column)} THEN {literal(f'{quoted(column)} AS {quoted(alias)}')}"
                    for column, alias in renamed.items())
    listed = (f"CASE a.attname{cases}\n            ELSE quote_ident(a.attname) END" if cases
              else "quote_ident(a.attname)")
    left_out = f"\n      AND a.attname NOT IN ({', '.join(literal(c) for c in hidden)})" if hidden else ""
    return (f"    SELECT string_agg({listed}, ', ' ORDER BY a.attnum) INTO listed\n"
            f"    FROM pg_attribute a WHERE a.attrelid = {literal(table_name(table))}::regclass "
            f"AND a.attnum > 0 AND NOT a.attisdropped{left_out};\n"
            f"    EXECUTE 'CREATE VIEW ' || {schema_sql} || {literal('.' + quoted(table) + ' AS SELECT ')} || listed\n"
            f"        || {literal(' FROM ' + table_name(table))};")


def _grant(schema_sql: str, table: str) -> str:
    """Return PL/pgSQL granting on view ``<schema>.table`` what each role holds on the table, and USAGE on the schema.

    The table's owner included (its privileges are implicit while the table has no grants); the
    view's owner, who runs this, holds them all already.
    """
    return ("    FOR g IN SELECT DISTINCT acl.grantee, acl.privilege_type\n"
            "             FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) acl\n"
            f"             WHERE c.oid = {literal(table_name(table))}::regclass AND acl.privilege_type IN "
            f"{_VIEW_PRIVILEGES}\n"
            "               AND acl.grantee <> (SELECT oid FROM pg_roles WHERE rolname = current_user)\n"
            "    LOOP\n"
            "        grantee := CASE WHEN g.grantee = 0 THEN 'PUBLIC' "
            "ELSE quote_ident(pg_get_userbyid(g.grantee)) END;\n"
            f"        EXECUTE 'GRANT USAGE ON SCHEMA ' || {schema_sql} || ' TO ' || grantee;\n"
            f"        EXECUTE 'GRANT ' || g.privilege_type || ' ON ' || {schema_sql} || {literal('.' + quoted(table))}"
            " || ' TO ' || grantee;\n"
            "    END LOOP;")


def version_view_sql(revision: str, table: str, steps: Iterable[Step]) -> str:
    """Return a DO block creating ``v_<revision>.table``: every column of ``table`` in expand ``revision``'s shape.

    In the table's column order: a renamed column under its new name, a type-changed column's new
    copy under the column's name (its old column left out), a dropped column left out.
    """
    renamed: dict[str, str] = {}
    hidden: list[str] = []
    for step in of_table(steps, table):
        if isinstance(step, RenameColumn):
            renamed[step.old] = step.new
        elif isinstance(step, ChangeType):
            renamed[physical_name(revision, step.column)] = step.column
            hidden.append(step.column)
        else:
            hidden.append(step.column)
    schema_sql = literal(quoted(version_schema(revision)))
    return do_block("view", _create_view(schema_sql, table, renamed=renamed, hidden=hidden) + "\n"
                    + _grant(schema_sql, table), "listed text", "g record", "grantee text")


def drop_version_sql(revision: str, tables: Iterable[str]) -> list[str]:
    """Return the SQL dropping ``v_<revision>``: its views, then the schema (refused if anything else is in it)."""
    schema = quoted(version_schema(revision))
    return [*(f"DROP VIEW IF EXISTS {schema}.{quoted(table)}" for table in tables), f"DROP SCHEMA IF EXISTS {schema}"]


def _dropped_key(table: str) -> str:
    return literal("{dropped_views," + table + "}")


def drop_older_views_sql(revision: str, table: str) -> str:
    """Return a DO block dropping the other versions' views of ``table``, noting each in expand ``revision``'s facts.

    Contract removes the old shape, which they present; a version schema left empty goes too. The
    contract's downgrade puts both back (``restore_older_views_sql``).
    """
    return do_block(
        "older",
        "    FOR v IN SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\n"
        f"             JOIN {VERSIONS} s ON s.schema = n.nspname\n"
        f"             WHERE c.relname = {literal(table)} AND c.relkind = 'v' AND s.revision <> {literal(revision)}\n"
        "             ORDER BY n.nspname\n"
        "    LOOP\n"
        f"        EXECUTE 'DROP VIEW ' || quote_ident(v.nspname) || {literal('.' + quoted(table))};\n"
        "        dropped := dropped || to_jsonb(v.nspname::text);\n"
        "        IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\n"
        "                       WHERE n.nspname = v.nspname) THEN\n"
        "            EXECUTE 'DROP SCHEMA ' || quote_ident(v.nspname);\n"
        "        END IF;\n"
        "    END LOOP;\n"
        f"    UPDATE {VERSIONS} SET facts = jsonb_set(facts || jsonb_build_object('dropped_views', "
        f"coalesce(facts -> 'dropped_views', '{{}}')), {_dropped_key(table)}, dropped)\n"
        f"        WHERE revision = {literal(revision)};",
        "v record", "dropped jsonb := '[]'")


def restore_older_views_sql(revision: str, table: str, hidden: Iterable[str]) -> str:
    """Return a DO block putting back the views of ``table`` that ``drop_older_views_sql`` dropped.

    Each presents the table as it is again (the old shape), less ``hidden`` (expand ``revision``'s
    new columns), with the table's grants.
    """
    return do_block(
        "older",
        f"    FOR schema_name IN SELECT jsonb_array_elements_text(facts #> {_dropped_key(table)}) FROM {VERSIONS}\n"
        f"                       WHERE revision = {literal(revision)}\n"
        "    LOOP\n"
        "        EXECUTE 'CREATE SCHEMA IF NOT EXISTS ' || quote_ident(schema_name);\n"
        + _indented(_create_view("quote_ident(schema_name)", table, renamed={}, hidden=hidden)) + "\n"
        + _indented(_grant("quote_ident(schema_name)", table)) + "\n"
        "    END LOOP;\n"
        f"    UPDATE {VERSIONS} SET facts = facts #- {_dropped_key(table)} WHERE revision = {literal(revision)};",
        "schema_name text", "listed text", "g record", "grantee text")


def _indented(statements: str) -> str:
    return "\n".join(f"    {line}" for line in statements.splitlines())
