"""Production settings as the README documents them: DEBUG off, a secret required, HTTPS, static files."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
    env = {"PATH": os.environ["PATH"], "ENV_FILE": "/dev/null", "SECRET_KEY": secrets.token_urlsafe(50)}
    result = manage(env, "shell", "-v", "0", "-c", "from django.conf import settings; print(settings.DEBUG, settings.SECURE_SSL_REDIRECT)")
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
