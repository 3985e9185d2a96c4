"""Finding and removing lab namespaces, including leftovers of crashed runs."""

from __future__ import annotations

import contextlib
import os
import signal

from apr_async.lab.netns import NETNS_DIR, run_ip_sync
from apr_async.lab.topology import LAB_NAME_RE

__all__ = ["delete_namespaces", "lab_namespaces", "pid_alive", "sweep_stale_labs"]


def lab_namespaces(prefix: str | None = None) -> list[str]:
    """Names of existing lab namespaces (optionally only those of one lab prefix)."""
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        match = LAB_NAME_RE.match(name)
        if match and (prefix is None or match.group(1) == prefix):
            out.append(name)
    return out


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_namespaces(names: list[str]) -> None:
    """Kill every process inside the namespaces, then delete them (best effort, blocking).

    A process left inside would keep the namespace, and its veth ends, alive after deletion.
    """
    for name in names:
        pids = run_ip_sync(["netns", "pids", name]).stdout.split()
        for pid in pids:
            if pid.isdigit() and int(pid) != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)
    if names:
        run_ip_sync(["-force", "-batch", "-"], "".join(f"netns del {n}\n" for n in names))


def sweep_stale_labs() -> list[str]:
    """Delete lab namespaces whose creating process is dead; return the names deleted.

    Only names matching the lab pattern are considered and a live owner's labs are never
    touched, so concurrent test runs on the same machine are safe.
    """
    stale = []
    for name in lab_namespaces():
        match = LAB_NAME_RE.match(name)
        if match and not pid_alive(int(match.group(2))):
            stale.append(name)
    delete_namespaces(stale)
    return stale
