"""The package's public surface: what users import from ``apr_async`` itself."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys

import apr_async


def test_every_name_in_all_is_importable() -> None:
    missing = [name for name in apr_async.__all__ if not hasattr(apr_async, name)]
    assert missing == []


def test_issue_named_api_is_at_top_level() -> None:
    for name in ("get_addr_pairs", "getaddrinfo", "explain", "select_source",
                 "sort_destinations", "SourceAddress", "open_connection",
                 "create_connection", "connect_socket", "ProbeService", "Config",
                 "configure", "status"):
        assert name in apr_async.__all__, name


def test_ships_py_typed_marker() -> None:
    assert importlib.resources.files("apr_async").joinpath("py.typed").is_file()


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "apr_async", "--version"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"apr-async {apr_async.__version__}"
