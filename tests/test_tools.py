"""The table of external programs (``apr_async.tools.DEBIAN_TOOLS``) is the only way to run one.

A program the project runs but does not declare is missing from ``dev.py``'s install step and
fails on the next fresh machine (``ping`` did); these tests make it fail here instead:

- a scan of ``src/``, ``tests/``, ``benchmarks/``, ``examples/`` and ``dev.py`` for programs run
  through ``subprocess``, ``asyncio.create_subprocess_exec``, the lab (``exec``, ``popen``,
  ``run_ip``) or looked up (``shutil.which``, ``resolve_tool``, ``find_tool``, the ``tools``
  marker) finds each literal program name, including those inside ``sh -c`` scripts, and checks
  it is declared;
- the lab's runners refuse an undeclared program before starting anything;
- ``dev.py`` installs from this very table, not from a copy of its own.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import runpy
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from apr_async import tools
from apr_async.lab import Lab
from apr_async.lab.netns import run_ip, run_ip_sync
from apr_async.tools import (
    DEBIAN_TOOLS,
    ToolMissingError,
    ToolNotDeclaredError,
    check_declared,
    find_tool,
    missing_packages,
    missing_tools,
    resolve_tool,
)

ROOT = Path(__file__).resolve().parent.parent
SCANNED = [ROOT / "src", ROOT / "tests", ROOT / "benchmarks", ROOT / "examples", ROOT / "dev.py"]

SUBPROCESS_CALLS = {"run", "Popen", "check_output", "check_call", "call"}
LOOKUPS = {"which", "resolve_tool", "find_tool", "require_tools"}
#: shell words that are no program (builtins and keywords of dash)
SHELL_WORDS = {"exec", "echo", "wait", "cd", "set", "export", "true", "false", "test", "[",
               "if", "then", "else", "fi", "for", "do", "done", "while", "read", "trap", "kill"}


def _files() -> Iterator[Path]:
    for root in SCANNED:
        if root.is_file():
            yield root
        else:
            yield from sorted(p for p in root.rglob("*.py") if ".venv" not in p.parts)


def _text(node: ast.AST) -> str | None:
    """A str literal, or an f-string with its expressions replaced by ``{}``; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _literal_argv(nodes: Sequence[ast.AST], names: dict[str, str]) -> list[str | None]:
    """The argv's elements as strings where they are literal (or a name bound once to a
    literal in the file, ``names``), None where not, up to the first ``*``."""
    argv: list[str | None] = []
    for node in nodes:
        if isinstance(node, ast.Starred):
            break
        argv.append(names.get(node.id) if isinstance(node, ast.Name) else _text(node))
    return argv


