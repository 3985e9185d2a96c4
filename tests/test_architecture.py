"""The tree is the architecture: the core stays pure, packages import only the layers below
them, and no module imports itself back through a cycle.

These checks read the source with :mod:`ast` (nothing is imported), so a violation is
reported with the file and line that introduced it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "apr_async"

# What each part of the package may import from the rest of it (ARCHITECTURE.md says why).
# A key is a sub-package or a top-level module; "" is apr_async/__init__.py itself.
INTEGRATIONS = frozenset({"core", "resolve", "probe", "connect", "config", "errors"})
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "errors": frozenset(),
    "config": frozenset({"core"}),
    "resolve": frozenset({"core", "errors", "config"}),
    "probe": frozenset({"core", "resolve", "errors", "config"}),
    "connect": frozenset({"core", "resolve", "probe", "errors", "config"}),
    "server": frozenset({"core", "errors"}),
    "lab": frozenset({"tools"}),
    "tools": frozenset(),
    "aiohttp": INTEGRATIONS | {"aiohttp_trace"},
    "compat": INTEGRATIONS,
    "httpx": INTEGRATIONS | {"httpx_stream"},
    "httpx_stream": INTEGRATIONS,
    "aiohttp_trace": INTEGRATIONS,
    "websockets": INTEGRATIONS,
    "metrics": INTEGRATIONS,
    "metrics_prometheus": INTEGRATIONS | {"metrics"},
    "metrics_otel": INTEGRATIONS | {"metrics"},
    "cli": INTEGRATIONS | {"", "lab"},
    "": INTEGRATIONS,
    "__main__": frozenset({"cli"}),
}

# The standard-library modules the sans-IO core may use: data structures and arithmetic only.
CORE_STDLIB = frozenset({
    "__future__", "bisect", "collections", "collections.abc", "dataclasses", "enum", "errno",
    "functools", "heapq", "ipaddress", "itertools", "math", "operator", "re", "typing",
    "weakref",
})


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "apr_async.core.ranking"
    target: str  # what it imports, resolved to a module where the name is one
    line: int
    top_level: bool  # executed at import time (not inside a function or TYPE_CHECKING)
    names: tuple[str, ...]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part_of(module: str) -> str:
    """The layer a module belongs to: its sub-package, or its own name at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> Iterator[Import]:
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))

    def visit(node: ast.AST, top: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno, top, ())
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join([*module.split(".")[: -child.level], base]).rstrip(".")
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    yield Import(module, sub if sub in MODULES else base, child.lineno, top,
                                 (alias.name,))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or (
                    isinstance(child, ast.If) and _is_type_checking(child)):
                yield from visit(child, False)
            else:
                yield from visit(child, top)

    yield from visit(tree, True)


ALL_IMPORTS = [imp for module in MODULES for imp in imports_of(module)]


def test_every_part_of_the_package_has_an_import_rule() -> None:
    assert {part_of(m) for m in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_layers_import_only_the_layers_below_them(part: str) -> None:
    bad = [f"{imp.module}:{imp.line} imports {imp.target}"
           for imp in ALL_IMPORTS
           if part_of(imp.module) == part and imp.target.startswith("apr_async")
           and imp.target in MODULES and part_of(imp.target) not in ALLOWED[part] | {part}]
    assert bad == []


def test_core_imports_no_io() -> None:
    bad = []
    for imp in ALL_IMPORTS:
        if part_of(imp.module) != "core":
            continue
        if imp.target.startswith("apr_async"):
            continue  # checked by the layer rule: core imports only core
        if imp.module == "apr_async.core.families" and imp.target == "socket":
            # the one exception, and only for the platform's family numbers
            if not all(name.startswith("AF_") for name in imp.names) or not imp.names:
                bad.append(f"{imp.module}:{imp.line} takes {imp.names} from socket")
            continue
        if imp.target not in CORE_STDLIB:
            bad.append(f"{imp.module}:{imp.line} imports {imp.target}")
    assert bad == []


def test_core_names_no_clock_or_loop() -> None:
    # Belt and braces for what an import check cannot see: a module reached through an
    # attribute (``typing`` is allowed, but nothing may call a clock through any name).
    forbidden = {"monotonic", "perf_counter", "get_running_loop", "get_event_loop", "sleep"}
    bad = []
    for module, path in MODULES.items():
        if part_of(module) != "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in forbidden:
                bad.append(f"{module}:{node.lineno} uses .{node.attr}")
    assert bad == []


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := dfs(start)):
            return found
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_level_import_cycles() -> None:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        if imp.top_level and imp.target in MODULES and imp.target != imp.module:
            # importing a package runs its __init__; a submodule importing its own package's
            # __init__ is the normal parent-first import, not a cycle
            if imp.module.startswith(imp.target + "."):
                continue
            edges[imp.module].add(imp.target)
    assert find_cycle(edges) is None


