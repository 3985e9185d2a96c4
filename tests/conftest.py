"""Shared pytest configuration: the network-lab fixtures and skip policy.

Tests marked ``lab`` need root and network namespaces. Where that is missing they are skipped
with the reason, unless ``APR_ASYNC_REQUIRE_LAB=1`` is set (CI on a capable machine), in which
case they fail: a lab test silently skipped there would hide a broken lab.

Tests marked ``tools("curl", ...)`` need those programs of ``apr_async.tools.DEBIAN_TOOLS``;
a missing one skips the test, or fails it under ``APR_ASYNC_REQUIRE_LAB=1`` (which ``dev.py``
sets as root, where it has installed every declared package: a skip there would hide a
missing install step). A program that is not declared at all always fails.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from apr_async.lab import HEALTHY, Lab, lab_unavailable_reason
from apr_async.tools import DEBIAN_TOOLS, missing_tools

# The network rule: nothing in the suite may probe the library's built-in public targets or the
# host's own gateways. The default service is therefore never started implicitly and has no
# targets; tests that want probing configure a ProbeService with lab or loopback targets.
# Set before any test runs so subprocesses (CLI, examples) inherit it too.
os.environ["APR_ASYNC_AUTOSTART"] = "0"
os.environ["APR_ASYNC_TARGETS"] = "none"
os.environ["APR_ASYNC_PROBE_GATEWAYS"] = "0"
# And no query to the host's own resolvers: a lookup through the default context that a test
# forgot to point at a lab or loopback DNS server goes to the discard port on loopback and fails
# fast there, instead of leaving the machine.
os.environ["APR_ASYNC_NAMESERVERS"] = "127.0.0.1:9"
# The default service shares the host's probing through the user's cache directory: the suite
# gets a private one, so it never meets (or leaves files for) a real application's processes.
if "APR_ASYNC_TEST_CACHE" not in os.environ:
    import tempfile

    os.environ["APR_ASYNC_TEST_CACHE"] = tempfile.mkdtemp(prefix="apr_async-test-cache-")
os.environ["XDG_CACHE_HOME"] = os.environ["APR_ASYNC_TEST_CACHE"]


def _required() -> bool:
    return os.environ.get("APR_ASYNC_REQUIRE_LAB", "") not in ("", "0")


def require_lab() -> None:
    """Skip (or fail, with ``APR_ASYNC_REQUIRE_LAB=1``) when no lab can be built here."""
    reason = lab_unavailable_reason()
    if reason is None:
        return
    if _required():
        pytest.fail(f"a network lab is required here but unavailable: {reason}")
    pytest.skip(f"network lab unavailable: {reason}")


def require_tools(*programs: str) -> None:
    """Skip (or fail, with ``APR_ASYNC_REQUIRE_LAB=1``) when a declared program is missing;
    fail when one is not declared (:class:`apr_async.tools.ToolNotDeclaredError`)."""
    missing = missing_tools(programs)
    if not missing:
        return
    what = ", ".join(f"{p} (Debian package {DEBIAN_TOOLS[p]})" for p in missing)
    if _required():
        pytest.fail(f"not installed although dev.py installs every declared tool: {what}")
    pytest.skip(f"not installed: {what}")


def pytest_sessionstart(session: pytest.Session) -> None:
    # looptime's pytest_pyfunc_call asks the policy for "the" event loop even around sync
    # tests; on Python 3.11 the first such call creates a loop that nobody closes, and its
    # ResourceWarning later fails a random test (the suite runs with -W error). Marking the
    # main thread's loop as explicitly unset makes that call raise, which looptime handles.
    asyncio.set_event_loop(None)


@pytest.fixture(autouse=True)
def private_cache_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test its own cache directory: the default service shares the host's probing
    through it (issue 12), and a table a previous test's leader left must not warm the next."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is not None:
        require_lab()
    for marker in item.iter_markers("tools"):
        require_tools(*marker.args)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab() -> AsyncIterator[Lab]:
    """One lab per test module (tests switch scenarios on it; use ``healthy_lab`` to start
    each test from the healthy state). Tests using it need ``loop_scope="module"``."""
    require_lab()
    async with Lab() as built:
        yield built


@pytest_asyncio.fixture(loop_scope="module")
async def healthy_lab(lab: Lab) -> Lab:
    """The module's lab, switched back to the healthy scenario before the test."""
    await lab.set_scenario(HEALTHY)
    return lab