def _string_names(tree: ast.AST) -> dict[str, str]:
    """Names assigned exactly once in a file, to a str literal or an f-string."""
    seen: dict[str, list[str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                seen.setdefault(target.id, []).append(_text(node.value))
    return {k: v[0] for k, v in seen.items() if len(v) == 1 and v[0] is not None}


def _programs(argv: list[str | None]) -> list[str]:
    """Every program an argv runs: the first, through env / ip netns exec, and sh -c scripts."""
    if not argv or argv[0] is None or "{" in argv[0]:
        return []
    first = os.path.basename(argv[0])
    found = [first]
    rest = argv[1:]
    if first == "env":
        while rest and rest[0] is not None and ("=" in rest[0] or rest[0] == "-i"):
            rest = rest[1:]
        found += _programs(rest)
    elif first == "ip" and rest[:2] == ["netns", "exec"]:
        found += _programs(rest[3:])
    elif first == "sh" and rest[:1] == ["-c"] and len(rest) > 1 and rest[1] is not None:
        for command in re.split(r"&&|\|\||[;&|\n]", rest[1]):
            words = command.split()
            if words and re.fullmatch(r"[a-z][\w.+-]*", words[0]) and words[0] not in SHELL_WORDS:
                found.append(words[0])
    else:  # a wrapper with options of its own (unshare ..., setpriv ...) running a script
        for i in range(1, len(argv) - 1):
            if argv[i] == "sh" and argv[i + 1] == "-c":
                found += _programs(argv[i:])
                break
    return found


def scan() -> list[tuple[str, int, str]]:
    """(file, line, program) for every literal program run or looked up in the sources."""
    hits: list[tuple[str, int, str]] = []
    for path in _files():
        tree = ast.parse(path.read_text(), str(path))
        names = _string_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            owner = func.value if isinstance(func, ast.Attribute) else None
            owner_name = getattr(owner, "id", None) or getattr(owner, "attr", None)
            argv: list[str | None] = []
            args = node.args
            if name in SUBPROCESS_CALLS and owner_name == "subprocess" and args:
                if isinstance(args[0], ast.List | ast.Tuple):
                    argv = _literal_argv(args[0].elts, names)
            elif name in ("create_subprocess_exec", "check_declared"):
                argv = _literal_argv(args, names)
                if name == "check_declared" and args and isinstance(args[0], ast.List | ast.Tuple):
                    argv = _literal_argv(args[0].elts, names)
            elif name in ("exec", "popen") and isinstance(func, ast.Attribute) and len(args) > 1:
                argv = _literal_argv(args[1:], names)  # lab.exec(host, program, ...)
            elif name in ("run_ip", "run_ip_sync") and args:
                if isinstance(args[0], ast.List | ast.Tuple):
                    argv = ["ip", *_literal_argv(args[0].elts, names)]
            elif name in LOOKUPS or (name == "tools" and owner_name == "mark"):
                hits += [(str(path.relative_to(ROOT)), node.lineno, text)
                         for text in map(_text, args) if text is not None]
                continue
            hits += [(str(path.relative_to(ROOT)), node.lineno, p) for p in _programs(argv)]
    return hits


def test_every_program_the_sources_run_is_declared() -> None:
    hits = scan()
    undeclared = [
        f"{file}:{line}: {program}"
        for file, line, program in hits
        if program not in DEBIAN_TOOLS and not tools.is_python(program)
        # the test's own examples of undeclared programs
        and not (file == "tests/test_tools.py" and program in {"dig", "nc", "tcpdump"})
    ]
    assert undeclared == [], f"declare these in {tools.TABLE}: {undeclared}"
    # The scan sees what it must: a scan that silently finds nothing would pass too.
    found = {program for _, _, program in hits}
    expected = {"ip", "nft", "ip6tables", "ping", "sysctl", "curl", "openssl", "cc", "haproxy",
                "unshare", "setpriv", "sh", "mount", "sleep", "env", "cat", "false", "apt-get"}
    assert expected <= found, expected - found


def test_the_scanner_sees_through_wrappers_and_shell_scripts() -> None:
    assert _programs(["env", "A=1", "B=2", "curl", "-s"]) == ["env", "curl"]
    assert _programs(["ip", "netns", "exec", None, "nft", "-f", "-"]) == ["ip", "nft"]
    assert _programs(["sh", "-c", "mount --bind {} /etc/hosts && exec {} -c x"]) == ["sh", "mount"]
    assert _programs(["sh", "-c", "sleep 60 & echo $!; wait"]) == ["sh", "sleep"]
    assert _programs(["unshare", "--mount", "sh", "-c", "mount x"]) == ["unshare", "sh", "mount"]
    assert _programs([None, "x"]) == []


def test_every_declared_program_is_used_somewhere() -> None:
    # The table is the project's install list: a stale entry installs a package for nothing.
    found = {program for _, _, program in scan()}
    assert set(DEBIAN_TOOLS) - found == set()


def test_check_declared_refuses_an_undeclared_program_naming_the_table() -> None:
    with pytest.raises(ToolNotDeclaredError, match=r"'dig' is not in apr_async\.tools\."
                                                   r"DEBIAN_TOOLS.*declare it there"):
        check_declared(["dig", "example.test"])
    # By file name when given a path; through env and ip netns exec.
    with pytest.raises(ToolNotDeclaredError, match="'tcpdump'"):
        check_declared(["/usr/sbin/tcpdump"])
    with pytest.raises(ToolNotDeclaredError, match="'nc'"):
        check_declared(["env", "-i", "A=1", "nc", "-l"])
    with pytest.raises(ToolNotDeclaredError, match="'nc'"):
        check_declared(["ip", "netns", "exec", "ns1", "env", "A=1", "nc"])
    check_declared(["/usr/sbin/nft", "-f", "-"])
    check_declared(["ip", "netns", "exec", "ns1", "env", "A=1", sys.executable, "-c", "0"])
    check_declared(["env", "A=1"])
    with pytest.raises(TypeError, match="not a str"):
        check_declared("ping")
    with pytest.raises(ValueError):
        check_declared([])


def test_lab_runners_refuse_undeclared_programs_before_running_anything() -> None:
    with pytest.raises(ToolNotDeclaredError, match="'dig'"):
        asyncio.run(run_ip(["netns", "exec", "no-such-ns", "dig", "x"]))
    with pytest.raises(ToolNotDeclaredError, match="'tcpdump'"):
        run_ip_sync(["/usr/sbin/tcpdump", "-i", "lo"])
    lab = Lab()  # never started: the check comes first, no namespace is touched

    async def both() -> None:
        with pytest.raises(ToolNotDeclaredError, match="'dig'"):
            await lab.exec("client", "dig", "x")
        with pytest.raises(ToolNotDeclaredError, match="'nc'"):
            await lab.popen("client", "env", "A=1", "nc", "-l")
        with pytest.raises(RuntimeError, match="not running"):  # a declared one gets further
            await lab.exec("client", "ping", "-c", "1", "::1")

    asyncio.run(both())


def test_find_tool_searches_the_given_path_and_reports_packages(tmp_path: Path) -> None:
    empty = str(tmp_path / "empty")
    assert find_tool("ping", path=empty) is None
    assert missing_tools(["ping", "ip", "nft"], path=empty) == ["ip", "nft", "ping"]
    assert missing_packages(path=empty) == sorted(set(DEBIAN_TOOLS.values()))
    stub = tmp_path / "bin" / "ping"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o644)
    assert find_tool("ping", path=str(stub.parent)) is None  # not executable: not a program
    stub.chmod(0o755)
    assert find_tool("ping", path=f"{empty}{os.pathsep}{stub.parent}") == str(stub)
    assert missing_packages(["ping", "ip"], path=str(stub.parent)) == ["iproute2"]
    with pytest.raises(ToolNotDeclaredError):
        find_tool("dig")


def test_resolve_tool_names_the_package_of_a_missing_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tools, "EXTRA_DIRS", ())
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissingError, match=r"'ping' is not installed.*'iputils-ping'") as exc:
        resolve_tool("ping")
    assert isinstance(exc.value, FileNotFoundError)
    assert exc.value.package == "iputils-ping"


def test_tools_module_needs_only_the_standard_library() -> None:
    # dev.py loads it by path before anything is installed.
    tree = ast.parse(Path(tools.__file__).read_text())
    imported = {
        (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported


def test_dev_py_installs_from_the_same_table_not_a_copy() -> None:
    source = (ROOT / "dev.py").read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            assert not ("DEBIAN_TOOLS" in names and isinstance(node.value, ast.Dict)), (
                "dev.py must read apr_async.tools.DEBIAN_TOOLS, not keep its own copy"
            )
    dev = runpy.run_path(str(ROOT / "dev.py"), run_name="dev_under_test")
    assert Path(dev["TOOLS"].__file__).resolve() == Path(tools.__file__).resolve()
    assert dev["DEBIAN_TOOLS"] == DEBIAN_TOOLS
    assert dev["DEBIAN_TOOLS"] is dev["TOOLS"].DEBIAN_TOOLS
    # and its install step asks that module what is missing
    assert "TOOLS.missing_packages()" in source
