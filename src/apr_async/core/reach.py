"""Level 1 of the ranking, reachability: which sources can possibly reach a destination, and
which probably cannot (sans-IO). Depends on the addresses alone, so its results are cached."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Final, Literal, NamedTuple, TypeVar

from apr_async.core.addr_pair import Translator
from apr_async.core.addresses import AddressKind, IPAddress, Scope, kind_of, scope_of
from apr_async.core.source_address import SourceAddress


class _Unreachable(Enum):
    """The source cannot possibly reach the destination: the pair is dropped."""

    PAIR = "unreachable"


_IMPOSSIBLE: Final = _Unreachable.PAIR
_DOUBT_LOOPBACK: Final = "not a loopback source"
_DOUBT_ULA: Final = "needs NPTv6/NAT66, none seen"
_DOUBT_PRIVATE_V4: Final = "needs NAT44, none seen"
_LOCAL_KINDS: Final = frozenset({AddressKind.LOOPBACK, AddressKind.UNSPECIFIED})
_NOT_SOURCES: Final = frozenset({AddressKind.UNSPECIFIED, AddressKind.MULTICAST})
_ULA_BLOCKED_KINDS: Final = frozenset(
    {AddressKind.GUA, AddressKind.SIXTO4, AddressKind.TEREDO, AddressKind.RESERVED}
)
_ULA_TRANSLATORS: Final = frozenset({Translator.NPTV6.value, Translator.NAT66.value})
_PRIVATE_V4_KINDS: Final = frozenset({AddressKind.RFC1918, AddressKind.CGN})
_DOUBTS: Final = (_DOUBT_LOOPBACK, _DOUBT_ULA, _DOUBT_PRIVATE_V4)
P = TypeVar("P")


def doubted(reason: str) -> bool:
    """Whether a pair's reason says level 1 doubts its source reaches the destination (a
    private source with no translator seen, a ULA towards global IPv6...; ranked last)."""
    return any(doubt in reason for doubt in _DOUBTS)


def without_pointless(
    ranked: Sequence[P], refused: Callable[[P], bool]
) -> Sequence[P]:
    """``ranked`` without the pairs a recent refusal made pointless: ``refused(pair)`` says
    whether a (failing) pair's destination refused it; only failing pairs are asked, so a
    ranking with no failure costs one pass."""
    gone = [p for p in ranked if getattr(p, "failing", False) and refused(p)]
    if not gone:
        return ranked
    return [p for p in ranked if not any(pointless_after_refusal(r, p) for r in gone)]


def pointless_after_refusal(refused: object, pair: object) -> bool:
    """Whether ``pair`` cannot change the answer of ``refused``, whose destination refused the
    connection: it goes to that same destination from a source the ranking doubted (ranked
    last: a private address with no NAT44 seen, a ULA with no NPTv6). The destination host
    answered, so the port is closed there; such a source's SYN is most likely dropped on the
    way, and trying it would make a closed port cost the kernel's SYN timeout (about two
    minutes) instead of the refusal asyncio reports at once."""
    destination = getattr(refused, "destination", None)
    return (destination is not None and getattr(pair, "destination", None) == destination
            and doubted(str(getattr(pair, "reason", ""))))


class _Dest(NamedTuple):
    """A destination as ranking sees it (classification cached per address object)."""

    original: IPAddress
    view: IPAddress  # IPv4-mapped IPv6 becomes the IPv4 address it carries
    v6: bool
    scope: Scope
    kind: AddressKind
    text: str
    needs_zone: bool  # IPv6 link-local (or link/interface-local multicast): needs a scope id


_DEST_CACHE: dict[IPAddress, _Dest] = {}
_DEST_CACHE_MAX: Final = 4096


def _dest_info(ip: IPAddress) -> _Dest:
    if not isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise TypeError(f"destination must be an IP address, not {type(ip).__name__}")
    info = _DEST_CACHE.get(ip)
    if info is not None:
        return info
    view: IPAddress = ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            raise ValueError(f"pass the zone of {ip} as the zone index, not in the address")
        if ip.ipv4_mapped is not None:
            view = ip.ipv4_mapped
    scope = scope_of(view)
    kind = kind_of(view)
    v6 = view.version == 6
    info = _Dest(
        ip,
        view,
        v6,
        scope,
        kind,
        str(view),
        v6 and scope <= Scope.LINK_LOCAL and kind is not AddressKind.LOOPBACK,
    )
    if len(_DEST_CACHE) >= _DEST_CACHE_MAX:
        _DEST_CACHE.clear()
    _DEST_CACHE[ip] = info
    return info


def _reach(
    src: SourceAddress,
    dst: _Dest,
    zone: int | None,
    local: frozenset[IPAddress],
    *,
    ula_translated: bool,
    private_v4_doubtful: bool,
) -> str | Literal[_Unreachable.PAIR] | None:
    """``None`` if *src* can reach *dst*, a doubt (kept, placed last) or :data:`_IMPOSSIBLE`.

    *private_v4_doubtful*: the host has a public IPv4 source and no NAT44 was seen, so a
    private IPv4 source towards a public destination probably leaves untranslated.
    """
    skind = src.kind
    if skind in _NOT_SOURCES:
        return _IMPOSSIBLE
    if dst.kind in _LOCAL_KINDS:
        # Linux answers connect() to 127/8 or ::1 from any local address, but nothing
        # guarantees another system does: keep such pairs, after the loopback ones.
        return None if skind is AddressKind.LOOPBACK else _DOUBT_LOOPBACK
    if dst.view in local:
        return None  # one of this host's own addresses: routed through loopback
    if skind is AddressKind.LOOPBACK:
        return _IMPOSSIBLE  # RFC 1122 / RFC 4291: loopback sources never leave the host
    if dst.needs_zone:
        # A link-local destination is reachable only from a link-local source on the link
        # named by its zone (RFC 4007); without a zone, from each link-local source whose
        # interface index gives the zone.
        if skind is not AddressKind.LINK_LOCAL:
            return _IMPOSSIBLE
        if zone is not None:
            if src.ifindex is not None and src.ifindex != zone:
                return _IMPOSSIBLE
        elif src.ifindex is None:
            return _IMPOSSIBLE
        return None
    if src.scope < dst.scope:
        return _IMPOSSIBLE  # routers do not forward a smaller-scope source (RFC 4007 9)
    if skind is AddressKind.ULA and dst.kind in _ULA_BLOCKED_KINDS and not ula_translated:
        # An undetected NPTv6 may exist, so the pair is kept, last.
        return _DOUBT_ULA
    if private_v4_doubtful and skind in _PRIVATE_V4_KINDS and dst.kind is AddressKind.PUBLIC_IPV4:
        # A public source next to it suggests this host is routed, not NATed: the private
        # source needs a NAT44 that may exist undetected, so the pair is kept, last.
        return _DOUBT_PRIVATE_V4
    return None


# --- the cached RFC 6724 plan -----------------------------------------------------------------
