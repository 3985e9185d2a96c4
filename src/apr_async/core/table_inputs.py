"""Argument checks and the snapshot format version shared by LatencyTable and FailureTable.

Both tables take addresses and times from callers (probes, connectors, a warm-start file) and
must reject the same bad values the same way.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Final

from apr_async.core.addresses import IPAddress

__all__ = ["SNAPSHOT_VERSION", "check_ip", "check_time"]

#: The version of ``snapshot()``/``restore()`` data of both tables.
SNAPSHOT_VERSION: Final = 1


def check_ip(value: object, what: str) -> IPAddress:
    """*value* as an address without zone; ``TypeError`` if it is no address object."""
    if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise TypeError(f"{what} must be an IPv4Address or IPv6Address, not {type(value).__name__}")
    if isinstance(value, ipaddress.IPv6Address) and value.scope_id is not None:
        return ipaddress.IPv6Address(int(value))
    return value


def check_time(value: object, what: str) -> float:
    """*value* as a float; ``ValueError`` unless it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return float(value)
