"""What the README says exists does exist: its code, commands, settings and calls.

The README is what a newcomer reads first; a renamed option or call must not leave it behind.
The snippets themselves talk to real names and are not run here (the suite never resolves a
real name); these checks are about the names and shapes the README gives.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
from pathlib import Path

import apr_async
from apr_async import config, tools
from apr_async.cli.parser import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


def test_python_snippets_compile_and_import_only_what_exists() -> None:
    blocks = _blocks("python")
    assert len(blocks) >= 4
    for block in blocks:
        # the server and aiohttp snippets use top-level await / async with
        flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = compile(block, "README.md", "exec", flags)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "apr_async"
            ):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    found = hasattr(module, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}") is not None
                    assert found, f"{node.module}.{alias.name}"
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "apr_async"
            ):
                assert hasattr(apr_async, node.attr), f"apr_async.{node.attr}"


def test_every_cli_command_in_the_readme_exists() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    named = set(re.findall(r"`apr-async (\w+)", README))
    assert named and named <= set(sub.choices), named - set(sub.choices)
    for command, options in re.findall(r"`apr-async (\w+)[^`]*?((?: --[\w-]+)+)", README):
        known = {o for a in sub.choices[command]._actions for o in a.option_strings}
        for option in options.split():
            assert option in known, f"apr-async {command} {option}"


def test_every_environment_variable_in_the_readme_is_read() -> None:
    settings = {config.ENV_PREFIX + f.upper() for f in apr_async.Config.__dataclass_fields__}
    for name in set(re.findall(r"APR_ASYNC_[A-Z0-9_]+", README)):
        assert name in settings or name in config.OTHER_ENV_VARIABLES, name


def test_api_table_names_are_exported() -> None:
    section = README[README.index("## API") : README.index("### aiohttp")]
    # the "call" column only (the "returns" column names methods of what is returned)
    table = "\n".join(line.split("|")[1] for line in section.splitlines()
                      if line.startswith("| `"))
    names = set(re.findall(r"`(?:await )?(\w+)\(", table))
    assert {"get_addr_pairs", "open_connection", "select_source", "configure"} <= names
    for name in names:
        assert name in apr_async.__all__, name


def test_develop_section_points_at_the_tool_table() -> None:
    develop = README[README.index("## Develop") :]
    assert "src/apr_async/tools.py" in develop and tools.TABLE in develop
    for program in ("ip", "nft", "ping", "haproxy"):
        assert f"`{program}`" in develop, program
