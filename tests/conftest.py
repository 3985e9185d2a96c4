"""Shared pytest configuration: the network-lab fixtures and skip policy.

Tests marked ``lab`` need root and network namespaces. Where that is missing they are skipped
with the reason, unless ``APR_ASYNC_REQUIRE_LAB=1`` is set (CI on a capable machine), in which
case they fail: a lab test silently skipped there would hide a broken lab.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from apr_async.lab import HEALTHY, Lab, lab_unavailable_reason


def require_lab() -> None:
    """Skip (or fail, with ``APR_ASYNC_REQUIRE_LAB=1``) when no lab can be built here."""
    reason = lab_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("APR_ASYNC_REQUIRE_LAB", "") not in ("", "0"):
        pytest.fail(f"a network lab is required here but unavailable: {reason}")
    pytest.skip(f"network lab unavailable: {reason}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is not None:
        require_lab()


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
