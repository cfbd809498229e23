"""This release's own version of the schema: which tables it reads through a version schema, and its name.

During an expand/contract change (docs/zero-downtime.md) two releases run on one database: the one
before the change reads the tables in ``public``, in their old shape; the one after reads the tables
the change touches through the views of its expand revision's version schema (``v_<revision>``), in
the new shape. Which is which follows from the code (``schema_engine.versioning.read_schemas``: the
newest expand of this release's revision chain that changes a table), and from the database once
that expand is contracted: the table then has the new shape itself, and is read from ``public``.

The route is the models' table name itself, qualified (``"v_0a1b2c"."calls"``): every statement names
its schema, so it holds on any connection, through a transaction pooler too (PgBouncer in transaction
mode hands each transaction any server session: a ``SET search_path`` made at connect would reach
other clients' transactions and be missing from this one's).

Each connection also says which release it is (``application_name`` ``reautomation@<head revision>``):
a contract is refused while sessions of a release before its expand are connected.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from django.db import models

from schema_engine import database, versioning
from schema_engine.errors import SchemaError
from schema_engine.state import script_directory

log = logging.getLogger(__name__)


def route_models(all_models: Iterable[type[models.Model]], schemas: dict[str, str]) -> dict[str, str]:
    """Qualify the table name of each model whose table a version schema presents; return {table: schema} routed."""
    routed = {}
    for model in all_models:
        opts = model._meta
        table = versioning.declared_table(opts.db_table)
        schema = schemas.get(table)
        if schema is None or opts.proxy:
            continue
        opts.db_table = versioning.qualified_table(schema, table)
        routed[table] = schema
    return routed


def _contracted(settings_dict: dict[str, Any]) -> frozenset[str]:
    """The expands contracted on the database; none if it cannot say (unreachable: every expand still in flight)."""
    try:
        with database.connect(database.sqlalchemy_url(settings_dict)) as connection:
            return versioning.contracted_versions(connection)
    except SchemaError as exc:
        log.warning("release: could not read which expands are contracted (%s): reading their tables through "
                    "their version schemas", exc)
        return frozenset()


def configure(databases: dict[str, dict[str, Any]], all_models: Iterable[type[models.Model]]) -> dict[str, str]:
    """Route the models to this release's version schemas and name its connections; return what was routed.

    Only on PostgreSQL (SQLite has no version schemas: an expand there applies the whole change). A
    revision file that cannot be read routes nothing: the site still starts, and its schema page
    (and every ``migrate_schema`` command) names the file.
    """
    default = databases.get("default", {})
    if "postgresql" not in default.get("ENGINE", ""):
        return {}
    try:
        script = script_directory()
        head = script.get_current_head()
        schemas = versioning.read_schemas(script)
        if schemas:  # only a chain with expands asks the database which are contracted
            schemas = versioning.read_schemas(script, contracted=_contracted(default))
    except SchemaError as exc:
        log.warning("release: reading the revisions failed (%s); reading every table from public", exc)
        head, schemas = None, {}
    for settings_dict in databases.values():
        if "postgresql" in settings_dict.get("ENGINE", ""):
            settings_dict.setdefault("OPTIONS", {})["application_name"] = versioning.release_application_name(
                head or "unknown")
    return route_models(all_models, schemas)
