"""Content types and permissions for every model, kept in step by each upgrade.

Django creates them in its post-migrate step, which never runs here (Alembic owns the schema).
Without them no group or user can be granted anything and every operator would have to be a
superuser. ``migrations_alembic/env.py`` calls ``sync`` after every upgrade, in both spellings.
"""
from __future__ import annotations

import sqlalchemy as sa
from django.apps import apps
from django.contrib.auth import get_permission_codename

_ADD_CONTENT_TYPE = sa.text(
    "INSERT INTO django_content_type (app_label, model) VALUES (:app_label, :model) "
    "ON CONFLICT (app_label, model) DO NOTHING")
_ADD_PERMISSION = sa.text(
    "INSERT INTO auth_permission (name, content_type_id, codename) "
    "SELECT :name, id, :codename FROM django_content_type WHERE app_label = :app_label AND model = :model "
    "ON CONFLICT (content_type_id, codename) DO UPDATE SET name = excluded.name")


def model_permissions() -> list[dict[str, str]]:
    """Return every model's permissions (Django's default ones and its ``Meta.permissions``) as rows to store."""
    rows = []
    for model in apps.get_models():
        opts = model._meta
        wanted = [(get_permission_codename(action, opts), f"Can {action} {opts.verbose_name_raw}")
                  for action in opts.default_permissions]
        wanted += list(opts.permissions)
        rows += [{"app_label": opts.app_label, "model": opts.model_name, "codename": codename, "name": name[:255]}
                 for codename, name in wanted]
    return rows


def sync(connection: sa.Connection) -> int:
    """Create any missing content type and permission for the models; return how many permissions were written.

    Does nothing below the revision that creates Django's tables.
    """
    tables = set(sa.inspect(connection).get_table_names())
    if not {"django_content_type", "auth_permission"} <= tables:
        return 0
    models = {(model._meta.app_label, model._meta.model_name) for model in apps.get_models()}
    connection.execute(_ADD_CONTENT_TYPE, [{"app_label": app, "model": name} for app, name in sorted(models)])
    rows = model_permissions()
    connection.execute(_ADD_PERMISSION, rows)
    return len(rows)
