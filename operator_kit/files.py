"""Files an operator's command writes for its owner alone (reports, charts): 0600, replaced whole."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once (a reader sees the old file or the new, whole), mode 0600.

    Missing folders are made for their owner alone (0700).
    """
    path = Path(path)
    private_folder(path.parent)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def private_folder(folder: Path) -> None:
    """Make ``folder`` and every missing folder above it for their owner alone (0700); existing ones stay as they are.

    A file where a folder should be is raised as ``NotADirectoryError`` ("Not a directory").
    """
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        each.mkdir(mode=0o700, exist_ok=True)
