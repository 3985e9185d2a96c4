"""The external programs apr_async's lab, tests and benchmarks run, and where they come from.

``DEBIAN_TOOLS`` is the one table of them: program name -> the Debian package that provides
it. ``dev.py`` installs every package of the table that is missing (it loads this file by path,
before the package is installed, so this module uses only the standard library and imports
nothing from apr_async), and every place that runs a program checks it here first:
:func:`check_declared` raises :class:`ToolNotDeclaredError` for a program that is not in the
table, so a new dependency fails at once on the developer's own machine instead of on the next
fresh one. A test scans the sources for programs run through ``subprocess`` or the lab and
checks that each one is declared.

The Python interpreter (``sys.executable``, or any ``python3.X``) needs no declaration.
The library itself (``import apr_async``) runs no external program at all.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "DEBIAN_TOOLS",
    "TABLE",
    "ToolMissingError",
    "ToolNotDeclaredError",
    "check_declared",
    "find_tool",
    "is_python",
    "missing_packages",
    "missing_tools",
    "resolve_tool",
]

#: The name under which error messages cite the table.
TABLE = "apr_async.tools.DEBIAN_TOOLS"

#: Every program the project runs (lab, tests, benchmarks, dev.py) -> its Debian package.
#: Add a program here, with its package, before running it anywhere: nothing else installs it.
DEBIAN_TOOLS: dict[str, str] = {
    # the network lab
    "ip": "iproute2",
    "nft": "nftables",
    "ip6tables": "iptables",  # the router's mangle marks
    "sysctl": "procps",
    "ping": "iputils-ping",  # the system ping next to the library's ICMP probes
    # tests of the server side, the forwarder and TLS
    "haproxy": "haproxy",
    "curl": "curl",
    "openssl": "openssl",
    "cc": "gcc",  # compiles the TOA/UOA struct layouts to check them byte for byte
    # process and namespace helpers
    "unshare": "util-linux",
    "setpriv": "util-linux",
    "mount": "mount",  # inside an ``unshare ... sh -c`` script
    "sh": "dash",
    "env": "coreutils",
    "cat": "coreutils",
    "sleep": "coreutils",
    "true": "coreutils",
    "false": "coreutils",
    # benchmarks
    "valgrind": "valgrind",  # bench_instructions.py: instructions per connection (callgrind)
    "strace": "strace",  # bench_syscalls.py: system calls per connection (strace -c)
    # dev.py itself
    "apt-get": "apt",
}

#: Directories searched after ``$PATH``: a non-root shell often lacks the sbin ones.
EXTRA_DIRS: tuple[str, ...] = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin")

_PYTHON = re.compile(r"python3?(\.\d+)?")


class ToolNotDeclaredError(LookupError):
    """A program that is not in :data:`DEBIAN_TOOLS` was about to be run."""

    def __init__(self, program: str) -> None:
        self.program = program
        super().__init__(
            f"{program!r} is not in {TABLE} (src/apr_async/tools.py); declare it there with "
            f"the Debian package that provides it, so that dev.py installs it"
        )


class ToolMissingError(FileNotFoundError):
    """A declared program is not installed on this machine."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.package = DEBIAN_TOOLS[program]
        super().__init__(
            f"{program!r} is not installed: it comes with the Debian package {self.package!r} "
            f"({TABLE}); run `python3 dev.py test` as root, or `apt-get install {self.package}`"
        )


def is_python(program: str) -> bool:
    """Whether ``program`` is a Python interpreter (which needs no declaration)."""
    if os.path.realpath(program) == os.path.realpath(sys.executable):
        return True
    return _PYTHON.fullmatch(os.path.basename(program)) is not None


def _name(program: str) -> str:
    return os.path.basename(program) if "/" in program else program


def check_declared(argv: Sequence[str]) -> None:
    """Raise :class:`ToolNotDeclaredError` unless every program ``argv`` runs is declared.

    ``argv[0]`` is a name or a path (a path counts by its file name). Wrappers are looked
    through: ``env [-i] [NAME=VALUE]... PROGRAM ...`` and ``ip netns exec NS PROGRAM ...``
    check ``PROGRAM`` too. A Python interpreter is always allowed.
    """
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of str (a list or tuple), not a str")
    if not argv:
        raise ValueError("empty argv: no program to run")
    program = argv[0]
    if not isinstance(program, str):
        raise TypeError(f"argv[0] must be a str, not {type(program).__name__}")
    if is_python(program):
        return
    name = _name(program)
    if name not in DEBIAN_TOOLS:
        raise ToolNotDeclaredError(name)
    rest = list(argv[1:])
    if name == "env":
        while rest and (rest[0] in ("-", "-i", "--ignore-environment") or "=" in rest[0]):
            rest.pop(0)
        if rest:
            check_declared(rest)
    elif name == "ip" and rest[:2] == ["netns", "exec"] and len(rest) > 3:
        check_declared(rest[3:])


def _search_dirs(path: str | None) -> list[str]:
    if path is not None:
        return [d for d in path.split(os.pathsep) if d]
    dirs = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d]
    return dirs + [d for d in EXTRA_DIRS if d not in dirs]


def find_tool(name: str, *, path: str | None = None) -> str | None:
    """The full path of declared program ``name``, or ``None`` when it is not installed.

    Searches ``path`` (``os.pathsep``-separated) when given, else ``$PATH`` then the sbin
    directories. Raises :class:`ToolNotDeclaredError` when ``name`` is not declared.
    """
    if name not in DEBIAN_TOOLS:
        raise ToolNotDeclaredError(name)
    for directory in _search_dirs(path):
        candidate = Path(directory, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def resolve_tool(name: str) -> str:
    """The full path of declared program ``name``.

    Raises :class:`ToolNotDeclaredError` when it is not declared and :class:`ToolMissingError`
    (a ``FileNotFoundError`` naming the package) when it is not installed.
    """
    found = find_tool(name)
    if found is None:
        raise ToolMissingError(name)
    return found


def missing_tools(programs: Iterable[str] | None = None, *, path: str | None = None) -> list[str]:
    """The declared programs (sorted) that are not installed.

    ``programs`` defaults to every declared program; ``path`` is as for :func:`find_tool`.
    """
    names = DEBIAN_TOOLS if programs is None else list(programs)
    return sorted(n for n in set(names) if find_tool(n, path=path) is None)


def missing_packages(
    programs: Iterable[str] | None = None, *, path: str | None = None
) -> list[str]:
    """The Debian packages (sorted, each once) of the programs :func:`missing_tools` lists."""
    return sorted({DEBIAN_TOOLS[n] for n in missing_tools(programs, path=path)})
