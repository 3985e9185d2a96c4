"""What the host's network looks like: interfaces, default gateways, the kernel's route choice.

Plain data, filled by :mod:`.netlink` (or the portable fallbacks in :mod:`.interfaces`).
"""

from __future__ import annotations

from dataclasses import dataclass

from apr_async.core.addresses import IPAddress

__all__ = ["Gateway", "Interface", "RouteChoice"]


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface: kernel index, name and state."""

    index: int
    name: str
    up: bool
    running: bool
    loopback: bool


@dataclass(frozen=True, slots=True)
class Gateway:
    """A default route's next hop (``address`` is ``None`` for an on-link default route)."""

    family: int
    address: IPAddress | None
    interface: str | None
    ifindex: int | None
    metric: int


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """What the kernel would use to reach ``destination``: source, outgoing interface, next hop.

    ``source`` is ``None`` when the kernel has a route but no usable source address for it.
    """

    destination: IPAddress
    source: IPAddress | None
    interface: str | None
    ifindex: int | None
    gateway: IPAddress | None
