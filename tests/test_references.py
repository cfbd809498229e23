"""The repository's own references: every file path and module a file names exists.

A module that moves leaves comments, docstrings and docs pointing at its old place; readers then
look for a test or a guard that is not there. This finds them wherever they are written.
"""
from __future__ import annotations

import re
import subprocess
from functools import cache

from tests.conftest import ROOT

# Only the packages whose dotted names are unambiguous: ``calls.`` and ``monitoring.`` also begin
# table columns (``calls.status``) and permissions (``monitoring.view_systemmetric``).
DOTTED_PACKAGES = ("schema_engine", "reautomation", "operator_kit", "migrations_alembic")


@cache
def repository_files() -> tuple[str, ...]:
    """The checkout's files, tracked or new (not ignored)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return tuple(path for path in listed if (ROOT / path).is_file())


def texts() -> list[tuple[str, str]]:
    found = []
    for path in repository_files():
        try:
            found.append((path, (ROOT / path).read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue  # a binary file names nothing
    return found


def test_every_python_file_path_named_exists() -> None:
    top = "|".join(sorted({path.split("/", 1)[0] for path in repository_files() if "/" in path}))
    # A path from the repository root (``tests/reautomation/test_settings.py``), not part of a URL or longer path.
    named = re.compile(rf"(?<![\w/.-])((?:{top})/[\w./-]*?\.py)\b")
    stale = sorted({f"{path}: {match}" for path, text in texts() for match in named.findall(text)
                    if not (ROOT / match).is_file()})
    assert not stale, "files name paths that do not exist:\n" + "\n".join(stale)


def test_every_dotted_module_named_exists() -> None:
    # Prose and docstrings (``schema_engine.guard``); a quoted name is code, which running it checks,
    # or a key that only looks like a module (``"schema_engine.session_settings"``).
    named = re.compile(rf"(?<![\w./\"'-])((?:{'|'.join(DOTTED_PACKAGES)})\.[a-z_]\w*)")
    stale = sorted({f"{path}: {match}" for path, text in texts() for match in named.findall(text)
                    if not _is_module_or_attribute(match)})
    assert not stale, "files name modules that do not exist:\n" + "\n".join(stale)


def _is_module_or_attribute(dotted: str) -> bool:
    package, name = dotted.split(".", 1)
    if (ROOT / package / f"{name}.py").is_file() or (ROOT / package / name).is_dir():
        return True
    return re.search(rf"\b{name}\b", (ROOT / package / "__init__.py").read_text(encoding="utf-8")) is not None
