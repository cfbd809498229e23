"""Production settings as docs/admin.md ("Production") documents them: DEBUG off, a secret required,
HTTPS, static files."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from schema_engine import commands
from tests.conftest import ROOT, django_url

PRODUCTION_ENV = ROOT / "deploy" / "production.env.example"


def production_env(**overrides: str) -> dict[str, str]:
    """The documented production settings with a real secret, and nothing inherited but PATH."""
    values = {}
    for line in PRODUCTION_ENV.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    values["SECRET_KEY"] = secrets.token_urlsafe(50)
    return {"PATH": os.environ["PATH"], "ENV_FILE": "/dev/null", **values, **overrides}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)


def test_check_deploy_is_clean_with_the_documented_production_settings() -> None:
    result = manage(production_env(), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_debug_is_off_unless_set() -> None:
    env = {"PATH": os.environ["PATH"], "ENV_FILE": "/dev/null", "SECRET_KEY": secrets.token_urlsafe(50),
           "DATABASE_URL": "postgresql://ops@127.0.0.1:5432/reautomation"}
    result = manage(env, "shell", "-v", "0", "-c",
                    "from django.conf import settings; print(settings.DEBUG, settings.SECURE_SSL_REDIRECT)")
    assert result.stdout.split() == ["False", "True"], result.stderr


@pytest.mark.parametrize("command", [["check"], ["runserver", "--noreload"], ["migrate_schema", "current"]])
def test_a_missing_secret_key_without_debug_stops_start_up_with_one_line(command: list[str]) -> None:
    env = production_env()
    del env["SECRET_KEY"]
    result = manage(env, *command)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "manage.py: configuration error: SECRET_KEY is not set: export SECRET_KEY (or put it in .env), "
        "or set DEBUG=true for local use"]


def test_collectstatic_writes_hashed_compressed_files_for_whitenoise(tmp_path: Path) -> None:
    result = manage(production_env(STATIC_ROOT=str(tmp_path)), "collectstatic", "--noinput")
    assert result.returncode == 0, result.stderr
    css = list((tmp_path / "admin" / "css").glob("base.*.css"))
    assert css, "no hashed copy of admin/css/base.css"
    assert css[0].with_name(css[0].name + ".gz").exists()
    assert (tmp_path / "staticfiles.json").exists()


@pytest.mark.parametrize("command", [["check"], ["migrate_schema", "current"], ["createsuperuser", "--noinput"]])
def test_a_missing_database_url_without_debug_stops_start_up_with_one_line(command: list[str]) -> None:
    """No silent embedded SQLite file for an operator who forgot to export DATABASE_URL."""
    env = production_env()
    del env["DATABASE_URL"]
    result = manage(env, *command)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("manage.py: configuration error: DATABASE_URL is not set"), lines


def test_a_missing_database_url_stops_the_alembic_cli_with_one_line() -> None:
    env = production_env()
    del env["DATABASE_URL"]
    result = subprocess.run([str(Path(sys.executable).parent / "alembic"), "current"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "DATABASE_URL is not set" in result.stdout + result.stderr


def test_debug_without_database_url_uses_the_embedded_file() -> None:
    env = {"PATH": os.environ["PATH"], "ENV_FILE": "/dev/null", "DEBUG": "true"}
    result = manage(env, "shell", "-v", "0", "-c", "from django.db import connection; print(connection.vendor)")
    assert result.stdout.split() == ["sqlite"], result.stderr


@pytest.mark.parametrize(("setting", "value"), [
    ("MIGRATION_LOCK_RETRIES", "-1"), ("MIGRATION_LOCK_WAIT_SECONDS", "abc"), ("MIGRATION_LOCK_WAIT_SECONDS", "nan"),
    ("MIGRATION_RETRY_PAUSE_SECONDS", "-2"), ("CONTEXT_MAX_TOKENS", "abc"), ("CONTEXT_MAX_TOKENS", "0"),
    ("MIGRATION_LOCK_TIMEOUT", "5s'; DROP TABLE calls; --"), ("MIGRATION_STATEMENT_TIMEOUT", "forever"),
    ("BACKFILL_BATCH_SECONDS", "0"), ("BACKFILL_MAX_REPLICA_LAG", "-1"),
])
def test_a_bad_setting_stops_start_up_with_one_line_naming_it(setting: str, value: str) -> None:
    result = manage(production_env(**{setting: value}), "migrate_schema", "upgrade", "--sql")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"manage.py: configuration error: {setting}="), lines
    assert "DROP TABLE" not in result.stdout


def test_every_installed_app_has_its_migrations_switched_off() -> None:
    from django.apps import apps
    from django.conf import settings

    labels = {config.label for config in apps.get_app_configs()}
    assert labels <= set(settings.MIGRATION_MODULES)
    assert all(module is None for module in settings.MIGRATION_MODULES.values())


def _no_unapplied_migrations_notice(output: str) -> None:
    assert "unapplied migration" not in output and "manage.py migrate" not in output, output


def test_createsuperuser_does_not_send_the_operator_to_migrate(make_database) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="head", url=url)
    result = manage(production_env(DATABASE_URL=django_url(url), DJANGO_SUPERUSER_PASSWORD="a-long-passphrase"),
                    "createsuperuser", "--noinput", "--username", "ops", "--email", "ops@example.com")
    assert result.returncode == 0, result.stderr
    _no_unapplied_migrations_notice(result.stdout + result.stderr)


def test_runserver_does_not_send_the_operator_to_migrate(make_database) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="head", url=url)
    env = production_env(DATABASE_URL=django_url(url), DEBUG="true", PYTHONUNBUFFERED="1")
    server = subprocess.Popen([sys.executable, "manage.py", "runserver", "--noreload", "127.0.0.1:0"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in server.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "Quit the server" in line or "Error" in line:
                break
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert any("Quit the server" in line for line in seen), seen
    _no_unapplied_migrations_notice("".join(seen))


def test_a_500_is_logged_with_its_traceback_and_mailed_to_admins() -> None:
    """In production a failing request leaves a trace on stderr (gunicorn's log) and a mail to ADMINS."""
    request = (
        "from django.core import mail; from django.test import Client\n"
        "client = Client(raise_request_exception=False)\n"
        "client.cookies['sessionid'] = 'x' * 32  # looking the session up needs the (dead) database\n"
        "response = client.get('/admin/', secure=True, HTTP_HOST='ops.example.com')\n"
        "print(response.status_code, len(mail.outbox), mail.outbox[0].subject if mail.outbox else '')\n"
    )
    env = production_env(DATABASE_URL="postgresql://ops:hunter2@127.0.0.1:1/reautomation",
                         ADMINS="oncall@example.com", EMAIL_URL="memorymail://")
    result = manage(env, "shell", "-v", "0", "-c", request)
    status, mails, subject = result.stdout.strip().split(" ", 2)
    assert (status, mails) == ("500", "1"), result.stdout + result.stderr
    assert "Internal Server Error: /admin/" in subject
    assert "Internal Server Error: /admin/" in result.stderr and "Traceback (most recent call last)" in result.stderr
    assert "hunter2" not in result.stderr
