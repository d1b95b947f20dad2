"""``<state dir>/instances.json``: the runtime instances serving one state folder, for scripts and tests.

Each instance adds ``{"pid", "url", "groups", "index", "owner"}`` when it is ready (``url`` is its private URL,
``owner`` the id its leases carry) and removes
its entry when it stops. A killed instance cannot remove its entry, so writers drop entries whose process is gone
and readers (``live_instances``) ignore them. Updates are read-modify-write under an exclusive ``flock`` on a lock
file beside it, and the file is replaced atomically, so a reader never sees half of it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

INSTANCES_FILE = "instances.json"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: the signal test is all there is


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def listed_instances(state_dir: Path) -> list[dict[str, Any]]:
    """Every entry of ``state_dir``'s instances.json, those of processes that have died since included."""
    return [e for e in _read(state_dir / INSTANCES_FILE) if isinstance(e.get("pid"), int)]


def live_instances(state_dir: Path) -> list[dict[str, Any]]:
    """The instances listed in ``state_dir``'s instances.json whose process is alive, in start order."""
    return [e for e in listed_instances(state_dir) if pid_alive(e["pid"])]


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / f"{INSTANCES_FILE}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _update(state_dir: Path, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    path = state_dir / INSTANCES_FILE
    with _locked(state_dir):
        entries = [e for e in _read(path) if isinstance(e.get("pid"), int) and pid_alive(e["pid"])]
        tmp = path.with_name(f".{INSTANCES_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(change(entries), indent=2) + "\n")
        os.replace(tmp, path)


def register_instance(
    state_dir: Path, *, url: str, groups: list[str], index: int, owner: str, pid: int | None = None
) -> None:
    """Add (or replace) this process's entry."""
    pid = os.getpid() if pid is None else pid
    entry = {"pid": pid, "url": url, "groups": sorted(groups), "index": index, "owner": owner}
    _update(state_dir, lambda entries: [*(e for e in entries if e["pid"] != pid), entry])


def unregister_instance(state_dir: Path, pid: int | None = None) -> None:
    """Remove a process's entry (this process's by default); entries of dead processes go too."""
    pid = os.getpid() if pid is None else pid
    _update(state_dir, lambda entries: [e for e in entries if e["pid"] != pid])
