"""Add Django's own tables: content types, auth (users, groups, permissions), admin log, sessions.

Revision ID: 000_django_framework
Revises:
Create Date: 2026-11-24

Alembic owns every table, Django's included (Django's migrations are disabled), so the admin
and ``createsuperuser`` work after ``migrate_schema upgrade head`` and nothing else creates
tables. This revision comes first in the chain: the admin log refers to content types of every
app, and downgrading a domain revision (say to 002) must never drop the operators' accounts.
The shape is Django 5.2's, with this project's constraint names.
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

from migrations_alembic.helpers import TIMESTAMP, drop_table_keeping_rows, foreign_key, restore_rows

revision: str = "000_django_framework"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A downgrade keeps the rows of each table it drops in archive_000_<table>; the next upgrade puts them back.
ARCHIVE_PREFIX = "archive_000_"


def _serial_id() -> sa.Column:
    # Django's own apps use AutoField (32-bit) primary keys.
    return sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True)


def _link_table(table: str, left: str, left_target: str, right: str, right_target: str) -> None:
    restore_rows(op.create_table(
        table,
        _serial_id(),
        sa.Column(left, sa.Integer(), nullable=False),
        sa.Column(right, sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
        foreign_key(table, left, left_target, ondelete="CASCADE"),
        foreign_key(table, right, right_target, ondelete="CASCADE"),
        sa.UniqueConstraint(left, right, name=op.f(f"uq_{table}_{left}_{right}")),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f(f"ix_{table}_{left}"), table, [left])
    op.create_index(op.f(f"ix_{table}_{right}"), table, [right])


def upgrade() -> None:
    restore_rows(op.create_table(
        "django_content_type",
        _serial_id(),
        sa.Column("app_label", sa.String(100), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_django_content_type")),
        sa.UniqueConstraint("app_label", "model", name=op.f("uq_django_content_type_app_label_model")),
    ), archive_prefix=ARCHIVE_PREFIX)
    restore_rows(op.create_table(
        "auth_permission",
        _serial_id(),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("content_type_id", sa.Integer(), nullable=False),
        sa.Column("codename", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_permission")),
        foreign_key("auth_permission", "content_type_id", "django_content_type", ondelete="CASCADE"),
        sa.UniqueConstraint("content_type_id", "codename", name=op.f("uq_auth_permission_content_type_id_codename")),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f("ix_auth_permission_content_type_id"), "auth_permission", ["content_type_id"])
    restore_rows(op.create_table(
        "auth_group",
        _serial_id(),
        sa.Column("name", sa.String(150), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_group")),
        sa.UniqueConstraint("name", name=op.f("uq_auth_group_name")),
    ), archive_prefix=ARCHIVE_PREFIX)
    restore_rows(op.create_table(
        "auth_user",
        _serial_id(),
        sa.Column("password", sa.String(128), nullable=False),
        sa.Column("last_login", TIMESTAMP, nullable=True),
        sa.Column("is_superuser", sa.Boolean(), nullable=False),
        sa.Column("username", sa.String(150), nullable=False),
        sa.Column("first_name", sa.String(150), nullable=False),
        sa.Column("last_name", sa.String(150), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("is_staff", sa.Boolean(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("date_joined", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_user")),
        sa.UniqueConstraint("username", name=op.f("uq_auth_user_username")),
    ), archive_prefix=ARCHIVE_PREFIX)
    _link_table("auth_group_permissions", "group_id", "auth_group", "permission_id", "auth_permission")
    _link_table("auth_user_groups", "user_id", "auth_user", "group_id", "auth_group")
    _link_table("auth_user_user_permissions", "user_id", "auth_user", "permission_id", "auth_permission")
    restore_rows(op.create_table(
        "django_admin_log",
        _serial_id(),
        sa.Column("action_time", TIMESTAMP, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("content_type_id", sa.Integer(), nullable=True),
        sa.Column("object_id", sa.Text(), nullable=True),
        sa.Column("object_repr", sa.String(200), nullable=False),
        sa.Column("action_flag", sa.SmallInteger(), nullable=False),
        sa.Column("change_message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_django_admin_log")),
        foreign_key("django_admin_log", "user_id", "auth_user", ondelete="CASCADE"),
        foreign_key("django_admin_log", "content_type_id", "django_content_type", ondelete="SET NULL"),
        sa.CheckConstraint("action_flag >= 0", name=op.f("ck_django_admin_log_action_flag_positive")),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f("ix_django_admin_log_content_type_id"), "django_admin_log", ["content_type_id"])
    op.create_index(op.f("ix_django_admin_log_user_id"), "django_admin_log", ["user_id"])
    restore_rows(op.create_table(
        "django_session",
        sa.Column("session_key", sa.String(40), nullable=False),
        sa.Column("session_data", sa.Text(), nullable=False),
        sa.Column("expire_date", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("session_key", name=op.f("pk_django_session")),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f("ix_django_session_expire_date"), "django_session", ["expire_date"])


def downgrade() -> None:
    # Dropping a table drops its indexes; children before parents.
    for table in (
        "django_session",
        "django_admin_log",
        "auth_user_user_permissions",
        "auth_user_groups",
        "auth_group_permissions",
        "auth_user",
        "auth_group",
        "auth_permission",
        "django_content_type",
    ):
        drop_table_keeping_rows(table, archive_prefix=ARCHIVE_PREFIX)
