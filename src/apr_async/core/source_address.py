"""SourceAddress: a local address usable as a source, with the attributes RFC 6724 needs (sans-IO).

The source selection rules are in :mod:`.source_selection`, the destination rules in
:mod:`.rfc6724`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from apr_async.core.addresses import (
    AddressKind,
    IPAddress,
    Scope,
    kind_of,
    parse_address,
    scope_of,
)

__all__ = ["SourceAddress"]


@dataclass(frozen=True, slots=True)
class SourceAddress:
    """A local address usable as a source, with the attributes RFC 6724 needs.

    *address* may be given as text (``"fe80::1%eth0"`` sets *interface* to ``eth0`` when it
    is not given). ``prefixlen`` bounds ``CommonPrefixLen`` (source rule 8 and destination
    rule 9); unknown means 64 for IPv6 and 32 for IPv4. ``ifindex`` is the interface index
    used as the scope id of link-local pairs. ``str()`` gives the address text.
    """

    address: IPAddress
    deprecated: bool = field(default=False, kw_only=True)
    temporary: bool = field(default=False, kw_only=True)
    home: bool = field(default=False, kw_only=True)
    care_of: bool = field(default=False, kw_only=True)
    interface: str | None = field(default=None, kw_only=True)
    ifindex: int | None = field(default=None, kw_only=True)
    prefixlen: int | None = field(default=None, kw_only=True)
    # Derived once here because ranking reads them for every pair on a hot path.
    scope: Scope = field(init=False, repr=False, compare=False)
    kind: AddressKind = field(init=False, repr=False, compare=False)
    text: str = field(init=False, repr=False, compare=False)
    _int: int = field(init=False, repr=False, compare=False)
    _cpl_limit: int = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        address: object = self.address
        interface = self.interface
        if isinstance(address, str):
            address, zone = parse_address(address)
            if interface is None:
                interface = zone
        elif isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            if interface is None:
                interface = address.scope_id
            address = ipaddress.IPv6Address(int(address))
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise TypeError(f"address must be an IP address or str, not {type(address).__name__}")
        if interface is not None and not isinstance(interface, str):
            raise TypeError("interface must be a str or None")
        if self.ifindex is not None and (
            not isinstance(self.ifindex, int) or isinstance(self.ifindex, bool) or self.ifindex < 0
        ):
            raise ValueError(f"ifindex must be a non-negative int, not {self.ifindex!r}")
        bits = address.max_prefixlen
        if self.prefixlen is not None and (
            not isinstance(self.prefixlen, int)
            or isinstance(self.prefixlen, bool)
            or not 0 <= self.prefixlen <= bits
        ):
            raise ValueError(f"prefixlen must be an int in 0..{bits}, not {self.prefixlen!r}")
        setattr_ = object.__setattr__
        setattr_(self, "address", address)
        setattr_(self, "interface", interface)
        setattr_(self, "scope", scope_of(address))
        setattr_(self, "kind", kind_of(address))
        setattr_(self, "text", str(address))
        setattr_(self, "_int", int(address))
        default_limit = 64 if bits == 128 else 32
        setattr_(
            self, "_cpl_limit", self.prefixlen if self.prefixlen is not None else default_limit
        )
        setattr_(
            self,
            "_hash",
            hash(
                (
                    address,
                    self.deprecated,
                    self.temporary,
                    self.home,
                    self.care_of,
                    interface,
                    self.ifindex,
                    self.prefixlen,
                )
            ),
        )

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self.text

    @property
    def version(self) -> int:
        """IP version: 4 or 6."""
        return self.address.version

    def common_prefix_len(self, destination: IPAddress) -> int:
        """RFC 6724 ``CommonPrefixLen(self, destination)``, bounded by this source's prefix."""
        if destination.version != self.address.version:
            raise ValueError("source and destination are of different families")
        length = destination.max_prefixlen - (self._int ^ int(destination)).bit_length()
        return min(length, self._cpl_limit)

