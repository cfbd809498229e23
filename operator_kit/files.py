"""Files an operator's command writes for its owner alone (reports, charts): 0600, replaced whole."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once (a reader sees the old file or the new, whole), mode 0600.

    A missing folder is made, for its owner alone (0700).
    """
    path = Path(path)
    if not path.parent.exists():  # a file in its place is said as "Not a directory" below
        path.parent.mkdir(parents=True, mode=0o700)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
