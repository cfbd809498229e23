"""The scratch folders of forecast runs: each names its run, and the next run removes what a killed one left.

A run makes ``ROOT/forecast-KIND-PID-RANDOM`` (0700) with a marker file, ``owner.json``, that
names the process (its pid and its start time, so that a later process given the same pid is not
taken for it) and whatever that run must undo if it dies (a capture's logging settings). A run
that ends removes its own folder; one killed before it could (SIGKILL, a power cut) leaves it,
with maybe a server or a ``pg_basebackup`` still running in it, and the next run of that kind
ends those processes and removes the folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schema_engine.errors import ForecastUnavailable
from schema_engine.forecast.programs import OsUser
from schema_engine.progress import Event, Reporter, ignore

MARKER = "owner.json"
# Where the forecast's scratch folders go unless the caller names a place (a disk with room for a copy).
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "reautomation-forecast"
STOP_SECONDS = 30.0  # how long a leftover's processes get to end before they are killed


@dataclass(frozen=True)
class LeftoverRemoved(Event):
    """A folder a killed run left (and any process still working in it) was removed."""

    folder: str

    def describe(self) -> str:
        return f"removed {self.folder}, left by a run that was killed"


def prepare_root(root: Path, *, owner: OsUser) -> Path:
    """Make ``root`` if needed (0711: others may pass through to their own folder, not list it); check ``owner`` may."""
    root = root.resolve()
    try:
        if not root.exists():
            root.mkdir(parents=True, mode=0o711)
            root.chmod(0o711)  # mkdir's mode is cut by the umask
    except OSError as exc:
        raise ForecastUnavailable(f"cannot make the scratch folder {root}: {exc.strerror}; name one this user may "
                                  "write in") from exc
    if not os.access(root, os.W_OK | os.X_OK):
        raise ForecastUnavailable(f"this user may not make folders in the scratch folder {root}: name one it may "
                                  "write in")
    closed = owner.may_enter(root)
    if closed is not None:
        raise ForecastUnavailable(f"the OS user {owner.name}, who runs the copy's server, may not enter {closed} on "
                                  f"the way to the scratch folder {root}: name a scratch folder it can reach")
    return root


def claim(root: Path, kind: str, *, owner: OsUser, **facts: Any) -> Path:
    """Make this run's folder of ``kind`` under ``root`` (0700, owned by ``owner``) with its marker; return it."""
    folder = root / f"forecast-{kind}-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir(mode=0o700)
    marker = {"pid": os.getpid(), "started": _start_time(os.getpid()), "kind": kind, **facts}
    descriptor = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump(marker, out)
    if not owner.is_me:
        os.chown(folder, owner.uid, owner.gid)
    return folder


def marker(folder: Path) -> dict[str, Any]:
    """Return what a run wrote in its folder's marker (empty if there is none, or it is unreadable)."""
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def stale(root: Path, kind: str) -> list[Path]:
    """Return the folders of ``kind`` under ``root`` whose run is gone (killed before it could remove them)."""
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.glob(f"forecast-{kind}-*")):
        facts = marker(folder)
        pid = facts.get("pid") or _pid_in_name(folder.name)
        if pid is None or not _alive(int(pid), facts.get("started")):
            found.append(folder)
    return found


def remove_stale(root: Path, kind: str, *, reporter: Reporter = ignore) -> tuple[Path, ...]:
    """Remove the folders of ``kind`` killed runs left under ``root`` (their processes ended first); return them."""
    removed = []
    for folder in stale(root.resolve(), kind):
        remove(folder)
        reporter(LeftoverRemoved(folder=str(folder)))
        removed.append(folder)
    return tuple(removed)


def remove(folder: Path) -> None:
    """End every process still working in ``folder`` (a server, a ``pg_basebackup``), then remove the folder."""
    postmasters = _postmaster_pids(folder)
    working = processes_using(folder)
    for pid in working:
        with contextlib.suppress(ProcessLookupError):
            # A server's immediate shutdown (SIGQUIT); anything else is asked to end.
            os.kill(pid, signal.SIGQUIT if pid in postmasters else signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while working and time.monotonic() < deadline:
        working = [pid for pid in working if _exists(pid)]
        time.sleep(0.05)
    for pid in working:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        shutil.rmtree(folder, ignore_errors=False, onerror=_gone_is_fine)
    except OSError as exc:
        raise ForecastUnavailable(f"cannot remove {folder} ({exc.strerror}): remove it as its owner or root") from exc


def _gone_is_fine(function: Any, path: str, info: Any) -> None:
    if not isinstance(info[1], FileNotFoundError):
        raise info[1]


def _pid_in_name(name: str) -> int | None:
    parts = name.split("-")
    return int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(pid: int, started: str | None) -> bool:
    if not _exists(pid):
        return False
    now = _start_time(pid)
    return started is None or now is None or now == started


def _postmaster_pids(folder: Path) -> set[int]:
    """The servers' pids in ``folder``: the copy's (``data/``), and its replica's (``replica/data/``)."""
    found = set()
    for pidfile in [*folder.glob("*/postmaster.pid"), *folder.glob("*/*/postmaster.pid")]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            found.add(int(pidfile.read_text().splitlines()[0]))
    return found


def processes_using(folder: Path) -> list[int]:
    """The processes whose command line names ``folder`` or a path in it (Linux's /proc; elsewhere, none)."""
    prefix = str(folder.resolve())
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(arg == prefix or arg.startswith(prefix + "/") or f"={prefix}/" in arg for arg in argv):
            found.append(pid)
    return found
