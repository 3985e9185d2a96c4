"""record_outcome: one connection attempt's outcome into the latency and failure tables."""

from __future__ import annotations

import errno as errno_codes
from typing import Final

from apr_async.core.addresses import IPAddress
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable

__all__ = ["MAX_ATTEMPT_RTT", "record_outcome"]


#: An attempt's RTT beyond this (seconds) cannot be right: the sample is dropped.
MAX_ATTEMPT_RTT: Final = 3600.0


def record_outcome(
    latency: LatencyTable,
    failures: FailureTable,
    source: IPAddress,
    destination: IPAddress,
    port: int,
    *,
    ok: bool,
    rtt: float | None,
    errno: int | None,
    now: float,
) -> bool:
    """Record one connection attempt's outcome in both tables; ``False`` if it was dropped.

    A success clears the pair's failure; a failure is remembered under its errno name (such
    as ``"ECONNREFUSED"``). The RTT is recorded when there is one (a refusal measured the
    path too); a failure without one counts as a loss. A sample that cannot be right (families
    differ, *rtt* negative, not a number or over an hour, *port* outside 1..65535) is dropped
    whole and nothing changes: callers are connectors, which must not fail over bookkeeping.
    """
    valid_rtt = rtt is None or (
        (type(rtt) is float or (isinstance(rtt, int | float) and not isinstance(rtt, bool)))
        and 0 <= rtt < MAX_ATTEMPT_RTT
    )
    valid_port = (type(port) is int or (isinstance(port, int) and not isinstance(port, bool))) and (
        0 < port < 65536
    )
    # The same class means the same family (and costs no property call, unlike .version).
    same_family = type(source) is type(destination) or source.version == destination.version
    if not same_family or not valid_rtt or not valid_port:
        return False
    if rtt is not None or not ok:
        latency.record(source, destination, rtt, now)
    if ok:
        failures.record_success(source, destination, port)
    else:
        name = errno_codes.errorcode.get(errno) if errno is not None else None
        failures.record_failure(source, destination, port, now, error=name or "failed")
    return True
