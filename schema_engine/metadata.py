"""Derive Alembic's ``target_metadata`` from the Django models.

The models are the one description of the schema's shape; this module translates each model's
``_meta`` (columns, nullability, ``db_default``, foreign keys, ``Meta.indexes`` with their
conditions and ``include``, constraints) into SQLAlchemy ``Table`` objects for a given dialect,
so that ``migrate_schema check`` and ``revision --autogenerate`` compare the database with them.
Names follow ``NAMING_CONVENTION``; revisions use the same names.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Collection

import sqlalchemy as sa
from django.apps import apps
from django.contrib.postgres.indexes import BrinIndex
from django.db import connections, models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.functions import Now
from django.db.models.sql import Query
from django.db.utils import ConnectionHandler, load_backend
from sqlalchemy.dialects import postgresql

from schema_engine.autogenerate import MODEL_FIELD_INFO
from schema_engine.errors import UnsupportedModelField
from schema_engine.versioning import declared_table

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Django's vendor name for each SQLAlchemy dialect this project runs on.
DJANGO_VENDORS = {"postgresql": "django.db.backends.postgresql", "sqlite": "django.db.backends.sqlite3"}

_ON_DELETE = {models.CASCADE: "CASCADE", models.SET_NULL: "SET NULL"}


def column_type(field: models.Field) -> sa.types.TypeEngine:
    """Return the SQLAlchemy type that stores ``field`` (a foreign key stores its target's type)."""
    if field.is_relation:
        field = field.target_field
    kind = field.get_internal_type()
    if kind == "BigAutoField":
        # SQLite only auto-increments an INTEGER PRIMARY KEY (foreign keys to it match it).
        return sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    if kind in ("BigIntegerField", "PositiveBigIntegerField"):
        return sa.BigInteger()
    simple = {
        "AutoField": sa.Integer,
        "IntegerField": sa.Integer,
        "PositiveIntegerField": sa.Integer,
        "SmallAutoField": sa.SmallInteger,
        "SmallIntegerField": sa.SmallInteger,
        "PositiveSmallIntegerField": sa.SmallInteger,
        "TextField": sa.Text,
        "BooleanField": sa.Boolean,
        "DateField": sa.Date,
        "FloatField": sa.Double,
        "UUIDField": sa.Uuid,
    }
    if kind in simple:
        return simple[kind]()
    if kind in ("CharField", "SlugField", "EmailField"):
        return sa.String(field.max_length)
    if kind == "DateTimeField":
        return sa.DateTime(timezone=True)
    if kind == "DecimalField":
        return sa.Numeric(field.max_digits, field.decimal_places)
    if kind == "JSONField":
        return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    raise UnsupportedModelField(f"{field.model.__name__}.{field.name}: no SQLAlchemy type for {kind}")


def server_default(field: models.Field) -> sa.sql.ClauseElement | str | None:
    """Return the column's server default from the field's ``db_default``."""
    default = field.db_default
    if default is models.NOT_PROVIDED:
        return None
    if isinstance(default, models.Value):
        default = default.value
    if isinstance(default, Now):
        return sa.func.now()
    if isinstance(default, bool):
        return sa.true() if default else sa.false()
    if isinstance(default, (int, float, Decimal, str)):
        return sa.text(repr(str(default))) if isinstance(default, str) else sa.text(str(default))
    raise UnsupportedModelField(f"{field.model.__name__}.{field.name}: unsupported db_default {default!r}")


def django_connection(dialect_name: str) -> BaseDatabaseWrapper:
    """Return a Django connection of the vendor matching ``dialect_name`` (never opened here).

    Used only to compile index and constraint conditions to that vendor's SQL.
    """
    default = connections["default"]
    if default.vendor == dialect_name:  # Django's vendor names match SQLAlchemy's dialect names
        return default
    engine = DJANGO_VENDORS[dialect_name]
    settings_dict = ConnectionHandler({"default": {"ENGINE": engine, "NAME": ":memory:"}}).settings["default"]
    return load_backend(engine).DatabaseWrapper(settings_dict, alias="sql-compiler")


def _condition_sql(model: type[models.Model], condition: models.Q, connection: BaseDatabaseWrapper) -> str:
    query = Query(model=model, alias_cols=False)
    where = query.build_where(condition)
    compiler = query.get_compiler(connection=connection)
    sql, params = where.as_sql(compiler, connection)
    schema_editor = connection.schema_editor()
    return sql % tuple(schema_editor.quote_value(p) for p in params)


def _columns(model: type[models.Model]) -> list[sa.Column]:
    columns = []
    for field in model._meta.local_fields:
        column_args: list[Any] = []
        if field.is_relation:
            target = field.related_model._meta
            column_args.append(
                sa.ForeignKey(
                    f"{declared_table(target.db_table)}.{field.target_field.column}",
                    ondelete=_ON_DELETE.get(field.remote_field.on_delete),
                    # Django expects its constraints to be checked at commit.
                    deferrable=True,
                    initially="DEFERRED",
                )
            )
        columns.append(
            sa.Column(
                field.column,
                column_type(field),
                *column_args,
                primary_key=field.primary_key,
                nullable=field.null,
                unique=field.unique and not field.primary_key,
                index=field.db_index and not field.unique and not field.primary_key,
                server_default=server_default(field),
                autoincrement=field.get_internal_type().endswith("AutoField") or "auto",
                info={MODEL_FIELD_INFO: type(field).__name__},  # named in autogenerate's rename question
            )
        )
    return columns


def _indexes(model: type[models.Model], table: sa.Table, connection: BaseDatabaseWrapper) -> None:
    postgres = connection.vendor == "postgresql"
    for index in model._meta.indexes:
        columns = [table.c[model._meta.get_field(name.lstrip("-")).column] for name in index.fields]
        included = [model._meta.get_field(name).column for name in index.include or ()]
        kwargs: dict[str, Any] = {}
        if index.condition is not None:
            kwargs[f"{connection.vendor}_where"] = sa.text(_condition_sql(model, index.condition, connection))
        if included and postgres:
            kwargs["postgresql_include"] = included
        elif included:
            columns += [table.c[name] for name in included]  # no INCLUDE: trailing key columns cover the same
        if isinstance(index, BrinIndex) and postgres:
            kwargs["postgresql_using"] = "brin"
        sa.Index(index.name, *columns, **kwargs)


def _constraints(model: type[models.Model], table: sa.Table, connection: BaseDatabaseWrapper) -> None:
    opts = model._meta
    for field in opts.local_fields:
        check = field.db_check(connection) if field.get_internal_type().startswith("Positive") else None
        if check:
            table.append_constraint(sa.CheckConstraint(check % {"column": field.column},
                                                       name=f"{field.column}_positive"))
    for fields in opts.unique_together:
        table.append_constraint(sa.UniqueConstraint(*(opts.get_field(f).column for f in fields)))
    for constraint in opts.constraints:
        if isinstance(constraint, models.UniqueConstraint) and constraint.condition is not None:
            # A conditional unique constraint is a partial unique index in the database.
            where = sa.text(_condition_sql(model, constraint.condition, connection))
            sa.Index(constraint.name, *(table.c[opts.get_field(f).column] for f in constraint.fields),
                     unique=True, **{f"{connection.vendor}_where": where})
        elif isinstance(constraint, models.UniqueConstraint):
            table.append_constraint(
                sa.UniqueConstraint(*(opts.get_field(f).column for f in constraint.fields), name=constraint.name)
            )
        elif isinstance(constraint, models.CheckConstraint):
            sql = _condition_sql(model, constraint.condition, connection)
            table.append_constraint(sa.CheckConstraint(sa.text(sql), name=sa.sql.elements.conv(constraint.name)))
        else:
            raise UnsupportedModelField(f"{model.__name__}: unsupported constraint {constraint!r}")


def build_metadata(dialect_name: str, tables: Collection[str] | None = None) -> sa.MetaData:
    """Return the schema the Django models describe, as ``dialect_name`` should hold it (only ``tables``, if given)."""
    connection = django_connection(dialect_name)
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    for model in apps.get_models(include_auto_created=True):
        opts = model._meta
        name = declared_table(opts.db_table)  # a release reading through a version schema qualifies it
        if opts.proxy or opts.concrete_model is not model or (tables is not None and name not in tables):
            continue
        table = sa.Table(name, metadata, *_columns(model))
        _indexes(model, table, connection)
        _constraints(model, table, connection)
    return metadata
