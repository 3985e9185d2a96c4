"""Import hygiene: ``import apr_async`` (and the CLI) never pulls in aiohttp; the aiohttp
integration refuses bad arguments before any I/O."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest


def test_importing_apr_async_does_not_import_aiohttp() -> None:
    code = (
        "import sys, apr_async, apr_async.cli.main, apr_async.connect.api\n"
        "import apr_async.resolve.pairs\n"
        "import apr_async.cli.forward, apr_async.cli.commands, apr_async.cli.ping\n"
        "bad = sorted(m for m in sys.modules if m == 'aiohttp' or m.startswith('aiohttp.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_importing_apr_async_imports_no_integration_library() -> None:
    # Each integration is an optional extra: only its own module may import its library.
    libraries = ("httpx", "httpcore", "websockets", "prometheus_client", "opentelemetry",
                 "asyncpg", "redis", "hypercorn", "h2")
    code = (
        "import sys, apr_async, apr_async.metrics, apr_async.cli.main\n"
        f"libs = {libraries!r}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in libs)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_bad_connector_arguments_fail_before_io() -> None:
    from apr_async.aiohttp import AprConnector, AprResolver

    bad: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"resolver": object()}, TypeError),
        ({"use_dns_cache": True}, TypeError),
        ({"happy_eyeballs_delay": -1}, ValueError),
        ({"interleave": 0}, ValueError),
        ({"nameservers": "10.0.0.1"}, TypeError),
        ({"context": object()}, TypeError),
    ]
    for kw, exc in bad:
        with pytest.raises(exc):
            AprConnector(**kw)
    with pytest.raises(TypeError):
        AprResolver(context="nope")  # type: ignore[arg-type]
    await asyncio.sleep(0)