def test_no_cycles_between_layers() -> None:
    # Function-level (lazy) imports count here too: a lazy import may break a cycle at import
    # time, but not a cycle in the design.
    edges: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        if imp.target in MODULES:
            a, b = part_of(imp.module), part_of(imp.target)
            if a != b:
                edges.setdefault(a, set()).add(b)
    assert find_cycle(edges) is None


# --- size: no module a reader must take in whole to change one rule ---------------------------

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# Paths (relative to src/apr_async) exempt from both limits, module and every function in it.
SIZE_ALLOWLIST: dict[str, str] = {
}

# "path:qualified.name" of functions deliberately kept over the limit, with why.
FUNCTION_ALLOWLIST: dict[str, str] = {
}


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from _functions(node, f"{name}.")
        else:
            yield from _functions(node, prefix)


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_size_allowlists_name_real_files() -> None:
    paths = {_relative(p) for p in MODULES.values()}
    stale = [p for p in [*SIZE_ALLOWLIST, *(k.split(":")[0] for k in FUNCTION_ALLOWLIST)]
             if p not in paths]
    assert stale == []


def test_no_module_over_the_size_limit() -> None:
    big = [f"{_relative(p)}: {n} lines" for p in MODULES.values()
           if _relative(p) not in SIZE_ALLOWLIST
           and (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert big == []


def test_no_function_over_the_size_limit() -> None:
    long = []
    for path in MODULES.values():
        rel = _relative(path)
        if rel in SIZE_ALLOWLIST:
            continue
        for name, node in _functions(ast.parse(path.read_text())):
            assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES and f"{rel}:{name}" not in FUNCTION_ALLOWLIST:
                long.append(f"{rel}:{name}: {lines} lines")
    assert long == []


def test_function_allowlist_has_no_stale_entries() -> None:
    # An entry whose function got short (or went away) is dropped, so the list stays the truth.
    present = set()
    for path in MODULES.values():
        for name, node in _functions(ast.parse(path.read_text())):
            assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_FUNCTION_LINES:
                present.add(f"{_relative(path)}:{name}")
    assert set(FUNCTION_ALLOWLIST) <= present


# --- ARCHITECTURE.md: the document says what the tests enforce ------------------------------

ARCHITECTURE_MD = PACKAGE.parents[1] / "ARCHITECTURE.md"


def _part_name(token: str) -> str:
    name = token.removesuffix(".py")
    return "" if name == "__init__" else name


def _documented_layers(text: str) -> dict[str, frozenset[str]]:
    """The 'may import' table: each row's parts -> the backticked parts before its first ';'."""
    rows: dict[str, frozenset[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        parts = [_part_name(t) for t in re.findall(r"`([^`]+)`", cells[0])]
        allowed = frozenset(_part_name(t) for t in re.findall(r"`([^`]+)`",
                                                              cells[1].split(";")[0]))
        for part in parts:
            rows[part] = allowed - {part}
    return rows


def test_architecture_md_states_the_enforced_layers() -> None:
    assert _documented_layers(ARCHITECTURE_MD.read_text()) == ALLOWED


def test_architecture_md_tree_lists_every_module() -> None:
    text = ARCHITECTURE_MD.read_text()
    tree = text[text.index("```"):text.index("```", text.index("```") + 3)]
    listed = set(re.findall(r"[\w/]*?(\w+\.py)\b", tree))
    missing = sorted(_relative(p) for p in MODULES.values() if p.name not in listed)
    assert missing == []
