"""The names versioned schemas give things, and how their SQL is written around them.

Every name that reaches SQL text is a plain identifier (lowercase letters, digits and ``_``),
checked here, and double-quoted where it is used: a name from a revision file cannot become SQL.
"""
from __future__ import annotations

import re

from schema_engine.errors import InvalidExpandStep

SCHEMA = "public"  # the old shape: the tables themselves
VERSIONS_TABLE = "schema_versions"  # the engine's bookkeeping of expands (as the checksums table)
VERSIONS = f"{SCHEMA}.{VERSIONS_TABLE}"
RELEASE_PREFIX = "reautomation@"  # a release's application_name: this prefix, then its code's head revision
MAX_IDENTIFIER = 63  # PostgreSQL keeps 63 bytes of a name
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_REVISION = re.compile(r"[0-9a-z_]+")


def identifier(name: object, what: str) -> str:
    """Return ``name`` if it is a plain identifier; else raise ``InvalidExpandStep`` saying what it names."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name) or len(name) > MAX_IDENTIFIER:
        raise InvalidExpandStep(f"{what} {name!r} is not a plain identifier (lowercase letters, digits and _, at "
                                f"most {MAX_IDENTIFIER}); write this change by hand")
    return name


def quoted(name: str) -> str:
    """Return a name already checked by ``identifier`` (or built from checked ones) double-quoted."""
    return f'"{name}"'


def literal(text: str) -> str:
    """Return ``text`` as an SQL string literal (standard_conforming_strings, PostgreSQL's default)."""
    return "'" + text.replace("'", "''") + "'"


def table_name(table: str) -> str:
    """Return ``table`` of the old shape, qualified and quoted: ``public."calls"``."""
    return f"{SCHEMA}.{quoted(table)}"


def revision_id(revision: object) -> str:
    """Return ``revision`` if it can be part of a name (``006_backfill_controls``, ``0a1b2c3d4e5f``); else raise."""
    if not isinstance(revision, str) or not _REVISION.fullmatch(revision) or len(revision) + 2 > MAX_IDENTIFIER:
        raise InvalidExpandStep(f"revision id {revision!r} cannot name a version schema (lowercase letters, "
                                f"digits and _, at most {MAX_IDENTIFIER - 2})")
    return revision


def version_schema(revision: str) -> str:
    """Return the schema of views presenting the tables in expand ``revision``'s shape: ``v_<revision>``."""
    return f"v_{revision_id(revision)}"


def qualified_table(schema: str, table: str) -> str:
    """Return a Django model's ``db_table`` that reads ``table`` through ``schema``: ``"v_0a1b"."calls"``."""
    return f"{quoted(identifier(schema, 'schema'))}.{quoted(identifier(table, 'table'))}"


def declared_table(db_table: str) -> str:
    """Return the table a model's ``db_table`` names, without the version schema ``qualified_table`` put before it."""
    return db_table.rsplit(".", 1)[-1].strip('"') if db_table.startswith('"') else db_table


def physical_name(revision: str, column: str) -> str:
    """Return the name of the new-typed copy of ``column`` that expand ``revision`` adds: ``_<revision>_<column>``."""
    return f"_{revision_id(revision)}_{identifier(column, 'column')}"[:MAX_IDENTIFIER]


def fill_name(revision: str) -> str:
    """Return the name of the backfill that fills expand ``revision``'s new columns: ``expand_<revision>``."""
    return f"expand_{revision}"


def sync_function(revision: str, table: str) -> str:
    """Return the name of the trigger function keeping ``table``'s old and new columns in step."""
    return f"_sync_{revision_id(revision)}_{identifier(table, 'table')}"[:MAX_IDENTIFIER]


def sync_trigger(revision: str) -> str:
    """Return the name of expand ``revision``'s trigger (one per table it changes a type in)."""
    return f"_sync_{revision_id(revision)}"[:MAX_IDENTIFIER]


def archive_name(revision: str, table: str) -> str:
    """Return the table where ``revision`` keeps the values of ``table``'s removed columns.

    A contract revision on PostgreSQL; on SQLite, where expand applies the whole change, the expand revision.
    """
    return f"archive_{revision_id(revision)}_upgrade_{identifier(table, 'table')}"[:MAX_IDENTIFIER]


def not_null_check(table: str, column: str) -> str:
    """Return the name ``helpers.set_not_null`` gives the CHECK that stands for a NOT NULL."""
    return f"ck_{identifier(table, 'table')}_{identifier(column, 'column')}_not_null"[:MAX_IDENTIFIER]


def release_application_name(head: str) -> str:
    """Return the ``application_name`` of a release whose code's head revision is ``head``."""
    return f"{RELEASE_PREFIX}{head}"[:MAX_IDENTIFIER]


def do_block(tag: str, body: str, *declare: str) -> str:
    """Return a PL/pgSQL ``DO`` block (dollar-quoted with ``tag``) running ``body``, declaring ``declare``."""
    declared = "DECLARE\n" + "".join(f"    {variable};\n" for variable in declare) if declare else ""
    return f"DO ${tag}$\n{declared}BEGIN\n{body}\nEND\n${tag}$"
