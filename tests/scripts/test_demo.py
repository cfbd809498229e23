"""``scripts/demo``, the quick start, run as a new user would: in a fresh copy of the project."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from tests.conftest import ROOT


def test_the_demo_works_and_keeps_its_secrets_private(tmp_path: Path) -> None:
    copy = tmp_path / "project"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)  # keeps times: scripts/bootstrap sees the installed .venv as current
    (copy / ".venv").symlink_to(ROOT / ".venv")
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE", "ENV_FILE")}
    result = subprocess.run(["bash", "scripts/demo"], cwd=copy, env={**env, "DEMO_CALLS": "3"},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Done. Next:" in result.stdout
    for secret in (copy / ".env", copy / "db.sqlite3"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
