"""The service's NAT64 prefix discovery (RFC 7050): when it is due, and the lookup itself."""

from __future__ import annotations

import asyncio
import logging
import socket

from apr_async.core.addresses import Scope
from apr_async.core.status import nat64_prefixes
from apr_async.resolve import interfaces
from apr_async.resolve.resolver import Resolver

__all__ = ["NAT64_RECHECK", "Nat64Discovery"]

log = logging.getLogger("apr_async.probe")

#: How often the NAT64 prefix is looked up again when the network did not change.
NAT64_RECHECK = 300.0


class Nat64Discovery:
    """The NAT64 prefix found (``prefix``, text or ``None``) and when it was looked up."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.prefix: str | None = None
        self.checked: float | None = None

    def due(self, snapshot: interfaces.HostSnapshot, now: float) -> bool:
        """True when a lookup is due: enabled, a global IPv6 source, none lately."""
        if not self.enabled:
            return False
        if not any(s.address.version == 6 and s.scope == Scope.GLOBAL for s in snapshot.sources):
            self.prefix = None
            return False
        return self.checked is None or now - self.checked >= NAT64_RECHECK

    def recheck(self) -> None:
        """Look up again in the next round (the network changed)."""
        self.checked = None

    async def discover(self, resolver: Resolver, *, within: float, now: float) -> bool:
        """Look ``ipv4only.arpa`` up (for at most *within* seconds); True when the prefix
        changed."""
        self.checked = now
        try:
            async with asyncio.timeout(within):
                resolution = await resolver.lookup("ipv4only.arpa", socket.AF_INET6)
            answers = [ip for ip, _zone in resolution.addresses]
        except (OSError, TimeoutError) as exc:
            log.debug("NAT64 discovery: %s", exc)
            answers = []
        found = nat64_prefixes(answers)
        prefix = str(found[0]) if found else None
        if prefix == self.prefix:
            return False
        if prefix:
            log.info("apr_async: NAT64 prefix %s (RFC 7050)", prefix)
        self.prefix = prefix
        return True
